"""Master-key rotation at the library level, local provider (aws-kms: test_aws_kms.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from demo.sample_data import land_sample_lake, snapshot_path
from fieldcrypt import KeyMaterialError, PolicyError, Workspace
from fieldcrypt.engine.rotate import wrapped_key_refs
from fieldcrypt.keys.keystore import Keystore
from tests.conftest import SAMPLE_DAY
from tests.policy_support import backdate_policy

DAYS = [SAMPLE_DAY + timedelta(days=i) for i in range(3)]
PARTITIONS = [d.isoformat() for d in DAYS]


def _backdate_policy(workspace: Workspace) -> None:
    backdate_policy(workspace)


@pytest.fixture
def protected_lake(make_local_workspace) -> Workspace:
    """Three days of users and events, email/phone/properties.email protected under key version 1."""
    workspace = make_local_workspace()
    land_sample_lake(workspace.store, DAYS[0], len(DAYS), users=200, events=300)
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    workspace.enable("users.phone", "last4", acknowledge_irreversible=True)
    workspace.enable("events.properties.email", "email", acknowledge_irreversible=True)
    _backdate_policy(workspace)
    for dataset in ("users", "events"):
        for partition in PARTITIONS:
            assert workspace.protect(dataset, partition).newly_encrypted > 0
    return workspace


def _columns(workspace: Workspace, dataset: str, partition: str, names: list[str]) -> dict[str, list[object]]:
    table = pq.read_table(workspace.store.full_path(snapshot_path(dataset, partition)), columns=names)
    return {name: table.column(name).to_pylist() for name in names}


def _revealed(workspace: Workspace, dataset: str, partition: str, attributes: list[str]) -> list[dict[str, object]]:
    return [row for batch in workspace.reveal(dataset, partition, attributes) for row in batch.to_pylist()]


def test_rotation_rewraps_every_partition_and_leaves_ciphertext_byte_identical(protected_lake: Workspace) -> None:
    untouched = ["email", "email__fc_ct", "phone", "phone__fc_ct", "user_id", "name", "ingested_at"]
    before = {p: _columns(protected_lake, "users", p, untouched) for p in PARTITIONS}
    plain_before = _revealed(protected_lake, "users", PARTITIONS[0], ["email", "phone"])
    campaign = protected_lake.start_rotation()
    assert (campaign.old.key_version, campaign.new.key_version) == ("1", "2")
    for dataset in ("users", "events"):
        for partition in PARTITIONS:
            report = protected_lake.rotate(dataset, partition)
            assert report.rewritten
            assert report.rewrapped == report.distinct_data_keys  # one rewrap per distinct data key, not per row
    for partition in PARTITIONS:
        assert _columns(protected_lake, "users", partition, untouched) == before[partition]
        refs = set(
            wrapped_key_refs(
                protected_lake.store, snapshot_path("users", partition), protected_lake.policy().for_dataset("users")
            ).values()
        )
        assert refs == {f"{campaign.new.key_id}#2"}
    assert _revealed(protected_lake, "users", PARTITIONS[0], ["email", "phone"]) == plain_before


def test_partition_already_under_new_key_is_skipped_without_rewrite(protected_lake: Workspace) -> None:
    protected_lake.start_rotation()
    protected_lake.rotate("users", PARTITIONS[0])
    path = Path(protected_lake.store.full_path(snapshot_path("users", PARTITIONS[0])))
    stat_before, bytes_before = path.stat(), path.read_bytes()
    report = protected_lake.rotate("users", PARTITIONS[0])
    assert not report.rewritten and report.rewrapped == 0 and report.kms_calls == 0
    assert path.read_bytes() == bytes_before and path.stat().st_mtime_ns == stat_before.st_mtime_ns


def test_mixed_state_mid_campaign_is_readable_and_new_rows_wrap_under_new_key(protected_lake: Workspace) -> None:
    campaign = protected_lake.start_rotation()
    protected_lake.rotate("users", PARTITIONS[0])
    for partition in PARTITIONS[:2]:  # one rotated, one not: both decrypt
        assert all(
            row["users.email"] is None or "@" in str(row["users.email"])
            for row in _revealed(protected_lake, "users", partition, ["email"])
        )
    extra = SAMPLE_DAY + timedelta(days=10)
    land_sample_lake(protected_lake.store, extra, 1, users=50, events=10)
    protected_lake.protect("users", extra.isoformat())
    refs = set(
        wrapped_key_refs(
            protected_lake.store,
            snapshot_path("users", extra.isoformat()),
            protected_lake.policy().for_dataset("users"),
        ).values()
    )
    assert refs == {campaign.new.ref}


def test_completion_is_refused_while_a_partition_remains_under_the_old_key(protected_lake: Workspace) -> None:
    protected_lake.start_rotation()
    for dataset in ("users", "events"):
        for partition in PARTITIONS:
            if (dataset, partition) != ("events", PARTITIONS[1]):
                protected_lake.rotate(dataset, partition)
    status = protected_lake.rotation_status()
    assert list(status.remaining) == [f"events/{PARTITIONS[1]}"]
    with pytest.raises(PolicyError, match=f"events/{PARTITIONS[1]}"):
        protected_lake.complete_rotation()
    protected_lake.rotate("events", PARTITIONS[1])
    campaign = protected_lake.complete_rotation()
    assert campaign.status == "complete"
    assert protected_lake.rotation_status().complete


def test_completed_rotation_retires_the_old_key_version(protected_lake: Workspace, keystore_path: Path) -> None:
    campaign = protected_lake.start_rotation()
    for dataset in ("users", "events"):
        for partition in PARTITIONS:
            protected_lake.rotate(dataset, partition)
    protected_lake.complete_rotation()
    keystore = Keystore.load(keystore_path)
    with pytest.raises(KeyMaterialError, match="retired"):
        keystore.key_for(int(campaign.old.key_version))
    assert keystore.versions[int(campaign.old.key_version)].key == b""
    assert _revealed(protected_lake, "users", PARTITIONS[2], ["phone"])  # new version still decrypts


def test_second_campaign_cannot_start_before_the_first_completes(protected_lake: Workspace) -> None:
    protected_lake.start_rotation()
    with pytest.raises(PolicyError, match="in progress"):
        protected_lake.start_rotation()


def test_rotation_events_are_audited_with_counts(protected_lake: Workspace) -> None:
    protected_lake.start_rotation()
    protected_lake.rotate("users", PARTITIONS[0])
    events = [e for e in protected_lake.audit.events() if e["operation"] in ("rotation_start", "rotate_partition")]
    assert [e["operation"] for e in events] == ["rotation_start", "rotate_partition"]
    assert events[1]["partition"] == PARTITIONS[0] and events[1]["cells"] > 0 and events[1]["data_keys"] >= 1


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from fieldcrypt import KeyConfig, Workspace, WorkspaceConfig
    from fieldcrypt.lake.store import LakeStore
    from tests.catalogs import TEST_DATASETS

    def die(self, temp, rel):
        os.kill(os.getpid(), signal.SIGKILL)  # a real crash after the rewrite was written and verified

    LakeStore.replace = die
    key = KeyConfig(provider="local", keystore_path=sys.argv[2])
    config = WorkspaceConfig("acme", sys.argv[1], key, datasets=TEST_DATASETS)
    Workspace(config, actor="crash").rotate("users", sys.argv[3])
    """
)


def test_process_killed_during_rewrap_loses_nothing(protected_lake: Workspace, keystore_path: Path) -> None:
    protected_lake.start_rotation()
    partition = PARTITIONS[0]
    path = Path(protected_lake.store.full_path(snapshot_path("users", partition)))
    original = path.read_bytes()
    result = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, protected_lake.store.uri, str(keystore_path), partition],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert path.read_bytes() == original
    assert _revealed(protected_lake, "users", partition, ["email"])  # still readable under the old key
    report = protected_lake.rotate("users", partition)  # the re-run finishes the partition
    assert report.rewritten
    assert not [n for n in os.listdir(path.parent) if n != path.name and not n.startswith(".")]
