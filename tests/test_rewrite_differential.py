"""Differential test of the rewrite engine's two paths (issue 18, item 2): a file protected on the splice path
(untouched column chunks copied as bytes) decodes in pyarrow, DuckDB and polars exactly like the same file
protected on the full path (every column rewritten by pyarrow), for files written by pyarrow (every Arrow type
of tests/test_types.py), DuckDB, pandas, polars, fastparquet and a Spark-style writer, and for tables
hypothesis generates. Ciphertexts and wrapped keys are random, so they are compared by decrypting, not as
bytes."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import fastparquet
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demo.sample_data import snapshot_path
from fieldcrypt import Workspace
from fieldcrypt.engine.rewrite import REWRITE_PATH_ENV
from tests.test_parquet_splice import (
    SPARK_ROW_METADATA,
    duckdb_column,
    polars_column,
    reader_outcomes,
    same_outcomes,
    write_in_groups,
)
from tests.test_types import NOON, PARTITION, THINGS, revealed, wide_table

RANDOM = {"email__fc_ct", "email__fc_dek"}  # fresh nonces and data keys on every protection
N = 300


def _pyarrow(_: Path) -> bytes:
    table = wide_table()
    return write_in_groups(table, [2, 2, 2], compression="zstd", write_page_index=True)


def _duckdb(path: Path) -> bytes:
    file = path / "duckdb.parquet"
    with duckdb.connect(config={"threads": 1}) as connection:
        connection.execute(
            f"""COPY (SELECT i::BIGINT AS id, 'user' || i || '@example.com' AS email,
                   TIMESTAMPTZ '2026-11-01 12:00:00+00' + to_seconds(i) AS ingested_at,
                   CASE WHEN i % 7 = 0 THEN NULL ELSE i::DOUBLE / 3 END AS score,
                   {{'a': i, 'b': 'x' || i}} AS st, [i, i + 1] AS l, MAP {{'k': i}} AS mp,
                   i::DECIMAL(18, 3) AS dec, md5(i::VARCHAR)::UUID AS u, i % 2 = 0 AS flag
                 FROM range({N}) t(i)) TO '{file}' (FORMAT parquet, ROW_GROUP_SIZE 128, COMPRESSION zstd)"""
        )
    return file.read_bytes()


def _pandas(path: Path) -> bytes:
    frame = pd.DataFrame(
        {
            "id": range(N),
            "email": [f"user{i}@example.com" if i % 5 else None for i in range(N)],
            "ingested_at": pd.date_range("2026-11-01 12:00", periods=N, freq="min", tz="UTC"),
            "count": pd.array([i if i % 4 else None for i in range(N)], dtype="Int64"),
            "score": [float("nan") if i % 6 == 0 else i / 3 for i in range(N)],
            "kind": pd.Categorical(["a", "b", "c"] * (N // 3)),
        },
        index=pd.Index([f"row{i}" for i in range(N)], name="key"),
    )
    file = path / "pandas.parquet"
    frame.to_parquet(file, engine="pyarrow", row_group_size=128, compression="gzip")
    return file.read_bytes()


def _polars(path: Path) -> bytes:
    frame = pl.DataFrame(
        {
            "id": range(N),
            "email": [f"user{i}@example.com" for i in range(N)],
            "ingested_at": [NOON + timedelta(seconds=i) for i in range(N)],
            "tags": [["a", "b"][: i % 3] for i in range(N)],
            "ctx": [{"ip": f"10.0.0.{i % 256}", "n": i} for i in range(N)],
            "score": [None if i % 7 == 0 else i / 3 for i in range(N)],
        }
    )
    file = path / "polars.parquet"
    frame.write_parquet(file, row_group_size=100, statistics=True, compression="zstd")
    return file.read_bytes()


def _fastparquet(path: Path) -> bytes:
    frame = pd.DataFrame(
        {
            "id": range(N),
            "email": [f"user{i}@example.com" for i in range(N)],
            "ingested_at": pd.date_range("2026-11-01 12:00", periods=N, freq="s", tz="UTC"),
            "score": [float("nan") if i % 6 == 0 else i / 3 for i in range(N)],
            "kind": pd.Categorical(["x", "y"] * (N // 2)),
        }
    )
    file = path / "fastparquet.parquet"
    fastparquet.write(str(file), frame, row_group_offsets=[0, 100, 200], compression="SNAPPY", write_index=False)
    return file.read_bytes()


def _spark_style(_: Path) -> bytes:
    """What Spark writes, without Spark: INT96 timestamps, legacy list names, Spark's row metadata."""
    table = pa.table(
        {
            "id": pa.array(range(N), pa.int64()),
            "email": pa.array([f"user{i}@example.com" for i in range(N)]),
            "ingested_at": pa.array([NOON + timedelta(seconds=i) for i in range(N)], pa.timestamp("us", tz="UTC")),
            "tags": pa.array([["a", "b"][: i % 3] for i in range(N)], pa.list_(pa.string())),
        },
        metadata={SPARK_ROW_METADATA: b'{"type":"struct","fields":[]}'},
    )
    return write_in_groups(
        table,
        [120, 120, 60],
        flavor="spark",
        use_deprecated_int96_timestamps=True,
        use_compliant_nested_type=False,
        compression="snappy",
    )


