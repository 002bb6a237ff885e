"""Engine schema metadata inside a rewritten file: Spark's and pandas' column lists name the protection columns.

A file keeps its writer's key-value metadata (fieldcrypt.lake.parquet_io), and two engines read
their schema from it rather than from the Parquet schema:
- Spark: `org.apache.spark.sql.parquet.row.metadata`, a StructType as JSON. A column it
  does not list is invisible to Spark (with or without `mergeSchema`), so a Spark read ->
  write would drop the ciphertext. Each protection column is listed as
  `{"name": ..., "type": "binary", "nullable": true, "metadata": {}}`: the wrapped-key
  column, dictionary<int32, binary> in Arrow, is a BINARY Parquet column and binary in Spark.
- pandas: `pandas`, whose `columns` list gets `pandas_type` "bytes", `numpy_type` "object",
  as pyarrow writes a binary column. The wrapped-key column is listed as bytes too, not
  categorical: fastparquet sizes a categorical from `num_categories`, which differs per
  row group and is not known when the writer opens (pyarrow reads it as a categorical
  anyway, from the Arrow schema).
`ARROW:schema` needs nothing here: pyarrow's writer (store_schema=True) writes it from the
schema it writes, the protection columns included.

Columns an engine's metadata already lists are left as they are; a file without the
engine's metadata gets none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fieldcrypt.errors import InputError

SPARK_ROW_METADATA = b"org.apache.spark.sql.parquet.row.metadata"
PANDAS_METADATA = b"pandas"


def listing_columns(metadata: Mapping[bytes, bytes], columns: Sequence[str], where: str) -> dict[bytes, bytes]:
    """`metadata` with every binary column of `columns` listed in the Spark and pandas schemas it holds."""
    listed = dict(metadata)
    if SPARK_ROW_METADATA in listed:
        listed[SPARK_ROW_METADATA] = _spark(listed[SPARK_ROW_METADATA], columns, where)
    if PANDAS_METADATA in listed:
        listed[PANDAS_METADATA] = _pandas(listed[PANDAS_METADATA], columns, where)
    return listed


def lists_columns(metadata: Mapping[bytes, bytes], columns: Sequence[str], where: str) -> bool:
    """Do the Spark and pandas schemas in `metadata` (those it holds) list every one of `columns`?"""
    return listing_columns(metadata, columns, where) == dict(metadata)


def _spark(raw: bytes, columns: Sequence[str], where: str) -> bytes:
    schema = _json_object(raw, "fields", f"{where}: Spark's schema metadata ({SPARK_ROW_METADATA.decode()})")
    fields: list[Any] = schema["fields"]
    known = {field.get("name") for field in fields if isinstance(field, dict)}
    missing = [column for column in columns if column not in known]
    if not missing:
        return raw
    fields.extend({"name": column, "type": "binary", "nullable": True, "metadata": {}} for column in missing)
    return json.dumps(schema, separators=(",", ":")).encode()  # compact, as Spark writes it


def _pandas(raw: bytes, columns: Sequence[str], where: str) -> bytes:
    doc = _json_object(raw, "columns", f"{where}: pandas' metadata (pandas)")
    entries: list[Any] = doc["columns"]
    known = {entry.get("field_name", entry.get("name")) for entry in entries if isinstance(entry, dict)}
    missing = [column for column in columns if column not in known]
    if not missing:
        return raw
    entries.extend(
        {"name": column, "field_name": column, "pandas_type": "bytes", "numpy_type": "object", "metadata": None}
        for column in missing
    )
    return json.dumps(doc).encode()  # pyarrow's own form


def _json_object(raw: bytes, member: str, what: str) -> dict[str, Any]:
    """The JSON object in `raw` with a list `member`; InputError naming `what` otherwise."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise InputError(f"{what} is not JSON; the protection columns cannot be listed in it") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(member), list):
        raise InputError(f"{what} has no {member!r} list; the protection columns cannot be listed in it")
    return doc
