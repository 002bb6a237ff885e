"""The rewrite engine's two paths: untouched column chunks copied as bytes (splice), or all rewritten (full)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fieldcrypt.engine.rewrite as rewrite
from demo.sample_data import snapshot_path, write_snapshot
from fieldcrypt import InputError, VerificationError, Workspace
from fieldcrypt.lake.parquet_io import chunk_span
from tests.conftest import NOON, SAMPLE_DAY
from tests.policy_support import backdate_policy

PARTITION = SAMPLE_DAY.isoformat()
ROWS = 50


def _users(rows: int = ROWS) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(range(rows), pa.int64()),
            "email": pa.array([f"u{i}@example.com" for i in range(rows)], pa.string()),
            "country": pa.array(["FR", "DE"] * (rows // 2), pa.string()),
            "score": pa.array([i / 3 for i in range(rows)], pa.float64()),
            "ingested_at": pa.array([NOON + timedelta(minutes=i) for i in range(rows)], pa.timestamp("us", tz="UTC")),
        }
    )


def _path(workspace: Workspace) -> Path:
    return Path(workspace.store.full_path(snapshot_path("users", PARTITION)))


def _landed(make_local_workspace: Callable[..., Workspace], table: pa.Table, **options: Any) -> Workspace:
    workspace = make_local_workspace()
    write_snapshot(workspace.store, "users", SAMPLE_DAY, table, row_group_size=20)
    workspace.enable("users.email", "email", acknowledge_irreversible=True, **options)
    backdate_policy(workspace)
    return workspace


def _chunk_bytes(path: Path, column: str) -> list[bytes]:
    metadata = pq.ParquetFile(path).metadata
    data = path.read_bytes()
    found = []
    for group in range(metadata.num_row_groups):
        for leaf in range(metadata.num_columns):
            chunk = metadata.row_group(group).column(leaf)
            if chunk.path_in_schema == column:
                start, end = chunk_span(chunk)
                found.append(data[start:end])
    return found


def test_protect_copies_untouched_column_chunks_as_bytes(make_local_workspace: Callable[..., Workspace]) -> None:
    workspace = _landed(make_local_workspace, _users())
    before = {column: _chunk_bytes(_path(workspace), column) for column in ("user_id", "country", "score")}
    report = workspace.protect("users", PARTITION)
    assert report.rewrite_path == "splice"
    assert {column: _chunk_bytes(_path(workspace), column) for column in before} == before


def test_spliced_protection_keeps_the_row_groups(make_local_workspace: Callable[..., Workspace]) -> None:
    workspace = _landed(make_local_workspace, _users())
    workspace.protect("users", PARTITION)
    metadata = pq.ParquetFile(_path(workspace)).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [20, 20, 10]


def test_spliced_protection_encrypts_every_row(make_local_workspace: Callable[..., Workspace]) -> None:
    workspace = _landed(make_local_workspace, _users())
    assert workspace.protect("users", PARTITION).newly_encrypted == ROWS
    table = pq.read_table(_path(workspace))
    assert table.column("email__fc_ct").null_count == 0
    assert table.column("email").to_pylist()[0] == "****@example.com"


def test_full_path_is_taken_when_asked(
    make_local_workspace: Callable[..., Workspace], monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = _landed(make_local_workspace, _users())
    monkeypatch.setenv(rewrite.REWRITE_PATH_ENV, "full")
    assert workspace.protect("users", PARTITION).rewrite_path == "full"


def test_unknown_rewrite_path_setting_is_refused(
    make_local_workspace: Callable[..., Workspace], monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = _landed(make_local_workspace, _users())
    monkeypatch.setenv(rewrite.REWRITE_PATH_ENV, "fast")
    with pytest.raises(InputError, match="FIELDCRYPT_REWRITE_PATH"):
        workspace.protect("users", PARTITION)


def test_file_without_rows_takes_the_full_path(make_local_workspace: Callable[..., Workspace]) -> None:
    workspace = _landed(make_local_workspace, _users(0))
    report = workspace.protect("users", PARTITION)
    assert report.rewritten and report.rewrite_path == "full"


def test_rotation_splices_only_the_wrapped_keys(make_local_workspace: Callable[..., Workspace]) -> None:
    workspace = _landed(make_local_workspace, _users())
    workspace.protect("users", PARTITION)
    ciphertexts = _chunk_bytes(_path(workspace), "email__fc_ct")
    workspace.start_rotation()
    report = workspace.rotate("users", PARTITION)
    assert report.rewrite_path == "splice"
    assert _chunk_bytes(_path(workspace), "email__fc_ct") == ciphertexts


def test_reindex_splices_only_the_blind_indexes(make_local_workspace: Callable[..., Workspace]) -> None:
    workspace = _landed(make_local_workspace, _users(), blind_index=True)
    workspace.protect("users", PARTITION)
    before = pq.read_table(_path(workspace)).column("email__fc_bidx").to_pylist()
    workspace.start_reindex("users.email")
    report = workspace.reindex("users", PARTITION)
    assert report.rewrite_path == "splice"
    after = pq.read_table(_path(workspace)).column("email__fc_bidx").to_pylist()
    assert all(a != b for a, b in zip(after, before, strict=True))


def test_copied_chunk_changed_after_splicing_is_refused(
    make_local_workspace: Callable[..., Workspace], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: a real splice never corrupts what it copies, so the real splice runs and then one
    # byte of a copied chunk is flipped in the written file, as a disk or a bug might.
    workspace = _landed(make_local_workspace, _users())
    original = _path(workspace).read_bytes()
    real = rewrite.splice_columns

    def corrupting(source: Any, replacement: Any, sink: Any, **options: Any) -> Any:
        report = real(source, replacement, sink, **options)
        position = report.copied[0].destination[0] + 8
        sink.flush()
        sink.seek(position)
        byte = sink.read(1)
        sink.seek(position)
        sink.write(bytes([byte[0] ^ 1]))
        return report

    monkeypatch.setattr(rewrite, "splice_columns", corrupting)
    with pytest.raises(VerificationError):
        workspace.protect("users", PARTITION)
    assert _path(workspace).read_bytes() == original