WRITERS: dict[str, Callable[[Path], bytes]] = {
    "pyarrow": _pyarrow,
    "duckdb": _duckdb,
    "pandas": _pandas,
    "polars": _polars,
    "fastparquet": _fastparquet,
    "spark-style": _spark_style,
}


def _protected(
    workspace: Workspace, enable_at: Callable[..., Any], source: bytes, path: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, str]:
    file = Path(workspace.store.full_path(snapshot_path(THINGS.name, PARTITION)))
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(source)
    enable_at(workspace, "things.email", "email", NOON - timedelta(days=1), THINGS)
    with monkeypatch.context() as env:
        env.setenv(REWRITE_PATH_ENV, path)
        report = workspace.protect(THINGS.name, PARTITION)
    assert report.newly_encrypted > 0
    return file, report.rewrite_path


@pytest.fixture(params=list(WRITERS))
def both_paths(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    make_local_workspace: Callable[..., Workspace],
    enable_at: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Workspace, Path, Workspace, Path]:
    """The writer's file protected on the splice path in one lake and on the full path in another."""
    source = WRITERS[request.param](tmp_path)
    spliced = make_local_workspace(str(tmp_path / "lake-splice"))
    full = make_local_workspace(str(tmp_path / "lake-full"))
    spliced_file, spliced_path = _protected(spliced, enable_at, source, "splice", monkeypatch)
    full_file, full_path = _protected(full, enable_at, source, "full", monkeypatch)
    assert (spliced_path, full_path) == ("splice", "full")
    return spliced, spliced_file, full, full_file


def _decodes_alike(read: Callable[[Path, str], pa.Array], spliced: Path, full: Path) -> list[str]:
    names = [name for name in pq.read_schema(spliced).names if name not in RANDOM]
    assert [name for name in pq.read_schema(full).names if name not in RANDOM] == names
    return same_outcomes(reader_outcomes(read, spliced, names), reader_outcomes(read, full, names))


def _pyarrow_column(path: Path, name: str) -> pa.Array:
    return pq.read_table(path, columns=[name]).column(0).combine_chunks()


def test_spliced_protection_decodes_in_pyarrow_like_the_full_path(both_paths: Any) -> None:
    _, spliced, _, full = both_paths
    assert _decodes_alike(_pyarrow_column, spliced, full) == []


def test_spliced_protection_decodes_in_duckdb_like_the_full_path(both_paths: Any) -> None:
    _, spliced, _, full = both_paths
    assert _decodes_alike(duckdb_column, spliced, full) == []


