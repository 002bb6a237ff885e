"""Column-chunk passthrough (issue 18, item 2): a file spliced with replaced and added top-level columns
decodes exactly like the same table written whole by pyarrow (the full path), in pyarrow, DuckDB and
polars; its copied chunks are byte-identical by digest; its page indexes, statistics and bloom filters
still work; and what cannot be spliced is refused by name, before a byte is written."""

from __future__ import annotations

import base64
import decimal
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import fastparquet
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
import pytest
import thriftpy2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldcrypt.errors import InputError, SpliceUnsupported, VerificationError
from fieldcrypt.format.columns import identical
from fieldcrypt.format.splice import (
    SpliceReport,
    arrow_schema_metadata,
    footer_metadata,
    prove_copied,
    range_digest,
    splice_columns,
    spliced_arrow_schema,
)
from fieldcrypt.format.splice._thrift import decode, encode, parquet
from fieldcrypt.format.splice.footer import ParquetLayout, RandomAccess
from tests.test_types import wide_table

NOON = datetime(2026, 11, 1, 12, tzinfo=UTC)
SPARK_ROW_METADATA = b"org.apache.spark.sql.parquet.row.metadata"
DATA_PAGES = (parquet.PageType.DATA_PAGE, parquet.PageType.DATA_PAGE_V2)


# -- writing sources, replacements and the full path ----------------------------------------------------------


def rows_per_group(data: bytes) -> list[int]:
    metadata = pq.ParquetFile(pa.BufferReader(data)).metadata
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


def write_in_groups(table: pa.Table, rows: list[int], **options: Any) -> bytes:
    """`table` written by pyarrow with one row group per entry of `rows` (empty ones included)."""
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, table.schema, **options) as writer:
        start = 0
        for count in rows:
            writer.write_table(table.slice(start, count), row_group_size=max(count, 1))
            start += count
    return sink.getvalue()


def binary_column(n: int, seed: int, width: int = 28) -> pa.Array:
    generator = random.Random(seed)
    return pa.array([None if i % 11 == 5 else generator.randbytes(width) for i in range(n)], pa.binary())


@dataclass(frozen=True)
class Spliced:
    source: bytes
    replacement: bytes
    spliced: bytes
    full: bytes
    report: SpliceReport


def splice_and_rewrite(source: bytes, changes: dict[str, pa.Array], **full_path_options: Any) -> Spliced:
    """The source spliced with `changes` (the spliced path), and the same table written whole (the full path)."""
    rows = rows_per_group(source)
    replacement = write_in_groups(pa.table(changes), rows, write_page_index=True)
    schema = spliced_arrow_schema(pq.read_schema(pa.BufferReader(source)), pq.read_schema(pa.BufferReader(replacement)))
    sink = io.BytesIO()
    report = splice_columns(source, replacement, sink, key_value_metadata=footer_metadata(schema))

    table = pq.read_table(pa.BufferReader(source))
    for name, values in changes.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    return Spliced(source, replacement, sink.getvalue(), write_in_groups(table, rows, **full_path_options), report)


# -- the writers of the differential test ----------------------------------------------------------------------


def pyarrow_source(**options: Any) -> Callable[[Path], tuple[bytes, dict[str, pa.Array]]]:
    """wide_table (every Arrow type of tests/test_types.py), three row groups and an empty one."""

    def build(_: Path) -> tuple[bytes, dict[str, pa.Array]]:
        table = wide_table()
        source = write_in_groups(table, [2, 0, 2, 2], write_page_index=True, **options)
        n = table.num_rows
        changes = {
            "email": pa.array([f"****{i}@example.com" for i in range(n)]),
            # A struct of three leaves replaced by a flat column: leaf counts may differ.
            "nested": pa.array([f"n{i}" for i in range(n)], pa.large_string()),
            "email__fc_ct": binary_column(n, 1),
            "email__fc_dek": binary_column(n, 2, width=60),
        }
        return source, changes

    return build


