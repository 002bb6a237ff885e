"""No plaintext in any statistic: once a cell is protected, its plaintext is in no byte under the dataset.

Checked the hard way, with tests/plaintext_scan.py: every byte of every file under the dataset
(summary files and hidden files included), every Parquet page decompressed, page indexes, bloom
filters (their bytes, and whether they admit a plaintext), every value decoded. Lakes are written
by pyarrow (statistics, page index, bloom filters, `_metadata`), DuckDB, pandas, polars,
fastparquet and dask (`_metadata`). The scan itself is tested first: it finds a plaintext where
only decompression, a statistic or a bloom filter would show it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from plaintext_scan import scan
from written_lakes import DAYS, ENGINES, PATH, historical_plaintexts, protected_plaintexts, users

from fieldcrypt import Workspace
from tests.catalogs import declared

PLANTED = "planted-" + "ab" * 40  # compresses well: zstd leaves no copy of it as stored


def planted_table(rows: int = 200) -> pa.Table:
    return pa.table({"id": list(range(rows)), "email": [PLANTED if i % 2 else f"other-{i}" for i in range(rows)]})


def test_the_scan_finds_a_plaintext_inside_a_zstd_compressed_page(tmp_path: Path) -> None:
    pq.write_table(
        planted_table(), tmp_path / "part-0.parquet", compression="zstd", use_dictionary=False, write_statistics=False
    )

    hits = scan(tmp_path, [PLANTED])

    assert not [hit for hit in hits if hit.what == "bytes as stored"]  # only decompression shows it
    assert [hit for hit in hits if hit.what == "row group 0 column email page 0 (data page) decompressed"]


def test_the_scan_finds_a_plaintext_in_a_min_max_statistic(tmp_path: Path) -> None:
    """A `_metadata` summary file holds no page: only the statistics of the row groups it describes."""
    collector: list[pq.FileMetaData] = []
    table = pa.table({"id": [1, 2], "email": ["aaa-first", PLANTED]})  # the plaintext is the column's max
    pq.write_to_dataset(table, tmp_path / "data", metadata_collector=collector, write_statistics=True)
    pq.write_metadata(table.schema, tmp_path / "_metadata", metadata_collector=collector)

    hits = scan(tmp_path, [PLANTED])

    assert [hit for hit in hits if hit.file == "_metadata" and hit.what == "footer"]


def test_the_scan_finds_a_plaintext_a_bloom_filter_admits(tmp_path: Path) -> None:
    pq.write_table(
        planted_table(),
        tmp_path / "part-0.parquet",
        compression="zstd",
        use_dictionary=False,
        write_statistics=False,
        bloom_filter_options={"email": {"ndv": 200, "fpp": 0.01}},
    )

    hits = scan(tmp_path, [PLANTED])

    assert [hit for hit in hits if hit.what == "row group 0 column email bloom filter admits"]


def test_the_scan_reads_hidden_gzip_json_files_with_their_escapes_undone(tmp_path: Path) -> None:
    hidden = tmp_path / ".state" / "_log.json.gz"
    hidden.parent.mkdir()
    hidden.write_bytes(gzip.compress(json.dumps({"value": "é" + PLANTED}).encode()))  # é as \\u00e9

    hits = scan(tmp_path, [PLANTED])

    assert [hit.file for hit in hits if hit.what == "gzip-decompressed json decoded"] == [".state/_log.json.gz"]


def test_a_hit_says_where_the_plaintext_is_never_what_it_is(tmp_path: Path) -> None:
    pq.write_table(planted_table(), tmp_path / "part-0.parquet")

    hits = scan(tmp_path, [PLANTED])

    assert hits and PLANTED not in repr(hits)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_no_plaintext_of_a_protected_cell_is_left_under_the_dataset(
    engine: str, tmp_path: Path, make_local_workspace: Callable[..., Workspace]
) -> None:
    original = users()
    root = tmp_path / "lake" / PATH
    root.mkdir(parents=True)
    ENGINES[engine](original, root)
    workspace = make_local_workspace(
        str(tmp_path / "lake"), datasets={"users": declared("users", primary_key="user_id", path=PATH)}
    )
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    enabled_at = workspace.policy().attributes["users.email"].enabled_at
    protected = protected_plaintexts(original, enabled_at)
    assert scan(root, protected)  # the engine's lake holds them before: the scan below can fail

    reports = [workspace.protect("users", day) for day in DAYS]

    assert sum(report.newly_encrypted for report in reports) == len(protected)
    assert scan(root, protected) == []
    assert scan(root, historical_plaintexts(original, enabled_at))  # the rewritten files were scanned