def test_spliced_protection_decodes_in_polars_like_the_full_path(both_paths: Any) -> None:
    _, spliced, _, full = both_paths
    assert _decodes_alike(polars_column, spliced, full) == []


def test_spliced_ciphertexts_decrypt_like_the_full_paths(both_paths: Any) -> None:
    spliced_lake, _, full_lake, _ = both_paths
    assert revealed(spliced_lake, "email") == revealed(full_lake, "email")


def test_spliced_file_has_the_full_paths_schema_and_key_value_metadata(both_paths: Any) -> None:
    _, spliced, _, full = both_paths
    assert pq.ParquetFile(spliced).metadata.metadata == pq.ParquetFile(full).metadata.metadata


def _row_groups(path: Path) -> list[int]:
    metadata = pq.ParquetFile(path).metadata
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


def test_spliced_file_keeps_the_full_paths_row_groups(both_paths: Any) -> None:
    _, spliced, _, full = both_paths
    assert _row_groups(spliced) == _row_groups(full)


# -- generated tables ------------------------------------------------------------------------------------------

_texts = st.one_of(st.none(), st.text(max_size=12))
_generated = st.integers(min_value=1, max_value=40).flatmap(
    lambda n: st.fixed_dictionaries(
        {
            "emails": st.lists(_texts, min_size=n, max_size=n),
            "ints": st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=n, max_size=n),
            "floats": st.lists(st.one_of(st.none(), st.floats(allow_nan=True)), min_size=n, max_size=n),
            "lists": st.lists(st.one_of(st.none(), st.lists(_texts, max_size=3)), min_size=n, max_size=n),
            "historical": st.integers(min_value=0, max_value=n),
            "row_group": st.integers(min_value=1, max_value=n),
            "codec": st.sampled_from(["zstd", "snappy", "none", "gzip"]),
            "dictionary": st.booleans(),
        }
    )
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(example=_generated)
def test_generated_table_protected_on_the_splice_path_decodes_like_the_full_path(
    example: dict[str, Any],
    tmp_path: Path,
    make_local_workspace: Callable[..., Workspace],
    enable_at: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = len(example["emails"])
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "email": pa.array(example["emails"], pa.string()),
            "ints": pa.array(example["ints"], pa.int64()),
            "floats": pa.array(example["floats"], pa.float64()),
            "lists": pa.array(example["lists"], pa.list_(pa.string())),
            # rows before `historical` were ingested before enablement: left as they are
            "ingested_at": pa.array(
                [NOON - timedelta(days=2) if i < example["historical"] else NOON for i in range(n)],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        row_group_size=example["row_group"],
        compression=example["codec"],
        use_dictionary=example["dictionary"],
    )
    source = sink.getvalue().to_pybytes()
    run = tmp_path / secrets.token_hex(4)
    spliced = make_local_workspace(str(run / "lake-splice"))
    full = make_local_workspace(str(run / "lake-full"))
    for workspace, path in ((spliced, "splice"), (full, "full")):
        file = Path(workspace.store.full_path(snapshot_path(THINGS.name, PARTITION)))
        file.parent.mkdir(parents=True)
        file.write_bytes(source)
        enable_at(workspace, "things.email", "email", NOON - timedelta(days=1), THINGS)
        with monkeypatch.context() as env:
            env.setenv(REWRITE_PATH_ENV, path)
            assert workspace.protect(THINGS.name, PARTITION).rewrite_path == path
    spliced_file = Path(spliced.store.full_path(snapshot_path(THINGS.name, PARTITION)))
    full_file = Path(full.store.full_path(snapshot_path(THINGS.name, PARTITION)))
    for read in (_pyarrow_column, duckdb_column, polars_column):
        assert _decodes_alike(read, spliced_file, full_file) == []
    assert revealed(spliced, "email") == revealed(full, "email")
