"""The protected file keeps the writer's choices: codec per column, row groups, key-value
metadata (pandas, Spark, anything else; the protection columns added to pandas' and Spark's
column lists) and INT96 timestamps, so the engine that wrote the file reads it as before."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path
from fieldcrypt import Workspace
from fieldcrypt.policy.policy import DatasetSpec

DAY = date(2026, 11, 1)
PARTITION = DAY.isoformat()
NOON = datetime(2026, 11, 1, 12, tzinfo=UTC)
THINGS = DatasetSpec("things", "ingested_at", "id")
SPARK_ROW_METADATA = b"org.apache.spark.sql.parquet.row.metadata"
Enable = Callable[..., Any]
SPARK_FIELDS = [
    {"name": "id", "type": "long", "nullable": True, "metadata": {}}
]  # Spark lists every column; one will do


def file_path(workspace: Workspace) -> Path:
    path = Path(workspace.store.full_path(snapshot_path("things", PARTITION)))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def table(n: int = 50) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "email": pa.array([f"user{i}@example.com" for i in range(n)]),
            "score": pa.array([i / 3 for i in range(n)]),
            "tags": pa.array([["a", "b"][: i % 3] for i in range(n)], pa.list_(pa.string())),
            "ingested_at": pa.array([NOON + timedelta(seconds=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
        }
    )


def protect(workspace: Workspace, enable_at: Enable) -> None:
    enable_at(workspace, "things.email", "email", NOON, THINGS)
    workspace.protect("things", PARTITION)
    workspace.verify("things", PARTITION)


def codecs(path: Path) -> dict[str, str]:
    metadata = pq.ParquetFile(path).metadata
    return {
        metadata.row_group(0).column(i).path_in_schema: metadata.row_group(0).column(i).compression
        for i in range(metadata.num_columns)
    }


MIXED = {"id": "gzip", "email": "snappy", "score": "brotli", "tags.list.element": "lz4", "ingested_at": "none"}


def test_every_column_keeps_its_codec(make_local_workspace: Callable[..., Workspace], enable_at: Enable) -> None:
    workspace = make_local_workspace()
    path = file_path(workspace)
    pq.write_table(table(), path, compression=MIXED)
    before = codecs(path)
    protect(workspace, enable_at)
    after = codecs(path)
    assert {name: after[name] for name in before} == before


def test_ciphertext_columns_are_stored_uncompressed(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    path = file_path(workspace)
    pq.write_table(table(), path, compression=MIXED)
    protect(workspace, enable_at)
    assert codecs(path)["email__fc_ct"] == "UNCOMPRESSED"


def test_row_group_sizes_are_kept(make_local_workspace: Callable[..., Workspace], enable_at: Enable) -> None:
    workspace = make_local_workspace()
    path = file_path(workspace)
    pq.write_table(table(50), path, row_group_size=16)
    protect(workspace, enable_at)
    metadata = pq.ParquetFile(path).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [16, 16, 16, 2]


def test_custom_key_value_metadata_is_kept(make_local_workspace: Callable[..., Workspace], enable_at: Enable) -> None:
    workspace = make_local_workspace()
    path = file_path(workspace)
    pq.write_table(table().replace_schema_metadata({"writer.lineage": "job-42", "owner": "team-x"}), path)
    protect(workspace, enable_at)
    metadata = pq.ParquetFile(path).metadata.metadata
    assert metadata[b"writer.lineage"] == b"job-42" and metadata[b"owner"] == b"team-x"


def write_spark_like(path: Path) -> None:
    """As Spark writes by default: INT96 timestamps, no Arrow schema, its row metadata, snappy."""
    source = table().append_column("event_time", pa.array([NOON] * 50, pa.timestamp("ns", tz="UTC")))
    source = source.set_column(4, "ingested_at", source.column("ingested_at").cast(pa.timestamp("ns", tz="UTC")))
    with pq.ParquetWriter(
        path, source.schema, store_schema=False, use_deprecated_int96_timestamps=True, compression="snappy"
    ) as writer:
        writer.write_table(source)
        writer.add_key_value_metadata(
            {SPARK_ROW_METADATA.decode(): json.dumps({"type": "struct", "fields": SPARK_FIELDS}, separators=(",", ":"))}
        )


def test_spark_row_metadata_is_kept_with_the_protection_columns_added(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    path = file_path(workspace)
    write_spark_like(path)
    protect(workspace, enable_at)
    added = [{"name": n, "type": "binary", "nullable": True, "metadata": {}} for n in ("email__fc_ct", "email__fc_dek")]
    stored = json.loads(pq.ParquetFile(path).metadata.metadata[SPARK_ROW_METADATA])
    assert stored == {"type": "struct", "fields": SPARK_FIELDS + added}


def test_int96_timestamps_stay_int96(make_local_workspace: Callable[..., Workspace], enable_at: Enable) -> None:
    workspace = make_local_workspace()
    path = file_path(workspace)
    write_spark_like(path)
    protect(workspace, enable_at)
    schema = pq.ParquetFile(path).schema
    physical = {schema.column(i).path: schema.column(i).physical_type for i in range(len(schema))}
    assert physical["event_time"] == "INT96" and physical["ingested_at"] == "INT96"


def pandas_frame() -> pd.DataFrame:
    frame = table().to_pandas()
    frame.index = pd.Index([f"r{i}" for i in range(len(frame))], name="row_name")
    return frame


def test_pandas_metadata_is_kept_with_the_protection_columns_added(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    path = file_path(workspace)
    pandas_frame().to_parquet(path, engine="pyarrow")
    before = json.loads(pq.ParquetFile(path).metadata.metadata[b"pandas"])
    protect(workspace, enable_at)
    after = json.loads(pq.ParquetFile(path).metadata.metadata[b"pandas"])
    added = [
        {"name": n, "field_name": n, "pandas_type": "bytes", "numpy_type": "object", "metadata": None}
        for n in ("email__fc_ct", "email__fc_dek")
    ]
    assert after == {**before, "columns": before["columns"] + added}


def test_pandas_reads_its_index_and_untouched_columns_as_before(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    path = file_path(workspace)
    pandas_frame().to_parquet(path, engine="pyarrow")
    before = pd.read_parquet(path)
    protect(workspace, enable_at)
    after = pd.read_parquet(path)
    untouched = ["id", "score", "tags", "ingested_at"]
    pd.testing.assert_frame_equal(after[untouched], before[untouched])
    assert after.index.name == "row_name"


@pytest.mark.parametrize("codec", ["snappy", "gzip", "zstd", "none"])
def test_single_codec_file_keeps_its_codec_for_the_wrapped_key_column(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable, codec: str
) -> None:
    workspace = make_local_workspace()
    path = file_path(workspace)
    pq.write_table(table(), path, compression=codec)
    protect(workspace, enable_at)
    # Uncompressed: snappy, since fastparquet cannot read the 0-byte dictionary page of an all-null row group.
    assert codecs(path)["email__fc_dek"] == ("SNAPPY" if codec == "none" else codec.upper())
