"""Lakes we did not write: DuckDB, pyarrow.dataset, pandas, polars and Spark-style layouts, end to end.

Each engine writes a users dataset partitioned by day the way it does (its own file names, several
files per partition, markers beside the data, its own metadata). Then, as a customer would: declare it
in a catalog, enable users.email, protect every partition through Dagster, verify, read it back with the
engine that wrote it and with DuckDB, polars and pandas, rotate the master key, verify again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from dagster_support import catalog_fieldcrypt, node

from assets import build_assets
from fieldcrypt import Workspace
from fieldcrypt.lake.checksum_file import HadoopChecksums
from resources import FieldcryptResource

DAYS = ["2026-11-01", "2026-11-02"]
ROWS_PER_DAY = 400
NOW = datetime.now(UTC)
DATASETS = {
    "users": {
        "path": "warehouse/users",
        "partitioning": {"granularity": "daily", "key": "date", "start": DAYS[0]},
        "ingested_at": "ingested_at",
        "primary_key": "user_id",
    }
}


def snapshot() -> pa.Table:
    """Two days of users; each day's rows are ingested from 12 h before now to 12 h after (enabling now splits them)."""
    rows = ROWS_PER_DAY * len(DAYS)
    step = timedelta(days=1) / ROWS_PER_DAY
    ids = list(range(rows))
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "email": [None if i % 9 == 4 else f"user{i}@Example.com" for i in ids],
            "score": pa.array([float("nan") if i % 50 == 7 else i * 0.25 for i in ids], pa.float64()),  # NaN too
            "tags": [[f"t{i % 3}"] * (i % 3) for i in ids],
            "ingested_at": pa.array(
                [NOW - timedelta(hours=12) + step * (i % ROWS_PER_DAY) for i in ids], pa.timestamp("us", tz="UTC")
            ),
            "date": [DAYS[i // ROWS_PER_DAY] for i in ids],
        }
    )


def write_duckdb(table: pa.Table, root: Path) -> None:
    connection = duckdb.connect()
    connection.register("users", table)
    connection.execute(f"COPY users TO '{root}' (FORMAT parquet, PARTITION_BY (date), ROW_GROUP_SIZE 100)")


def write_pyarrow_dataset(table: pa.Table, root: Path) -> None:
    ds.write_dataset(
        table,
        root,
        format="parquet",
        partitioning=["date"],
        partitioning_flavor="hive",
        max_rows_per_file=150,
        max_rows_per_group=150,
    )


def write_pandas(table: pa.Table, root: Path) -> None:
    frame = table.to_pandas()
    for chunk in (frame.iloc[::2], frame.iloc[1::2]):  # two writes: two files per partition
        chunk.to_parquet(root, partition_cols=["date"], index=False)


def write_polars(table: pa.Table, root: Path) -> None:
    pl.from_arrow(table).write_parquet(root, partition_by="date")  # type: ignore[union-attr]


def write_spark_style(table: pa.Table, root: Path) -> None:
    """What Spark leaves: part-NNNNN-<uuid>-c000.snappy.parquet, its schema metadata, _SUCCESS, .crc, _temporary/."""
    job = uuid.uuid4()
    spark_schema = json.dumps({"type": "struct", "fields": [{"name": n} for n in table.column_names if n != "date"]})
    for day in DAYS:
        folder = root / f"date={day}"
        folder.mkdir(parents=True)
        rows = table.filter(pc.equal(table["date"], day)).drop_columns(["date"])
        for part in range(3):
            name = f"part-{part:05d}-{job}-c000.snappy.parquet"
            piece = rows.slice(part * 134, 134)
            piece = piece.replace_schema_metadata({"org.apache.spark.sql.parquet.row.metadata": spark_schema})
            pq.write_table(piece, folder / name, compression="snappy")
            (folder / f".{name}.crc").write_bytes(HadoopChecksums.of([(folder / name).read_bytes()]).encode())
    (root / "_SUCCESS").write_bytes(b"")
    (root / "_temporary" / "0").mkdir(parents=True)


ENGINES: dict[str, Callable[[pa.Table, Path], None]] = {
    "duckdb": write_duckdb,
    "pyarrow.dataset": write_pyarrow_dataset,
    "pandas": write_pandas,
    "polars": write_polars,
    "spark-style": write_spark_style,
}


