"""Crash safety of protection: a kill -9 or a failed verification never loses or half-writes the original.

The kill tests run protect in a real subprocess and inject the fault there: a monkeypatch
that sends SIGKILL to the process itself at a chosen point. The other tests inject faults
in-process at `fieldcrypt.engine.protect`'s seams. Every injection is marked "fault injection".
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import fieldcrypt
import fieldcrypt.engine.rewrite
from demo.sample_data import snapshot_path, users_table, write_snapshot
from fieldcrypt import VerificationError, Workspace
from fieldcrypt.format.columns import raw_path, replace_path
from fieldcrypt.lake.store import TEMP_MARKER

DAY = date(2026, 11, 1)
PARTITION = DAY.isoformat()
REPO = Path(fieldcrypt.__file__).resolve().parents[1]

CHILD = r"""
import os, signal, sys

import fieldcrypt.engine.protect
import fieldcrypt.lake.store
from fieldcrypt import KeyConfig, Workspace, WorkspaceConfig

lake, keystore, stage = sys.argv[1:4]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


# fault injection: SIGKILL at the chosen point of the protection run
real_replace = fieldcrypt.lake.store.LakeStore.replace
real_encrypt = fieldcrypt.engine.protect.encrypt_attribute
batches = []


def replace(self, temp_rel, rel):
    if rel.endswith("part-0.parquet") and stage == "before-replace":
        die()
    real_replace(self, temp_rel, rel)
    if rel.endswith("part-0.parquet") and stage == "after-replace":
        die()


def encrypt_attribute(*args, **kwargs):
    batches.append(1)
    if stage == "mid-write" and len(batches) == 2:
        die()
    return real_encrypt(*args, **kwargs)


fieldcrypt.lake.store.LakeStore.replace = replace
fieldcrypt.engine.protect.encrypt_attribute = encrypt_attribute
from tests.catalogs import TEST_DATASETS