def pyarrow_many_pages(_: Path) -> tuple[bytes, dict[str, pa.Array]]:
    """Chunks of many small pages (offset indexes with many locations), bloom filters and sorting columns."""
    n = 20_000
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "email": pa.array([f"user{i % 977}@example.com" for i in range(n)]),
            "score": pa.array([float("nan") if i % 13 == 0 else i / 7 for i in range(n)]),
            "tags": pa.array([["a", "b", None][: i % 4] for i in range(n)], pa.list_(pa.string())),
            "props": pa.array([[("k", i), ("z", -i)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
            "ctx": pa.array([{"ip": f"10.0.{i % 256}.1", "n": i % 5 or None} for i in range(n)]),
        }
    )
    source = write_in_groups(
        table,
        [7_000, 7_000, 6_000],
        write_page_index=True,
        data_page_size=2048,
        compression="zstd",
        bloom_filter_options={"email": {"ndv": 1000}, "id": {"ndv": n}},
        sorting_columns=[pq.SortingColumn(0), pq.SortingColumn(1)],
    )
    changes = {
        "email": pa.array([f"****{i % 977}" for i in range(n)]),
        "tags": pa.array([[f"t{i}"] for i in range(n)], pa.list_(pa.large_string())),
        "email__fc_ct": binary_column(n, 3),
        "email__fc_dek": binary_column(n, 4),
    }
    return source, changes


def duckdb_source(path: Path) -> tuple[bytes, dict[str, pa.Array]]:
    file = path / "duckdb.parquet"
    with duckdb.connect(config={"threads": 1}) as connection:
        connection.execute(
            f"""COPY (SELECT i::BIGINT AS id, 'user' || (i % 50) || '@example.com' AS email,
                   CASE WHEN i % 7 = 0 THEN NULL ELSE i::DOUBLE / 3 END AS score,
                   CASE WHEN i % 9 = 0 THEN 'NaN'::DOUBLE ELSE -i END AS odd,
                   {{'a': i, 'b': 'x' || i}} AS st, [i, i + 1] AS l, MAP {{'k': i}} AS mp,
                   TIMESTAMPTZ '2026-11-01 12:00:00+00' + to_seconds(i) AS ts,
                   DATE '2026-01-01' + (i % 300)::INTEGER AS d,
                   i::DECIMAL(18, 3) AS dec, md5(i::VARCHAR)::UUID AS u, i::HUGEINT * 1000 AS h,
                   i % 2 = 0 AS flag, encode('b' || i) AS blob
                 FROM range(5000) t(i)) TO '{file}' (FORMAT parquet, ROW_GROUP_SIZE 2048, COMPRESSION zstd)"""
        )
    n = 5000
    changes = {  # email is kept: its bloom filter is probed below
        "score": pa.array([f"****{i % 50}" for i in range(n)]),
        "st": pa.array([{"a": -i} for i in range(n)]),
        "email__fc_ct": binary_column(n, 5),
        "email__fc_dek": binary_column(n, 6),
    }
    return file.read_bytes(), changes


def pandas_source(path: Path) -> tuple[bytes, dict[str, pa.Array]]:
    n = 300
    frame = pd.DataFrame(
        {
            "email": [f"user{i}@example.com" if i % 5 else None for i in range(n)],
            "count": pd.array([i if i % 4 else None for i in range(n)], dtype="Int64"),
            "score": [float("nan") if i % 6 == 0 else i / 3 for i in range(n)],
            "kind": pd.Categorical(["a", "b", "c"] * (n // 3)),
            "at": pd.date_range("2026-11-01", periods=n, freq="min", tz="Europe/Paris"),
            "label": pd.array([f"l{i}" for i in range(n)], dtype="string"),
            "blob": [bytes([i % 256]) * 3 for i in range(n)],
        },
        index=pd.Index([f"row{i}" for i in range(n)], name="key"),
    )
    file = path / "pandas.parquet"
    frame.to_parquet(file, engine="pyarrow", row_group_size=128, compression="gzip")
    changes = {
        "email": pa.array([f"****{i}" if i % 5 else None for i in range(n)]),
        "email__fc_ct": binary_column(n, 7),
        "email__fc_dek": binary_column(n, 8),
    }
    return file.read_bytes(), changes


def polars_source(path: Path) -> tuple[bytes, dict[str, pa.Array]]:
    n = 3000
    frame = pl.DataFrame(
        {
            "id": range(n),
            "email": [f"user{i}@example.com" for i in range(n)],
            "score": [float("nan") if i % 6 == 0 else (None if i % 7 == 0 else i / 3) for i in range(n)],
            "tags": [["a", "b"][: i % 3] for i in range(n)],
            "ctx": [{"ip": f"10.0.0.{i % 256}", "n": i} for i in range(n)],
            "at": [NOON + timedelta(seconds=i) for i in range(n)],
            "day": [date(2026, 1, 1) + timedelta(days=i % 365) for i in range(n)],
            "amount": [decimal.Decimal(i) / 100 for i in range(n)],
            "flag": [i % 3 == 0 for i in range(n)],
            "blob": [bytes([i % 256]) for i in range(n)],
        }
    ).with_columns(pl.col("email").str.slice(0, 6).cast(pl.Categorical).alias("kind"))
    file = path / "polars.parquet"
    frame.write_parquet(file, row_group_size=1000, statistics=True, compression="zstd")
    changes = {
        "email": pa.array([f"****{i}" for i in range(n)], pa.string_view()),
        "ctx": pa.array([{"ip": None, "n": i, "extra": [i]} for i in range(n)]),
        "email__fc_ct": binary_column(n, 9),
        "email__fc_dek": binary_column(n, 10),
    }
    return file.read_bytes(), changes


def fastparquet_source(path: Path) -> tuple[bytes, dict[str, pa.Array]]:
    n = 400
    frame = pd.DataFrame(
        {
            "id": range(n),
            "email": [f"user{i}@example.com" for i in range(n)],
            "score": [float("nan") if i % 6 == 0 else i / 3 for i in range(n)],
            "at": pd.date_range("2026-11-01", periods=n, freq="s"),
            "flag": [i % 2 == 0 for i in range(n)],
            "kind": pd.Categorical(["x", "y"] * (n // 2)),
        }
    )
    file = path / "fastparquet.parquet"
    fastparquet.write(str(file), frame, row_group_offsets=[0, 150, 300], compression="SNAPPY", write_index=False)
    changes = {
        "email": pa.array([f"****{i}" for i in range(n)]),
        "email__fc_ct": binary_column(n, 11),
        "email__fc_dek": binary_column(n, 12),
    }
    return file.read_bytes(), changes


def spark_style_source(_: Path) -> tuple[bytes, dict[str, pa.Array]]:
    """What Spark writes, without Spark: INT96 timestamps, legacy list names, Spark's row metadata."""
    n = 500
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "email": pa.array([f"user{i}@example.com" for i in range(n)]),
            "at": pa.array([NOON + timedelta(seconds=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
            "tags": pa.array([["a", "b"][: i % 3] for i in range(n)], pa.list_(pa.string())),
        },
        metadata={SPARK_ROW_METADATA: b'{"type":"struct","fields":[]}'},
    )
    source = write_in_groups(
        table,
        [200, 200, 100],
        flavor="spark",
        use_deprecated_int96_timestamps=True,
        use_compliant_nested_type=False,
        compression="snappy",
    )
    changes = {
        "email": pa.array([f"****{i}" for i in range(n)]),
        "tags": pa.array([[str(i)] for i in range(n)], pa.list_(pa.string())),
        "email__fc_ct": binary_column(n, 13),
        "email__fc_dek": binary_column(n, 14),
    }
    return source, changes


def spark_source(_: Path) -> tuple[bytes, dict[str, pa.Array]]:
    """A file Spark 4 wrote (parquet-java 1.17: INT96, page indexes, a bloom filter on email), made once by
    tests/data/make_spark_fixture.py."""
    source = (Path(__file__).resolve().parent / "data" / "spark-4.parquet").read_bytes()
    n = pq.ParquetFile(pa.BufferReader(source)).metadata.num_rows
    changes = {  # email is kept: its bloom filter is probed below
        "score": pa.array([f"****{i}" for i in range(n)]),
        "ctx": pa.array([{"ip": None} for _ in range(n)], pa.struct([("ip", pa.string())])),
        "email__fc_ct": binary_column(n, 15),
        "email__fc_dek": binary_column(n, 16),
    }
    return source, changes


WRITERS: dict[str, Callable[[Path], tuple[bytes, dict[str, pa.Array]]]] = {
    "pyarrow-snappy-dictionary": pyarrow_source(compression="snappy"),
    "pyarrow-zstd-plain": pyarrow_source(compression="zstd", use_dictionary=False),
    "pyarrow-gzip-v2-pages": pyarrow_source(compression="gzip", data_page_version="2.0"),
    "pyarrow-brotli-no-statistics": pyarrow_source(compression="brotli", write_statistics=False),
    "pyarrow-lz4": pyarrow_source(compression="lz4"),
    "pyarrow-uncompressed-checksums": pyarrow_source(compression="none", write_page_checksum=True),
    "pyarrow-many-pages-bloom-sorted": pyarrow_many_pages,
    "duckdb": duckdb_source,
    "pandas": pandas_source,
    "polars": polars_source,
    "fastparquet": fastparquet_source,
    "spark-style": spark_style_source,
    "spark": spark_source,
}


# fieldcrypt's full path keeps a source's INT96 timestamps (parquet_io.protected_writer); so does this one.
FULL_PATH_OPTIONS: dict[str, dict[str, Any]] = {
    writer: {"use_deprecated_int96_timestamps": True} for writer in ("spark-style", "spark")
}


@pytest.fixture(scope="module")
def spliced_by_writer(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Spliced]:
    """Each writer's source spliced once and shared by the tests below (each asserts one behaviour)."""

    @cache
    def splice(writer: str) -> Spliced:
        source, changes = WRITERS[writer](tmp_path_factory.mktemp(writer))
        return splice_and_rewrite(source, changes, **FULL_PATH_OPTIONS.get(writer, {}))

    return splice


# -- decoding alike in three readers --------------------------------------------------------------------------


def pyarrow_columns(data: bytes) -> dict[str, pa.Array]:
    table = pq.read_table(pa.BufferReader(data))
    return {name: table.column(name).combine_chunks() for name in table.column_names}


def reader_outcomes(read: Callable[[Path, str], pa.Array], path: Path, names: list[str]) -> dict[str, Any]:
    """Each column as `read` decodes it alone, or the name of the error it raises (the same in both files)."""
    outcomes: dict[str, Any] = {}
    for name in names:
        try:
            outcomes[name] = read(path, name)
        except (Exception, pl.exceptions.PanicException) as exc:  # a reader that cannot decode a type fails alike
            outcomes[name] = type(exc).__name__
    return outcomes


def duckdb_column(path: Path, name: str) -> pa.Array:
    quoted = '"' + name.replace('"', '""') + '"'
    literal = "'" + str(path).replace("'", "''") + "'"
    with duckdb.connect(config={"threads": 1}) as connection:
        table = connection.sql(f"SELECT {quoted} FROM read_parquet({literal})").to_arrow_table()
    return table.column(0).combine_chunks()


def polars_column(path: Path, name: str) -> pa.Array:
    return pl.read_parquet(path, columns=[name]).to_arrow().column(0).combine_chunks()


def same_outcomes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Names of the columns whose outcome differs (values compared bit for bit, NaN included)."""
    differ = []
    for name in a:
        left, right = a[name], b[name]
        if isinstance(left, str) or isinstance(right, str):
            if left != right:
                differ.append(name)
        elif not identical(left, right):
            differ.append(name)
    return differ


def files(tmp_path: Path, result: Spliced) -> tuple[Path, Path, Path]:
    """The spliced file, the full path's and the source, on disk for readers that take a path."""
    paths = tmp_path / "spliced.parquet", tmp_path / "full.parquet", tmp_path / "source.parquet"
    for path, data in zip(paths, (result.spliced, result.full, result.source), strict=True):
        path.write_bytes(data)
    return paths


def assert_decodes_like_the_full_path(read: Callable[[Path, str], pa.Array], result: Spliced, tmp_path: Path) -> None:
    spliced, full, _ = files(tmp_path, result)
    names = pq.read_schema(spliced).names
    assert same_outcomes(reader_outcomes(read, spliced, names), reader_outcomes(read, full, names)) == []


@pytest.mark.parametrize("writer", WRITERS)
def test_spliced_file_decodes_in_pyarrow_exactly_like_the_full_rewrite(
    spliced_by_writer: Callable[[str], Spliced], writer: str
) -> None:
    result = spliced_by_writer(writer)
    spliced_schema = pq.read_schema(pa.BufferReader(result.spliced))
    assert spliced_schema.equals(pq.read_schema(pa.BufferReader(result.full)), check_metadata=True)
    spliced, full = pyarrow_columns(result.spliced), pyarrow_columns(result.full)
    assert [name for name in spliced if not identical(spliced[name], full[name])] == []


@pytest.mark.parametrize("writer", WRITERS)
def test_spliced_file_decodes_in_duckdb_exactly_like_the_full_rewrite(
    spliced_by_writer: Callable[[str], Spliced], writer: str, tmp_path: Path
) -> None:
    assert_decodes_like_the_full_path(duckdb_column, spliced_by_writer(writer), tmp_path)


@pytest.mark.parametrize("writer", WRITERS)
def test_spliced_file_decodes_in_polars_exactly_like_the_full_rewrite(
    spliced_by_writer: Callable[[str], Spliced], writer: str, tmp_path: Path
) -> None:
    assert_decodes_like_the_full_path(polars_column, spliced_by_writer(writer), tmp_path)


@pytest.mark.parametrize("writer", WRITERS)
def test_spliced_file_keeps_the_source_row_groups(spliced_by_writer: Callable[[str], Spliced], writer: str) -> None:
    result = spliced_by_writer(writer)
    assert rows_per_group(result.spliced) == rows_per_group(result.source)


@pytest.mark.parametrize("writer", WRITERS)
def test_row_group_offsets_and_sizes_describe_the_spliced_chunks(
    spliced_by_writer: Callable[[str], Spliced], writer: str
) -> None:
    layout = ParquetLayout(spliced_by_writer(writer).spliced, "spliced")
    for group, row_group in zip(layout.ranges, layout.metadata.row_groups, strict=True):
        starts = [ranges.pages[0] for ranges in group if ranges.pages != (0, 0)]
        assert row_group.file_offset == min(starts, default=row_group.file_offset)
        assert row_group.total_compressed_size == sum(end - start for start, end in (r.pages for r in group))
        assert row_group.total_byte_size == sum(chunk.meta_data.total_uncompressed_size for chunk in row_group.columns)


# -- copied bytes, proven ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", WRITERS)
def test_every_untouched_chunk_is_copied_byte_identical_by_digest(
    spliced_by_writer: Callable[[str], Spliced], writer: str
) -> None:
    result = spliced_by_writer(writer)
    layout = ParquetLayout(result.source, "source")
    kept = [column for column in layout.columns if column.label in result.report.kept]
    with_pages = [
        ranges.pages
        for group in layout.ranges
        for column in kept
        for ranges in group[column.first_leaf : column.first_leaf + column.leaves]
        if ranges.pages != (0, 0)  # a chunk of an empty row group may hold no page at all
    ]
    assert sorted(copied.source for copied in result.report.copied if copied.part == "pages") == sorted(with_pages)
    proven = prove_copied(result.source, result.spliced, result.report.copied)
    assert proven == sum(copied.source[1] - copied.source[0] for copied in result.report.copied)


@pytest.mark.parametrize("writer", WRITERS)
def test_every_replaced_and_added_chunk_is_the_replacement_s_bytes(
    spliced_by_writer: Callable[[str], Spliced], writer: str
) -> None:
    result = spliced_by_writer(writer)
    layout = ParquetLayout(result.replacement, "replacement")
    with_pages = [ranges.pages for group in layout.ranges for ranges in group if ranges.pages != (0, 0)]
    assert sorted(copied.source for copied in result.report.spliced if copied.part == "pages") == sorted(with_pages)
    assert prove_copied(result.replacement, result.spliced, result.report.spliced) > 0


def test_a_changed_byte_in_a_copied_chunk_fails_the_proof(spliced_by_writer: Callable[[str], Spliced]) -> None:
    result = spliced_by_writer("pyarrow-snappy-dictionary")
    target = result.report.copied[len(result.report.copied) // 2]
    tampered = bytearray(result.spliced)
    tampered[target.destination[0]] ^= 0x01
    with pytest.raises(
        VerificationError, match=f"{target.part} of {target.column} row group {target.row_group}: bytes"
    ):
        prove_copied(result.source, bytes(tampered), result.report.copied)


@pytest.mark.parametrize("writer", WRITERS)
def test_the_digests_taken_while_copying_are_those_of_the_origin_s_ranges(
    spliced_by_writer: Callable[[str], Spliced], writer: str
) -> None:
    result = spliced_by_writer(writer)
    source = RandomAccess(result.source, "source")
    replacement = RandomAccess(result.replacement, "replacement")
    assert list(result.report.copied_sha256) == [range_digest(source, *c.source) for c in result.report.copied]
    assert list(result.report.spliced_sha256) == [range_digest(replacement, *c.source) for c in result.report.spliced]


def test_a_changed_byte_in_a_copied_chunk_fails_the_proof_from_copy_time_digests(
    spliced_by_writer: Callable[[str], Spliced],
) -> None:
    result = spliced_by_writer("pyarrow-snappy-dictionary")
    target = result.report.copied[len(result.report.copied) // 2]
    tampered = bytearray(result.spliced)
    tampered[target.destination[0]] ^= 0x01
    with pytest.raises(
        VerificationError, match=f"{target.part} of {target.column} row group {target.row_group}: bytes"
    ):
        prove_copied(result.source, bytes(tampered), result.report.copied, result.report.copied_sha256)


def test_a_footer_pointing_a_copied_chunk_elsewhere_fails_the_proof(
    spliced_by_writer: Callable[[str], Spliced],
) -> None:
    result = spliced_by_writer("pyarrow-zstd-plain")

    def shift(metadata: Any) -> None:  # id: plain pages, no dictionary page
        metadata.row_groups[0].columns[0].meta_data.data_page_offset += 1

    with pytest.raises(VerificationError, match="pages of id row group 0: the spliced footer places it at"):
        prove_copied(result.source, footer_edited(result.spliced, shift), result.report.copied)


def test_an_offset_index_pointing_at_other_pages_fails_the_proof(spliced_by_writer: Callable[[str], Spliced]) -> None:
    result = spliced_by_writer("pyarrow-many-pages-bloom-sorted")

    def swap(metadata: Any) -> None:  # id's offset index and score's, both copied
        id_, score = metadata.row_groups[0].columns[0], metadata.row_groups[0].columns[2]
        id_.offset_index_offset, score.offset_index_offset = score.offset_index_offset, id_.offset_index_offset
        id_.offset_index_length, score.offset_index_length = score.offset_index_length, id_.offset_index_length

    with pytest.raises(VerificationError, match="offset index does not point at the copied pages"):
        prove_copied(result.source, footer_edited(result.spliced, swap), result.report.copied)


def test_copied_chunk_metadata_changed_in_the_footer_fails_the_proof(
    spliced_by_writer: Callable[[str], Spliced],
) -> None:
    result = spliced_by_writer("pyarrow-snappy-dictionary")

    def recount(metadata: Any) -> None:
        metadata.row_groups[0].columns[0].meta_data.num_values += 1

    with pytest.raises(VerificationError, match="describes the chunk otherwise than its origin"):
        prove_copied(result.source, footer_edited(result.spliced, recount), result.report.copied)


# -- page indexes, statistics, bloom filters ----------------------------------------------------------------


def chunk_pairs(result: Spliced) -> list[tuple[pq.ColumnChunkMetaData, pq.ColumnChunkMetaData]]:
    """(spliced chunk, the chunk it came from) for every chunk of the spliced file."""
    spliced = pq.ParquetFile(pa.BufferReader(result.spliced)).metadata
    origins = {
        "source": pq.ParquetFile(pa.BufferReader(result.source)).metadata,
        "replacement": pq.ParquetFile(pa.BufferReader(result.replacement)).metadata,
    }
    from_replacement = set(result.report.replaced) | set(result.report.added)
    top = pq.read_schema(pa.BufferReader(result.spliced)).names
    pairs = []
    for group in range(spliced.num_row_groups):
        by_path = {
            which: {
                metadata.row_group(group).column(i).path_in_schema: metadata.row_group(group).column(i)
                for i in range(metadata.num_columns)
            }
            for which, metadata in origins.items()
        }
        for i in range(spliced.num_columns):
            chunk = spliced.row_group(group).column(i)
            which = "replacement" if _top_level(chunk.path_in_schema, top) in from_replacement else "source"
            pairs.append((chunk, by_path[which][chunk.path_in_schema]))
    return pairs


def _top_level(path_in_schema: str, names: list[str]) -> str:
    return max((name for name in names if path_in_schema == name or path_in_schema.startswith(name + ".")), key=len)


OFFSETS = {"file_offset", "dictionary_page_offset", "data_page_offset", "bloom_filter_offset"}


@pytest.mark.parametrize("writer", WRITERS)
def test_chunk_metadata_and_statistics_are_those_of_the_chunk_copied(
    spliced_by_writer: Callable[[str], Spliced], writer: str
) -> None:
    result = spliced_by_writer(writer)
    # A source without column orders gives the spliced file none (see test_column_orders_...): Arrow then reads
    # the deprecated min/max, which pyarrow does not write for strings, so statistics of those chunks differ.
    ignored = OFFSETS | (set() if ParquetLayout(result.spliced, "spliced").metadata.column_orders else {"statistics"})
    differ = []
    for chunk, origin in chunk_pairs(result):
        as_written = {key: value for key, value in chunk.to_dict().items() if key not in ignored}
        if as_written != {key: value for key, value in origin.to_dict().items() if key not in ignored}:
            differ.append(chunk.path_in_schema)
        if (chunk.has_column_index, chunk.has_offset_index) != (origin.has_column_index, origin.has_offset_index):
            differ.append(chunk.path_in_schema)
    assert differ == []


@pytest.mark.parametrize("writer", WRITERS)
def test_every_offset_index_entry_points_at_a_page_of_its_chunk(
    spliced_by_writer: Callable[[str], Spliced], writer: str
) -> None:
    data = spliced_by_writer(writer).spliced
    layout = ParquetLayout(data, "spliced")
    checked, indexed = 0, 0
    for group, row_group in enumerate(layout.metadata.row_groups):
        for leaf, chunk in enumerate(row_group.columns):
            ranges = layout.ranges[group][leaf]
            if ranges.offset_index is None:
                continue
            indexed += 1
            offset_index, _ = decode(parquet.OffsetIndex, data[slice(*ranges.offset_index)], "offset index")
            assert offset_index.page_locations[0].offset == chunk.meta_data.data_page_offset
            for location in offset_index.page_locations:
                page = data[location.offset : location.offset + location.compressed_page_size]
                header, header_length = decode(parquet.PageHeader, page, "page header")
                assert header.type in DATA_PAGES
                assert header_length + header.compressed_page_size == location.compressed_page_size
                checked += 1
    assert checked >= indexed


@pytest.mark.parametrize("writer", ["pyarrow-many-pages-bloom-sorted", "spark"])
def test_duckdb_reads_the_page_index_of_copied_chunks_as_in_the_source(
    spliced_by_writer: Callable[[str], Spliced], tmp_path: Path, writer: str
) -> None:
    spliced, _, source = files(tmp_path, spliced_by_writer(writer))
    query = """SELECT row_group_id, path_in_schema, page_id, compressed_page_size, first_row_index, num_rows,
                      null_page, min_value, max_value, null_count
               FROM parquet_page_index(?) WHERE path_in_schema = ? ORDER BY ALL"""
    with duckdb.connect(config={"threads": 1}) as connection:
        pages = connection.execute(query, [str(spliced), "id"]).fetchall()
        assert pages == connection.execute(query, [str(source), "id"]).fetchall()
    assert len(pages) > 3


@pytest.mark.parametrize(
    ("writer", "column", "absent"),
    [
        ("duckdb", "email", "nobody@example.com"),
        ("spark", "email", "nobody@example.com"),
        ("pyarrow-many-pages-bloom-sorted", "id", -1),
    ],
)
def test_bloom_filters_of_copied_chunks_still_exclude_absent_values(
    spliced_by_writer: Callable[[str], Spliced], tmp_path: Path, writer: str, column: str, absent: Any
) -> None:
    result = spliced_by_writer(writer)
    spliced, _, _ = files(tmp_path, result)
    assert column in result.report.kept and any(copied.part == "bloom filter" for copied in result.report.copied)
    with duckdb.connect(config={"threads": 1}) as connection:
        probe = "SELECT bool_and(bloom_filter_excludes) FROM parquet_bloom_probe(?, ?, ?)"
        assert connection.execute(probe, [str(spliced), column, absent]).fetchone() == (True,)


def test_column_orders_are_spliced_when_both_files_have_them(spliced_by_writer: Callable[[str], Spliced]) -> None:
    result = spliced_by_writer("duckdb")
    spliced = ParquetLayout(result.spliced, "spliced")
    assert len(spliced.metadata.column_orders) == spliced.leaf_count


def test_column_orders_are_left_out_when_the_source_has_none(spliced_by_writer: Callable[[str], Spliced]) -> None:
    # fastparquet writes none; claiming an order for its statistics would be a guess.
    result = spliced_by_writer("fastparquet")
    assert ParquetLayout(result.source, "source").metadata.column_orders is None
    assert ParquetLayout(result.spliced, "spliced").metadata.column_orders is None


def test_duckdb_interval_column_decodes_in_duckdb_as_in_the_source(tmp_path: Path) -> None:
    # pyarrow reads DuckDB's INTERVAL as fixed_size_binary[12] and a rewrite drops the annotation; a copied chunk
    # keeps it, schema element included.
    file = tmp_path / "interval.parquet"
    with duckdb.connect(config={"threads": 1}) as connection:
        connection.execute(
            f"COPY (SELECT i AS id, INTERVAL (i) SECOND AS iv FROM range(100) t(i)) TO '{file}' (FORMAT parquet)"
        )
    result = splice_and_rewrite(file.read_bytes(), {"id": pa.array(range(100, 200), pa.int64())})
    spliced, _, source = files(tmp_path, result)
    assert identical(duckdb_column(spliced, "iv"), duckdb_column(source, "iv"))


def test_page_checksums_of_copied_and_spliced_pages_verify(spliced_by_writer: Callable[[str], Spliced]) -> None:
    result = spliced_by_writer("pyarrow-uncompressed-checksums")
    table = pq.read_table(pa.BufferReader(result.spliced), page_checksum_verification=True)
    assert table.num_rows == pq.ParquetFile(pa.BufferReader(result.source)).metadata.num_rows


def test_sorting_columns_are_kept_up_to_the_first_replaced_column(spliced_by_writer: Callable[[str], Spliced]) -> None:
    # The source is sorted by (id, email); email was replaced, so only (id) still holds.
    result = spliced_by_writer("pyarrow-many-pages-bloom-sorted")
    metadata = pq.ParquetFile(pa.BufferReader(result.spliced)).metadata
    assert metadata.row_group(0).sorting_columns == (pq.SortingColumn(0),)


# -- the footer -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table",
    [
        wide_table(),
        pa.Table.from_pandas(pd.DataFrame({"a": [1, 2], "b": ["x", None]}, index=pd.Index(["p", "q"], name="k"))),
        pa.table({"d": pa.array(["a", "b", "a"]).dictionary_encode()}, metadata={b"owner": b"team"}),
    ],
    ids=["every-type", "pandas", "dictionary-with-metadata"],
)
def test_arrow_schema_metadata_is_what_pyarrow_stores(table: pa.Table) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    stored = pq.ParquetFile(pa.BufferReader(sink.getvalue())).metadata.metadata
    assert arrow_schema_metadata(table.schema) == stored[b"ARROW:schema"]
    assert footer_metadata(table.schema) == stored


def test_without_new_key_value_metadata_the_source_s_is_kept() -> None:
    source = write_in_groups(pa.table({"a": [1, 2]}, metadata={b"owner": b"team"}), [2])
    replacement = write_in_groups(pa.table({"b": pa.array([b"x", b"y"])}), [2])
    sink = io.BytesIO()
    splice_columns(source, replacement, sink)
    assert pq.ParquetFile(pa.BufferReader(sink.getvalue())).metadata.metadata == (
        pq.ParquetFile(pa.BufferReader(source)).metadata.metadata
    )


def test_footer_of_a_pyarrow_file_re_encodes_byte_for_byte() -> None:
    # The IDL knows every field current pyarrow writes (size statistics, page index histograms, float16, ...).
    data = write_in_groups(wide_table(), [3, 3], write_page_index=True, bloom_filter_options={"email": {"ndv": 8}})
    footer_length = int.from_bytes(data[-8:-4], "little")
    footer = data[-8 - footer_length : -8]
    assert encode(decode(parquet.FileMetaData, footer, "footer")[0]) == footer


def test_source_may_be_an_open_file_and_the_sink_a_file(tmp_path: Path) -> None:
    source_bytes, changes = pyarrow_source(compression="zstd")(tmp_path)
    replacement = write_in_groups(pa.table(changes), rows_per_group(source_bytes))
    (tmp_path / "source.parquet").write_bytes(source_bytes)
    in_memory = io.BytesIO()
    splice_columns(source_bytes, replacement, in_memory)
    with pa.memory_map(str(tmp_path / "source.parquet")) as source, open(tmp_path / "out.parquet", "wb") as sink:
        splice_columns(source, pa.py_buffer(replacement), sink)
    assert (tmp_path / "out.parquet").read_bytes() == in_memory.getvalue()


# -- random tables ----------------------------------------------------------------------------------------------

VALUE_TYPES = {
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "float64": (pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
    "string": (pa.string(), st.text(max_size=12)),
    "binary": (pa.binary(), st.binary(max_size=12)),
    "list": (pa.list_(pa.int32()), st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), max_size=4)),
    "struct": (
        pa.struct([("a", pa.int16()), ("b", pa.string())]),
        st.fixed_dictionaries({"a": st.one_of(st.none(), st.integers(-(2**15), 2**15 - 1)), "b": st.text(max_size=4)}),
    ),
}


@st.composite
def columns(draw: st.DrawFn, n: int, prefix: str, count: int) -> dict[str, pa.Array]:
    drawn = {}
    for i in range(count):
        value_type, values = VALUE_TYPES[draw(st.sampled_from(sorted(VALUE_TYPES)))]
        drawn[f"{prefix}{i}"] = pa.array(
            draw(st.lists(st.one_of(st.none(), values), min_size=n, max_size=n)), value_type
        )
    return drawn


@st.composite
def splice_cases(draw: st.DrawFn) -> tuple[bytes, dict[str, pa.Array]]:
    groups = draw(st.lists(st.integers(0, 20), min_size=1, max_size=4))
    n = sum(groups)
    table = pa.table(draw(columns(n, "c", draw(st.integers(1, 5)))))
    options = {
        "compression": draw(st.sampled_from(["none", "snappy", "zstd", "gzip"])),
        "use_dictionary": draw(st.booleans()),
        "write_page_index": draw(st.booleans()),
        "write_statistics": draw(st.booleans()),
        "data_page_version": draw(st.sampled_from(["1.0", "2.0"])),
    }
    source = write_in_groups(table, groups, **options)
    replaced = draw(st.lists(st.sampled_from(table.column_names), unique=True, max_size=table.num_columns))
    changes = dict(zip(replaced, draw(columns(n, "r", len(replaced))).values(), strict=True))
    changes.update(draw(columns(n, "new", draw(st.integers(0 if changes else 1, 2)))))
    return source, changes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(splice_cases())
def test_random_tables_splice_like_the_full_rewrite(case: tuple[bytes, dict[str, pa.Array]]) -> None:
    source, changes = case
    result = splice_and_rewrite(source, changes)
    spliced, full = pyarrow_columns(result.spliced), pyarrow_columns(result.full)
    assert list(spliced) == list(full)
    assert [name for name in spliced if not identical(spliced[name], full[name])] == []
    prove_copied(result.source, result.spliced, result.report.copied)


# -- refusals ---------------------------------------------------------------------------------------------------


def small_source(rows: list[int] | None = None) -> bytes:
    rows = rows or [3, 3]
    n = sum(rows)
    return write_in_groups(pa.table({"id": pa.array(range(n)), "email": [f"u{i}" for i in range(n)]}), rows)


def small_replacement(rows: list[int] | None = None) -> bytes:
    rows = rows or [3, 3]
    return write_in_groups(pa.table({"email": binary_column(sum(rows), 1)}), rows)


def refused(source: bytes, replacement: bytes) -> tuple[str, bytes]:
    """The refusal's message, and what was written to the sink before it (nothing, if the splice checks first)."""
    sink = io.BytesIO()
    with pytest.raises(SpliceUnsupported) as refusal:
        splice_columns(source, replacement, sink)
    return str(refusal.value), sink.getvalue()


class InMemoryKms(pe.KmsClient):  # type: ignore[misc]
    """A real pyarrow KMS client holding its master keys in memory, for writing PME files."""

    def __init__(self, _: pe.KmsConnectionConfig) -> None:
        super().__init__()

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> bytes:
        return base64.b64encode(key_bytes)

    def unwrap_key(self, wrapped_key: bytes, master_key_identifier: str) -> bytes:
        return base64.b64decode(wrapped_key)


def pme_file(plaintext_footer: bool) -> bytes:
    factory = pe.CryptoFactory(InMemoryKms)
    config = pe.EncryptionConfiguration(
        footer_key="footer", column_keys={"col": ["email"]}, plaintext_footer=plaintext_footer, double_wrapping=False
    )
    properties = factory.file_encryption_properties(pe.KmsConnectionConfig(), config)
    sink = io.BytesIO()
    table = pa.table({"id": pa.array(range(6)), "email": [f"u{i}" for i in range(6)]})
    pq.write_table(table, sink, encryption_properties=properties, row_group_size=3)
    return sink.getvalue()


def test_parquet_modular_encryption_with_encrypted_footer_is_refused() -> None:
    message, written = refused(pme_file(plaintext_footer=False), small_replacement())
    assert "Parquet Modular Encryption" in message and "PARE" in message
    assert written == b""


def test_parquet_modular_encryption_with_plaintext_footer_is_refused() -> None:
    message, written = refused(pme_file(plaintext_footer=True), small_replacement())
    assert "Parquet Modular Encryption" in message
    assert written == b""


def with_footer(data: bytes, footer: bytes) -> bytes:
    footer_length = int.from_bytes(data[-8:-4], "little")
    return data[: -8 - footer_length] + footer + len(footer).to_bytes(4, "little") + b"PAR1"


def test_a_footer_field_the_idl_does_not_know_is_refused_by_name(tmp_path: Path) -> None:
    # A newer writer's field, made with the same IDL plus one field: the file is real, only the footer grows.
    idl = (Path(parquet.__thrift_file__)).read_text()
    future = tmp_path / "future_thrift.thrift"
    future.write_text(
        idl.replace("  7: optional i16 ordinal\n", "  7: optional i16 ordinal\n  42: optional i64 from_the_future\n")
    )
    future_parquet = thriftpy2.load(str(future), module_name="future_parquet_thrift")
    source = small_source()
    footer_length = int.from_bytes(source[-8:-4], "little")
    metadata, _ = decode(future_parquet.FileMetaData, source[-8 - footer_length : -8], "footer")
    metadata.row_groups[1].from_the_future = 7
    message, written = refused(with_footer(source, encode(metadata)), small_replacement())
    assert "field 42 of RowGroup" in message
    assert written == b""


def test_a_replacement_with_other_row_group_count_is_refused() -> None:
    message, _ = refused(small_source([3, 3]), small_replacement([6]))
    assert "1 row groups where source has 2" in message


def test_a_replacement_with_other_rows_per_row_group_is_refused() -> None:
    message, _ = refused(small_source([3, 3]), small_replacement([2, 4]))
    assert "row group 0 holds 2 rows where source's holds 3" in message


def test_repeated_top_level_names_are_refused() -> None:
    table = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    message, _ = refused(write_in_groups(table, [1]), small_replacement([1]))
    assert "top-level column names repeat (a)" in message


def footer_edited(data: bytes, edit: Callable[[Any], None]) -> bytes:
    footer_length = int.from_bytes(data[-8:-4], "little")
    metadata, _ = decode(parquet.FileMetaData, data[-8 - footer_length : -8], "footer")
    edit(metadata)
    return with_footer(data, encode(metadata))


def test_a_chunk_running_past_the_data_region_is_corrupt_input() -> None:
    def stretch(metadata: Any) -> None:
        metadata.row_groups[1].columns[1].meta_data.total_compressed_size = 10**9

    with pytest.raises(InputError, match="outside the data region") as error:
        splice_columns(footer_edited(small_source(), stretch), small_replacement(), io.BytesIO())
    assert not isinstance(error.value, SpliceUnsupported)


def test_a_data_page_offset_outside_its_chunk_is_corrupt_input() -> None:
    def move(metadata: Any) -> None:
        metadata.row_groups[0].columns[1].meta_data.data_page_offset = 10**9

    with pytest.raises(InputError, match="data_page_offset 1000000000 lies outside the chunk's pages") as error:
        splice_columns(footer_edited(small_source(), move), small_replacement(), io.BytesIO())
    assert not isinstance(error.value, SpliceUnsupported)


def test_an_offset_index_length_past_the_footer_is_corrupt_input() -> None:
    source = write_in_groups(pa.table({"id": pa.array(range(6)), "email": ["x"] * 6}), [3, 3], write_page_index=True)

    def stretch(metadata: Any) -> None:
        metadata.row_groups[1].columns[0].offset_index_length = 10**6

    with pytest.raises(InputError, match="offset index"):
        splice_columns(footer_edited(source, stretch), small_replacement(), io.BytesIO())


def test_a_footer_length_beyond_the_file_is_corrupt_input() -> None:
    source = bytearray(small_source())
    source[-8:-4] = (len(source) * 2).to_bytes(4, "little")
    with pytest.raises(InputError, match="footer length"):
        splice_columns(bytes(source), small_replacement(), io.BytesIO())


def test_a_truncated_footer_is_corrupt_input() -> None:
    source = small_source()
    footer_length = int.from_bytes(source[-8:-4], "little")
    cut = source[: -8 - footer_length] + source[-8 - footer_length : -8 - footer_length // 2]
    with pytest.raises(InputError, match="corrupt Parquet"):
        splice_columns(cut + (footer_length // 2).to_bytes(4, "little") + b"PAR1", small_replacement(), io.BytesIO())


def test_a_file_that_is_not_parquet_is_refused_as_input() -> None:
    with pytest.raises(InputError, match="not a Parquet file"):
        splice_columns(b"not parquet at all, no magic", small_replacement(), io.BytesIO())


def test_a_file_from_parquet_mr_before_1_2_9_is_refused() -> None:
    # Its chunk sizes leave out the dictionary page header (PARQUET-816); readers pad them by guesswork.
    def old_writer(metadata: Any) -> None:
        metadata.created_by = b"parquet-mr version 1.2.8 (build 0123)"

    message, _ = refused(footer_edited(small_source(), old_writer), small_replacement())
    assert "parquet-mr before 1.2.9" in message


def test_a_column_chunk_stored_in_another_file_is_refused() -> None:
    def external(metadata: Any) -> None:
        metadata.row_groups[0].columns[0].file_path = b"elsewhere.parquet"

    message, _ = refused(footer_edited(small_source(), external), small_replacement())
    assert "column chunk stored in another file" in message


def test_an_encrypted_column_chunk_is_refused() -> None:
    def encrypted(metadata: Any) -> None:
        metadata.row_groups[1].columns[1].crypto_metadata = parquet.ColumnCryptoMetaData(
            ENCRYPTION_WITH_FOOTER_KEY=parquet.EncryptionWithFooterKey()
        )

    message, _ = refused(footer_edited(small_source(), encrypted), small_replacement())
    assert "row group 1 column 1: Parquet Modular Encryption (encrypted column)" in message


def test_without_replacement_digests_the_same_bytes_are_written_and_the_copies_still_proven(tmp_path: Path) -> None:
    """The engine decodes the changed columns and checks them itself: it asks for no digest of the replacement's
    copies (digest_spliced=False); the file is the same, and the source's copies are proven as before."""
    source_bytes, changes = pyarrow_source(compression="zstd")(tmp_path)
    replacement = write_in_groups(pa.table(changes), rows_per_group(source_bytes))
    hashed, unhashed = io.BytesIO(), io.BytesIO()
    with_digests = splice_columns(source_bytes, replacement, hashed)
    without = splice_columns(source_bytes, replacement, unhashed, digest_spliced=False)
    assert unhashed.getvalue() == hashed.getvalue()
    assert len(with_digests.spliced_sha256) == len(with_digests.spliced) > 0 and without.spliced_sha256 == ()
    assert without.copied_sha256 == with_digests.copied_sha256
    assert prove_copied(source_bytes, unhashed.getvalue(), without.copied, without.copied_sha256) > 0


def test_without_any_digest_the_same_bytes_are_written_and_the_copies_are_compared_byte_for_byte(
    tmp_path: Path,
) -> None:
    """On a local lake the engine hashes nothing while splicing (digest_copied=False): the proof reads both
    files and compares the copied ranges, and a changed byte in a copy still fails it."""
    source_bytes, changes = pyarrow_source(compression="zstd")(tmp_path)
    replacement = write_in_groups(pa.table(changes), rows_per_group(source_bytes))
    hashed, unhashed = io.BytesIO(), io.BytesIO()
    splice_columns(source_bytes, replacement, hashed)
    without = splice_columns(source_bytes, replacement, unhashed, digest_spliced=False, digest_copied=False)
    assert unhashed.getvalue() == hashed.getvalue()
    assert without.copied_sha256 == () and without.spliced_sha256 == ()
    assert prove_copied(source_bytes, unhashed.getvalue(), without.copied, without.copied_sha256) > 0
    target = without.copied[len(without.copied) // 2]
    tampered = bytearray(unhashed.getvalue())
    tampered[target.destination[1] - 1] ^= 0x01
    with pytest.raises(VerificationError, match=f"{target.part} of {target.column} row group {target.row_group}"):
        prove_copied(source_bytes, bytes(tampered), without.copied, without.copied_sha256)
