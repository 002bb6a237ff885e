"""Users lakes written by real engines, partitioned by date, with the summary files each engine writes.

Every writer keeps what its engine does by default and adds what leaks plaintext when a
customer turns it on: pyarrow writes statistics, a page index, bloom filters on `email` and a
`_metadata` + `_common_metadata` (`pq.write_metadata`); fastparquet writes its `_metadata` and
`_common_metadata` as always (with statistics of every column); dask writes them with
`write_metadata_file=True`. Half of each day's rows are ingested before now and half after, so
enabling now leaves historical rows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DAYS = ["2026-11-01", "2026-11-02"]
ROWS_PER_DAY = 300
PATH = "warehouse/users"
DATASETS = {
    "users": {
        "path": PATH,
        "partitioning": {"granularity": "daily", "key": "date", "start": DAYS[0]},
        "ingested_at": "ingested_at",
        "primary_key": "user_id",
    }
}


def users(now: datetime | None = None) -> pa.Table:
    """Each day's rows ingested from 12 h before `now` to 12 h after; every email distinct, none a part of another."""
    now = now or datetime.now(UTC)
    step = timedelta(days=1) / ROWS_PER_DAY
    ids = list(range(ROWS_PER_DAY * len(DAYS)))
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "email": [None if i % 11 == 4 else f"person-{i:05d}-q@mail{i % 4}.example" for i in ids],
            "score": pa.array([i * 0.25 for i in ids], pa.float64()),
            "city": [f"city {i % 7}" for i in ids],
            "ingested_at": pa.array(
                [now - timedelta(hours=12) + step * (i % ROWS_PER_DAY) for i in ids], pa.timestamp("us", tz="UTC")
            ),
            "date": [DAYS[i // ROWS_PER_DAY] for i in ids],
        }
    )


def write_pyarrow(table: pa.Table, root: Path) -> None:
    """Statistics, page index, bloom filters, zstd; `_metadata` (row groups, statistics) and `_common_metadata`."""
    collector: list[pq.FileMetaData] = []
    pq.write_to_dataset(
        table,
        root,
        partition_cols=["date"],
        metadata_collector=collector,
        compression="zstd",
        write_statistics=True,
        write_page_index=True,
        bloom_filter_options={"email": {"ndv": ROWS_PER_DAY, "fpp": 0.01}},
        row_group_size=100,
    )
    schema = table.drop_columns(["date"]).schema
    pq.write_metadata(schema, root / "_common_metadata")
    pq.write_metadata(schema, root / "_metadata", metadata_collector=collector)


def write_duckdb(table: pa.Table, root: Path) -> None:
    connection = duckdb.connect()
    connection.register("users", table)
    connection.execute(f"COPY users TO '{root}' (FORMAT parquet, PARTITION_BY (date), ROW_GROUP_SIZE 100)")


def write_pandas(table: pa.Table, root: Path) -> None:
    table.to_pandas().to_parquet(root, partition_cols=["date"], index=False)


def write_polars(table: pa.Table, root: Path) -> None:
    pl.from_arrow(table).write_parquet(root, partition_by="date")  # type: ignore[union-attr]


def write_fastparquet(table: pa.Table, root: Path) -> None:
    """fastparquet's hive layout: `date=.../part.N.parquet` with `_metadata` and `_common_metadata` at the root,
    statistics of every column (its default writes them for numbers and timestamps only)."""
    import fastparquet

    frame = table.to_pandas()
    fastparquet.write(str(root), frame, partition_on=["date"], file_scheme="hive", row_group_offsets=100, stats=True)


def write_dask(table: pa.Table, root: Path) -> None:
    """dask's `to_parquet` with `write_metadata_file=True`: `_metadata` and `_common_metadata` at the root."""
    import dask.dataframe as dd

    frame = dd.from_pandas(table.to_pandas(), npartitions=2)
    frame.to_parquet(str(root), partition_on=["date"], write_metadata_file=True, write_index=False)


ENGINES: dict[str, Callable[[pa.Table, Path], None]] = {
    "pyarrow": write_pyarrow,
    "duckdb": write_duckdb,
    "pandas": write_pandas,
    "polars": write_polars,
    "fastparquet": write_fastparquet,
    "dask": write_dask,
}


def protected_plaintexts(table: pa.Table, enabled_at: datetime) -> set[str]:
    """The emails of the rows ingested at or after enablement: the cells protection encrypts."""
    after = pc.greater_equal(table["ingested_at"], pa.scalar(enabled_at, pa.timestamp("us", tz="UTC")))
    return {email for email in pc.filter(table["email"], after).to_pylist() if email is not None}


def historical_plaintexts(table: pa.Table, enabled_at: datetime) -> set[str]:
    before = pc.less(table["ingested_at"], pa.scalar(enabled_at, pa.timestamp("us", tz="UTC")))
    return {email for email in pc.filter(table["email"], before).to_pylist() if email is not None}


def read_fastparquet(root: Path) -> pd.DataFrame:
    import fastparquet

    return fastparquet.ParquetFile(str(root)).to_pandas().sort_values("user_id").reset_index(drop=True)


def read_dask(root: Path) -> pd.DataFrame:
    import dask.dataframe as dd

    return dd.read_parquet(str(root)).compute().sort_values("user_id").reset_index(drop=True)