config = WorkspaceConfig("acme", lake, KeyConfig("local", keystore), datasets=TEST_DATASETS)
workspace = Workspace(config, actor="crash-test")
workspace.protect("users", "2026-11-01")
print("protect finished without being killed")
"""


@pytest.fixture
def workspace(make_local_workspace: Callable[..., Workspace], enable_at: Callable[..., Any]) -> Workspace:
    """A users partition of three row groups with users.email pending, the lake bound to its key."""
    workspace = make_local_workspace()
    write_snapshot(workspace.store, "users", DAY, users_table(DAY, 300), row_group_size=100)
    enable_at(workspace, "users.email", "email")
    workspace.key_cache()  # binds the lake to its master key before the child runs
    return workspace


def original_file(workspace: Workspace) -> Path:
    return Path(workspace.store.full_path(snapshot_path("users", PARTITION)))


def temp_files(workspace: Workspace) -> list[Path]:
    return [p for p in original_file(workspace).parent.iterdir() if TEMP_MARKER in p.name]


def protect_in_child_killed_at(workspace: Workspace, stage: str) -> subprocess.CompletedProcess[str]:
    keystore = workspace.config.key.keystore_path or ""
    return subprocess.run(
        [sys.executable, "-c", CHILD, workspace.config.lake_uri, keystore, stage],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_kill_9_after_the_temp_file_is_verified_leaves_the_original_byte_identical(workspace: Workspace) -> None:
    path = original_file(workspace)
    before = path.read_bytes()
    child = protect_in_child_killed_at(workspace, "before-replace")
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert path.read_bytes() == before
    assert pq.read_table(path).equals(pq.read_table(pa.BufferReader(before)))
    # the child died with its fully written, verified replacement still beside the original
    (leftover,) = temp_files(workspace)
    assert leftover.name.startswith(".")
    assert pq.read_table(leftover).column("email__fc_ct").null_count < 300


def test_kill_9_leftover_temp_file_is_invisible_to_readers_and_to_the_next_run(workspace: Workspace) -> None:
    path = original_file(workspace)
    child = protect_in_child_killed_at(workspace, "before-replace")
    assert child.returncode == -signal.SIGKILL
    assert temp_files(workspace)
    assert pq.read_table(path.parents[1]).num_rows == 300  # dataset readers skip the hidden temp file
    assert workspace.store.list_files("users") == [snapshot_path("users", PARTITION)]
    report = workspace.protect("users", PARTITION)
    assert report.rewritten and report.newly_encrypted > 0
    assert workspace.verify("users", PARTITION)["users.email"] == report.newly_encrypted


def test_kill_9_while_writing_the_temp_file_leaves_the_original_byte_identical(workspace: Workspace) -> None:
    path = original_file(workspace)
    before = path.read_bytes()
    child = protect_in_child_killed_at(workspace, "mid-write")
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert path.read_bytes() == before
    assert pq.read_table(path).num_rows == 300


def test_kill_9_right_after_the_replacement_leaves_the_complete_new_file(workspace: Workspace) -> None:
    path = original_file(workspace)
    before = path.read_bytes()
    child = protect_in_child_killed_at(workspace, "after-replace")
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert path.read_bytes() != before
    assert workspace.verify("users", PARTITION)["users.email"] > 0
    assert workspace.protect("users", PARTITION).newly_encrypted == 0


# -- failures during verification (in-process fault injection) -------------------------------


def wrap_encrypt(monkeypatch: pytest.MonkeyPatch, damage: Callable[[pa.RecordBatch, Any], pa.RecordBatch]) -> None:
    """Fault injection: run the real encryption, then damage its output batch before it is written."""
    real = fieldcrypt.engine.protect.encrypt_attribute

    def encrypt_attribute(batch: pa.RecordBatch, dataset: Any, attribute: Any, rows: Any, *args: Any, **kw: Any) -> Any:
        encrypted, outcome = real(batch, dataset, attribute, rows, *args, **kw)
        return damage(encrypted, (attribute, rows)), outcome

    monkeypatch.setattr(fieldcrypt.engine.protect, "encrypt_attribute", encrypt_attribute)


def refused_intact(workspace: Workspace, match: str) -> None:
    path = original_file(workspace)
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    with pytest.raises(VerificationError, match=match):
        workspace.protect("users", PARTITION)
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime
    assert temp_files(workspace) == []


def test_failure_raised_during_verification_leaves_the_original_and_no_temp_file(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_verify(*args: Any, **kwargs: Any) -> None:
        raise VerificationError("injected verification failure")

    monkeypatch.setattr(fieldcrypt.engine.protect, "verify_rewrite", failing_verify)  # fault injection
    refused_intact(workspace, "injected verification failure")


def test_masking_that_leaks_plaintext_is_caught_by_verification(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unmask(batch: pa.RecordBatch, where: Any) -> pa.RecordBatch:
        attribute, rows = where
        return replace_path(batch, attribute.path, rows.values)  # the plaintext back in the analyst column

    wrap_encrypt(monkeypatch, unmask)
    refused_intact(workspace, "an encrypted row does not hold its mask")


def test_ciphertext_damaged_before_writing_is_caught_by_verification(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def flip_first_cell(batch: pa.RecordBatch, where: Any) -> pa.RecordBatch:
        attribute, rows = where
        selected = pc.indices_nonzero(rows.selected)
        if len(selected) == 0:
            return batch
        index = batch.schema.get_field_index(attribute.ciphertext_column)
        cells = batch.column(index).to_pylist()
        first = selected[0].as_py()
        cells[first] = cells[first][:-1] + bytes([cells[first][-1] ^ 1])
        return batch.set_column(index, batch.schema.field(index), pa.array(cells, pa.binary()))

    wrap_encrypt(monkeypatch, flip_first_cell)
    refused_intact(workspace, "ciphertexts read back differ from those written")


def test_unselected_row_changed_by_the_writer_is_caught_by_verification(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def touch_historical_row(batch: pa.RecordBatch, where: Any) -> pa.RecordBatch:
        attribute, rows = where
        values = raw_path(batch, attribute.path)
        kept = pc.indices_nonzero(pc.and_(pc.invert(rows.selected), values.is_valid()))
        if len(kept) == 0:
            return batch
        changed = values.to_pylist()
        changed[kept[0].as_py()] = "****"
        return replace_path(batch, attribute.path, pa.array(changed, values.type))

    wrap_encrypt(monkeypatch, touch_historical_row)
    refused_intact(workspace, "value of a row that was not to be encrypted changed")


def test_file_replaced_by_upstream_during_protection_is_not_overwritten(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_verify = fieldcrypt.engine.protect.verify_rewrite
    path = original_file(workspace)

    def verify_while_upstream_lands(*args: Any, **kwargs: Any) -> None:
        write_snapshot(workspace.store, "users", DAY, users_table(DAY, 300, seed=1), row_group_size=150)
        real_verify(*args, **kwargs)

    monkeypatch.setattr(fieldcrypt.engine.protect, "verify_rewrite", verify_while_upstream_lands)  # fault injection
    with pytest.raises(VerificationError, match="changed while it was being protected"):
        workspace.protect("users", PARTITION)
    landed = pq.read_table(path)
    assert landed.equals(users_table(DAY, 300, seed=1))  # upstream's file, not our rewrite of the old one
    assert temp_files(workspace) == []


@pytest.mark.parametrize(
    ("column", "problem"),
    [("email__fc_ct", "ciphertext"), ("email__fc_dek", "wrapped key")],
)
def test_writer_that_changes_an_already_protected_row_is_caught_by_verification(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, column: str, problem: str
) -> None:
    # First run protects the file; upstream then lands the next snapshot with three new rows.
    workspace.protect("users", PARTITION)
    protected = pq.read_table(original_file(workspace))
    added = pa.Table.from_pylist(
        [
            {"user_id": 1000 + i, "email": f"late{i}@example.com", "ingested_at": protected["ingested_at"][-1].as_py()}
            for i in range(3)
        ],
        schema=protected.schema,
    )
    write_snapshot(workspace.store, "users", DAY, pa.concat_tables([protected, added]), row_group_size=100)

    def damage_an_old_row(batch: pa.RecordBatch, where: Any) -> pa.RecordBatch:
        attribute, rows = where
        index = batch.schema.get_field_index(column)
        old = pc.indices_nonzero(pc.and_(rows.existing_ciphertext.is_valid(), pc.invert(rows.selected)))
        if len(old) == 0:
            return batch
        first = old[0].as_py()
        values = batch.column(index)
        decoded = values.dictionary_decode() if pa.types.is_dictionary(values.type) else values
        changed = decoded.to_pylist()
        changed[first] = changed[first][:-1] + bytes([changed[first][-1] ^ 1])  # last byte of the cell or key
        new = pa.array(changed, pa.binary())
        if pa.types.is_dictionary(values.type):
            new = new.dictionary_encode().cast(values.type)
        return batch.set_column(index, batch.schema.field(index), new)

    wrap_encrypt(monkeypatch, damage_an_old_row)
    refused_intact(workspace, f"{problem} of a row that was not to be encrypted changed")


def test_temp_file_of_a_dead_run_is_swept_by_the_next_run_and_a_live_runs_is_kept(
    local_workspace: Workspace, enable_at: Callable[..., Any]
) -> None:
    from tests.temp_holder import held_by_live_process

    path = Path(local_workspace.store.full_path(snapshot_path("users", PARTITION)))
    dead = path.with_name(f".{path.name}{TEMP_MARKER}deadbeef")
    live = path.with_name(f".{path.name}{TEMP_MARKER}cafecafe")
    dead.write_bytes(b"left by a crash")  # no process holds its flock: its run died
    enable_at(local_workspace, "users.email", "email")
    with held_by_live_process(live):
        local_workspace.protect("users", PARTITION)
        assert not dead.exists()
        assert live.exists()


def test_source_kept_from_the_write_is_what_verification_compares_with(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write keeps the source's row groups it decoded (Output.keeping) and verification compares the
    written file with them: a kept batch unlike the file is refused. Fault injection: the kept batches are
    altered after the write (no writer produces that)."""
    real = fieldcrypt.engine.rewrite.Output.kept

    def altered(self: Any, columns: Any) -> Any:
        kept = real(self, columns)
        assert kept is not None  # a small file is kept whole
        first = kept[0]
        at = first.schema.get_field_index("ingested_at")
        shifted = pc.add(first.column(at), pa.scalar(1, pa.duration("us")))
        return [first.set_column(at, first.schema.field(at), shifted), *kept[1:]]

    monkeypatch.setattr(fieldcrypt.engine.rewrite.Output, "kept", altered)
    refused_intact(workspace, "a column outside the protected attributes changed")


def test_a_source_too_large_to_keep_is_decoded_again_for_verification(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fieldcrypt.engine.rewrite, "KEPT_SOURCE_BYTES", 0)
    kept: list[Any] = []
    real = fieldcrypt.engine.rewrite.Output.kept
    monkeypatch.setattr(fieldcrypt.engine.rewrite.Output, "kept", lambda self, c: kept.append(real(self, c)))
    report = workspace.protect("users", PARTITION)
    assert report.newly_encrypted > 0
    assert kept == [None]
    workspace.verify("users", PARTITION)
