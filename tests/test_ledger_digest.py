"""The ledger's cell digests (docs/FORMAT.md section 6d) as the rewrite engine takes them: from the batches
its verification decodes (CellDigester), read from buffers without copying the cells. Each is compared
with a plain-Python reference of the format, and with a fresh read of the file the workspace recorded."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path
from fieldcrypt import Workspace
from fieldcrypt.engine.encrypt import _placed
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.ledger import (
    CELLS_LABEL,
    CellDigester,
    _cells,
    _ColumnDigest,
    cell_digests,
    entry_of,
    shard_path,
)
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec

PARTITION = date(2026, 11, 1).isoformat()
FILE = snapshot_path("users", PARTITION)


def reference_digest(rows: list[tuple[bytes | None, bytes | None, bytes | None, bytes | None]]) -> tuple[int, str]:
    """Section 6d, cell by cell: the protected rows (non-null ciphertext) of (row key, ct, dek, bidx)."""
    protected = [row for row in rows if row[1] is not None]
    h = hashlib.sha256(CELLS_LABEL + struct.pack("<Q", len(protected)))
    for column in range(4):
        cells = [row[column] for row in protected]
        lengths = b"".join(struct.pack("<q", -1 if c is None else len(c)) for c in cells)
        h.update(hashlib.sha256(lengths).digest() + hashlib.sha256(b"".join(c or b"" for c in cells)).digest())
    return len(protected), h.hexdigest()


def _attribute() -> AttributePolicy:
    return AttributePolicy("users", "email", "email", datetime(2026, 11, 1, tzinfo=UTC), "test")


def test_cell_digests_follow_the_format_row_group_by_row_group(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows: list[tuple[bytes | None, bytes | None, bytes | None, bytes | None]] = []
    ids, cts, deks = [], [], []
    for i in range(300):
        protected = rng.random() < 0.7
        ct = bytes(rng.integers(0, 256, int(rng.integers(29, 60)), dtype=np.uint8)) if protected else None
        dek = (b"key-a" if i < 150 else b"key-b-longer") if protected else None
        ids.append(i)
        cts.append(ct)
        deks.append(dek)
        rows.append((str(i).encode(), ct, dek, None))
    table = pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "email": pa.array(["****"] * 300),
            "email__fc_ct": pa.array(cts, pa.binary()),
            "email__fc_dek": pa.array(deks, pa.binary()).dictionary_encode(),
        }
    )
    path = tmp_path / "f.parquet"
    pq.write_table(table, path, row_group_size=70)
    dataset = DatasetSpec("users", "ingested_at", "user_id")
    attribute = _attribute()
    with pq.ParquetFile(path) as parquet:
        assert parquet.num_row_groups == 5
        assert cell_digests(parquet, dataset, [attribute], "f") == {"users.email": reference_digest(rows)}
        # Fed by a verification that decodes more columns than needed, one row group at a time.
        digester = CellDigester(dataset, [attribute], parquet.schema_arrow.names, "f")
        for index in range(parquet.num_row_groups):
            digester.add(parquet.read_row_group(index).combine_chunks().to_batches()[0])
        assert digester.result(parquet.num_row_groups, parquet.metadata.num_rows) == {
            "users.email": reference_digest(rows)
        }


def test_a_digester_not_fed_every_row_group_or_column_gives_nothing(tmp_path: Path) -> None:
    table = pa.table({"user_id": [1, 2], "email__fc_ct": pa.array([b"x" * 30, None]), "email__fc_dek": [b"k", None]})
    dataset = DatasetSpec("users", "ingested_at", "user_id")
    names = table.schema.names
    short = CellDigester(dataset, [_attribute()], names, "f")
    short.add(table.to_batches()[0])
    assert short.result(2, 4) is None  # one row group of two fed
    missing = CellDigester(dataset, [_attribute()], names, "f")
    missing.add(table.drop_columns(["user_id"]).to_batches()[0])
    assert missing.result(1, 2) is None  # the row key's column was not decoded
    whole = CellDigester(dataset, [_attribute()], names, "f")
    whole.add(table.to_batches()[0])
    assert whole.result(1, 2) == {"users.email": reference_digest([(b"1", b"x" * 30, b"k", None)])}


def test_cells_behind_null_slots_and_slices_are_left_out() -> None:
    # A null slot with bytes behind it (Arrow allows it) and an array sliced from the middle.
    offsets = np.array([0, 3, 7, 9, 12], dtype=np.int32)
    validity = pa.py_buffer(np.packbits([True, False, True, True], bitorder="little"))
    array = pa.Array.from_buffers(
        pa.binary(), 4, [validity, pa.py_buffer(offsets), pa.py_buffer(b"abcDEFGhiJKL")], null_count=1
    )
    for column in (array, array.slice(1, 3), pa.array(["é", None, "x"], pa.large_string())):
        lengths, data = _cells(column)
        values = column.cast(pa.large_binary()).to_pylist()
        assert lengths == b"".join(struct.pack("<q", -1 if v is None else len(v)) for v in values)
        assert bytes(data) == b"".join(v for v in values if v is not None)


def test_ciphertexts_digested_in_place_equal_their_non_null_cells_copied_out() -> None:
    """_ColumnDigest.update_valid reads a ciphertext column's protected cells in place unless bytes lie
    behind a null; either way the digest is that of the column with its nulls dropped."""
    offsets = np.array([0, 3, 3, 9, 12], dtype=np.int32)
    validity = pa.py_buffer(np.packbits([True, False, True, True], bitorder="little"))
    clean = pa.Array.from_buffers(
        pa.binary(), 4, [validity, pa.py_buffer(offsets), pa.py_buffer(b"abcGGhiJKLmn")], null_count=1
    )
    behind = pa.Array.from_buffers(  # the null slot holds bytes: they must not be digested
        pa.binary(), 4, [validity, pa.py_buffer(np.array([0, 3, 7, 9, 12], np.int32)), pa.py_buffer(b"abcDEFGhiJKL")]
    )
    for column in (
        clean,
        behind,
        clean.slice(1, 3),
        behind.slice(1, 2),
        pa.array([b"x", None, b"yz"], pa.large_binary()),
        pa.nulls(3, pa.binary()),
        pa.array([b"a", b"b"]),
    ):
        in_place, copied = _ColumnDigest(), _ColumnDigest()
        in_place.update_valid(column)
        copied.update(pc.drop_null(column))
        assert in_place.digest() == copied.digest()


@pytest.mark.parametrize("seed", range(4))
def test_placed_ciphertexts_equal_replace_with_mask(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(0, 200))
    selected = pa.array(rng.random(rows) < rng.random())
    count = selected.true_count
    cells = pa.array([bytes(rng.integers(0, 256, int(rng.integers(29, 50)), dtype=np.uint8)) for _ in range(count + 3)])
    cells = cells.slice(2, count)  # not at offset 0
    existing = pa.nulls(rows, pa.binary())
    placed = _placed(existing, selected, cells)
    placed.validate(full=True)
    assert placed.equals(pc.replace_with_mask(existing, selected, cells))
    # Existing ciphertexts on other rows take Arrow's kernel, with the same result.
    some = pa.array([b"old" if i % 3 == 0 and not s else None for i, s in enumerate(selected.to_pylist())], pa.binary())
    assert _placed(some, selected, cells).equals(pc.replace_with_mask(some, selected, cells))


def _recorded(workspace: Workspace) -> dict[str, Any]:
    shard = Path(workspace.store.full_path(shard_path("users", PARTITION)))
    entry: dict[str, Any] = json.loads(shard.read_text())["files"][FILE]
    return entry


def test_protection_and_rotation_record_the_digests_a_fresh_read_gives(
    local_workspace: Workspace, enable_at: Callable[..., Any]
) -> None:
    """The entries recorded from the verification's decode are those of the written file, read again."""
    enable_at(local_workspace, "users.email", "email")
    enable_at(local_workspace, "users.phone", "last4")
    report = local_workspace.protect("users", PARTITION)
    assert report.rewrite_path == "splice"
    store: LakeStore = local_workspace.store
    spec = local_workspace.policy().dataset("users")
    attributes = local_workspace.policy().for_dataset("users")
    fresh = entry_of(store, FILE, spec, attributes).to_doc()
    assert _recorded(local_workspace) == fresh
    assert fresh["attributes"]["users.email"]["cells"] == report.attributes["users.email"].newly_encrypted
    local_workspace.start_rotation()
    assert local_workspace.rotate("users", PARTITION).rewritten
    rotated = entry_of(store, FILE, spec, attributes).to_doc()
    assert _recorded(local_workspace) == rotated
    assert rotated["attributes"]["users.email"] != fresh["attributes"]["users.email"]  # the wrapped keys changed
