"""The Arrow schema a spliced file declares: the `ARROW:schema` key-value entry that pyarrow's writer
stores (base64 of the IPC-serialized schema), and the schema of a splice's output columns."""

from __future__ import annotations

import base64

import pyarrow as pa

from fieldcrypt.errors import SpliceUnsupported

ARROW_SCHEMA_KEY = b"ARROW:schema"


def arrow_schema_metadata(schema: pa.Schema) -> bytes:
    """The value pyarrow's Parquet writer stores under `ARROW:schema` for `schema`, byte for byte."""
    return base64.b64encode(schema.serialize().to_pybytes())


def footer_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    """The key-value metadata pyarrow's writer stores for `schema`: its own metadata, then `ARROW:schema`."""
    entries = {key: value for key, value in (schema.metadata or {}).items() if key != ARROW_SCHEMA_KEY}
    entries[ARROW_SCHEMA_KEY] = arrow_schema_metadata(schema)
    return entries


def spliced_arrow_schema(source: pa.Schema, replacement: pa.Schema) -> pa.Schema:
    """The source's fields in order, each one the replacement also names taken from it, then the
    replacement's other fields in order; the source's schema metadata is kept (splice_columns' rule)."""
    for which, schema in (("source", source), ("replacement", replacement)):
        if len(set(schema.names)) != len(schema.names):
            raise SpliceUnsupported(f"{which} schema repeats a top-level name; columns cannot be matched by name")
    replacing = {field.name: field for field in replacement}
    fields = [replacing.get(field.name, field) for field in source]
    fields += [field for field in replacement if field.name not in set(source.names)]
    return pa.schema(fields, metadata=source.metadata)