def read_with(engine: str, root: Path) -> pa.Table:
    """The dataset as the engine reads it back (hive `date` column included), as Arrow, sorted by user_id."""
    glob = f"{root}/**/*.parquet"
    if engine == "duckdb":
        table = duckdb.sql(f"select * from read_parquet('{glob}', hive_partitioning=true, union_by_name=true)").arrow()
    elif engine == "polars":
        table = pl.scan_parquet(glob, hive_partitioning=True, missing_columns="insert").collect().to_arrow()
    elif engine == "pandas":
        table = pa.Table.from_pandas(pd.read_parquet(root), preserve_index=False)
    else:
        table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    if hasattr(table, "read_all"):
        table = table.read_all()
    return table.sort_by("user_id")


def comparable(column: pa.ChunkedArray) -> list[object]:
    """Values with NaN as a marker, so NaN compares equal to NaN (pandas turns a float NaN into null and back)."""
    floats = pa.types.is_floating(column.type)
    return ["NaN" if (isinstance(v, float) and v != v) or (floats and v is None) else v for v in column.to_pylist()]


def reads(engine: str, root: Path) -> bool:
    try:
        read_with(engine, root)
    except (pa.ArrowException, duckdb.Error, pl.exceptions.PolarsError):
        return False
    return True


def protect_through_dagster(fieldcrypt: FieldcryptResource) -> list[dict[str, object]]:
    generated = build_assets(fieldcrypt.config())
    reports = []
    for day in DAYS:
        result = dg.materialize(
            [generated.protected["users"]],
            partition_key=day,
            resources=fieldcrypt.as_resources(),
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert result.success
        (materialization,) = result.asset_materializations_for_node(node("protected_users"))
        assert all(e.passed for e in result.get_asset_check_evaluations())
        reports.append({key: value.value for key, value in materialization.metadata.items()})
    return reports


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_lake_written_by_the_engine_is_protected_verified_read_back_and_rotated(
    engine: str, tmp_path: Path, keystore_path: Path
) -> None:
    original = snapshot()
    root = tmp_path / "lake" / "warehouse" / "users"
    root.mkdir(parents=True)
    ENGINES[engine](original, root)
    fieldcrypt = catalog_fieldcrypt(
        tmp_path, str(tmp_path / "lake"), {"provider": "local", "keystore": str(keystore_path)}, datasets=DATASETS
    )
    workspace: Workspace = fieldcrypt.workspace("test")
    assert workspace.partitions("users") == DAYS
    files = {day: workspace.files("users", day) for day in DAYS}
    own_reader = engine if engine in ("duckdb", "polars", "pandas") else "pyarrow"
    readers = [r for r in ("duckdb", "pandas", "polars", "pyarrow") if reads(r, root)]  # engines disagree on some
    assert own_reader in readers
    workspace.enable("users.email", "email", acknowledge_irreversible=True)

    reports = protect_through_dagster(fieldcrypt)

    for day, report in zip(DAYS, reports, strict=True):
        assert report["files"] == len(files[day]) and report["files_rewritten"] == len(files[day])
        assert report["rows"] == ROWS_PER_DAY
        assert 0 < report["newly_encrypted.email"] < ROWS_PER_DAY  # type: ignore[operator]
    assert {day: workspace.files("users", day) for day in DAYS} == files  # same files, replaced in place
    verified = sum(workspace.verify("users", day)["users.email"] for day in DAYS)
    assert verified == sum(int(r["newly_encrypted.email"]) for r in reports)  # type: ignore[call-overload]

    expected = original.sort_by("user_id")
    for reader in readers:  # every engine that read the lake before reads it after
        table = read_with(reader, root)
        assert table.num_rows == original.num_rows, reader
        for column in ("user_id", "score", "tags"):
            assert comparable(table[column]) == comparable(expected[column]), (reader, column)
        assert [str(d)[:10] for d in table["date"].to_pylist()] == expected["date"].to_pylist(), reader
        protected = pc.is_valid(table["email__fc_ct"])
        masked = pc.filter(table["email"], protected).to_pylist()
        assert masked and set(masked) == {"****@example.com"}, reader
        historical = pc.filter(table["email"], pc.invert(protected))
        assert historical.to_pylist() == pc.filter(expected["email"], pc.invert(protected)).to_pylist(), reader

    workspace.start_rotation()
    rotated = [workspace.rotate("users", day) for day in DAYS]
    assert all(r.rewrapped == r.distinct_data_keys > 0 for r in rotated)  # every data key moved
    workspace.complete_rotation()
    assert sum(workspace.verify("users", day)["users.email"] for day in DAYS) == verified
    assert workspace.rotation_status().complete
