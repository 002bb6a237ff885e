"""Engine schema metadata in rewritten files: Spark's row metadata, pandas' metadata and ARROW:schema list
the protection columns (real Spark reading them: tests/test_spark_lake.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path, write_snapshot
from fieldcrypt import InputError, Workspace
from fieldcrypt.format.engine_schema import PANDAS_METADATA, SPARK_ROW_METADATA
from fieldcrypt.lake.store import LakeStore
from tests.conftest import SAMPLE_DAY
from tests.ledger_support import as_written_before_the_ledger
from tests.policy_support import backdate_policy

DAY = SAMPLE_DAY.isoformat()
USERS = snapshot_path("users", DAY)
EVENTS = snapshot_path("events", DAY)
SPARK_TYPES = {"int64": "long", "string": "string", "large_string": "string", "timestamp[us, tz=UTC]": "timestamp"}


def _spark_schema(schema: pa.Schema) -> dict[str, Any]:
    """Spark's StructType JSON for the sample's flat columns, as Spark writes it."""
    fields = [
        {"name": f.name, "type": SPARK_TYPES.get(str(f.type), "string"), "nullable": True, "metadata": {}}
        for f in schema
    ]
    return {"type": "struct", "fields": fields}


def _stamp(store: LakeStore, rel: str, key: bytes, value: bytes) -> None:
    """Rewrite a landed file with one more key-value metadata entry, as its engine would have written it."""
    table = pq.read_table(store.full_path(rel))
    write_snapshot(
        store,
        rel.split("/")[0],
        SAMPLE_DAY,
        table.replace_schema_metadata({**(table.schema.metadata or {}), key: value}),
    )


def _metadata(store: LakeStore, rel: str) -> dict[bytes, bytes]:
    """The file's key-value metadata as stored in its footer (ARROW:schema included)."""
    return dict(pq.ParquetFile(store.full_path(rel)).metadata.metadata)


def _protect(workspace: Workspace, *attributes: str, blind_index: bool = False) -> None:
    for attribute in attributes:
        workspace.enable(attribute, "email", acknowledge_irreversible=True, blind_index=blind_index)
    backdate_policy(workspace)
    dataset = attributes[0].split(".")[0]
    assert workspace.protect(dataset, DAY).rewritten


def test_spark_row_metadata_lists_the_protection_columns_as_binary(local_workspace: Workspace) -> None:
    store = local_workspace.store
    spark = _spark_schema(pq.read_schema(store.full_path(USERS)))
    _stamp(store, USERS, SPARK_ROW_METADATA, json.dumps(spark, separators=(",", ":")).encode())
    _protect(local_workspace, "users.email", blind_index=True)
    written = json.loads(_metadata(store, USERS)[SPARK_ROW_METADATA])
    added = [
        {"name": n, "type": "binary", "nullable": True, "metadata": {}}
        for n in ("email__fc_ct", "email__fc_bidx", "email__fc_dek")
    ]
    assert written == {"type": "struct", "fields": spark["fields"] + added}


def test_spark_row_metadata_lists_a_struct_attributes_columns(local_workspace: Workspace) -> None:
    store = local_workspace.store
    spark = _spark_schema(pq.read_schema(store.full_path(EVENTS)))
    _stamp(store, EVENTS, SPARK_ROW_METADATA, json.dumps(spark).encode())
    _protect(local_workspace, "events.properties.email")
    names = [f["name"] for f in json.loads(_metadata(store, EVENTS)[SPARK_ROW_METADATA])["fields"]]
    schema_names = pq.read_schema(store.full_path(EVENTS)).names
    assert names == schema_names and any(n.endswith("__fc_ct") for n in names)


def test_pandas_metadata_lists_the_protection_columns(local_workspace: Workspace) -> None:
    store = local_workspace.store
    table = pq.read_table(store.full_path(USERS))
    frame = table.to_pandas()
    frame.index = frame.index * 2  # a stored index too (not a range): pandas' entries are not only columns
    write_snapshot(store, "users", SAMPLE_DAY, pa.Table.from_pandas(frame))
    _protect(local_workspace, "users.email")
    columns = json.loads(_metadata(store, USERS)[PANDAS_METADATA])["columns"]
    by_name = {c["field_name"]: c for c in columns}
    for name in ("email__fc_ct", "email__fc_dek"):
        assert by_name[name] == {
            "name": name,
            "field_name": name,
            "pandas_type": "bytes",
            "numpy_type": "object",
            "metadata": None,
        }
    read = pd.read_parquet(store.full_path(USERS))
    assert list(read.index) == list(frame.index) and {"email__fc_ct", "email__fc_dek"} <= set(read.columns)


def test_arrow_schema_is_the_written_schema(local_workspace: Workspace) -> None:
    store = local_workspace.store
    _protect(local_workspace, "users.email")
    serialized = base64.b64decode(_metadata(store, USERS)[b"ARROW:schema"])
    stored = pa.ipc.read_schema(pa.BufferReader(serialized))
    assert stored.field("email__fc_ct").type == pa.binary()
    assert stored.field("email__fc_dek").type == pa.dictionary(pa.int32(), pa.binary())
    assert stored.remove_metadata() == pq.read_schema(store.full_path(USERS)).remove_metadata()


def test_metadata_of_another_engine_is_kept_as_it_was(local_workspace: Workspace) -> None:
    store = local_workspace.store
    _stamp(store, USERS, b"org.apache.spark.version", b"4.3.0")
    _protect(local_workspace, "users.email")
    assert _metadata(store, USERS)[b"org.apache.spark.version"] == b"4.3.0"


@pytest.mark.parametrize("raw", [b"{not json", b'{"type": "struct"}'], ids=["not-json", "no-fields"])
def test_unreadable_spark_metadata_is_refused_by_name(local_workspace: Workspace, raw: bytes) -> None:
    store = local_workspace.store
    _stamp(store, USERS, SPARK_ROW_METADATA, raw)
    before = store.read_bytes(USERS)
    with pytest.raises(InputError, match=r"part.*Spark's schema metadata"):
        _protect(local_workspace, "users.email")
    assert store.read_bytes(USERS) == before


def test_file_protected_before_the_schemas_listed_its_columns_is_rewritten_once(local_workspace: Workspace) -> None:
    store = local_workspace.store
    spark = json.dumps(_spark_schema(pq.read_schema(store.full_path(USERS)))).encode()
    _stamp(store, USERS, SPARK_ROW_METADATA, spark)
    _protect(local_workspace, "users.email")
    _stamp(store, USERS, SPARK_ROW_METADATA, spark)  # as an older fieldcrypt left it: the columns unlisted
    as_written_before_the_ledger(Path(store.full_path("")), Path(store.full_path(USERS)), "users", DAY)
    cells = pq.read_table(store.full_path(USERS), columns=["email", "email__fc_ct"])
    assert local_workspace.protect("users", DAY).rewritten
    assert "email__fc_ct" in _metadata(store, USERS)[SPARK_ROW_METADATA].decode()
    assert pq.read_table(store.full_path(USERS), columns=["email", "email__fc_ct"]).equals(cells)
    assert not local_workspace.protect("users", DAY).rewritten
