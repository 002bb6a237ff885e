"""The completion scan (`Workspace.rotation_status`): concurrent reads, and an incremental scan from known-clean
partitions (what the rotation driver sensor keeps in its cursor). Library level, local provider, no Dagster."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from demo.sample_data import land_sample_lake, snapshot_path
from fieldcrypt import ConfigError, Workspace
from tests.conftest import SAMPLE_DAY
from tests.policy_support import backdate_policy

DAYS = [SAMPLE_DAY + timedelta(days=i) for i in range(4)]
PARTITIONS = [d.isoformat() for d in DAYS]


@pytest.fixture
def rotating(make_local_workspace) -> Workspace:  # type: ignore[no-untyped-def]
    """Four days of users and events protected under version 1; a campaign started; users day 0 and 1 rotated."""
    workspace: Workspace = make_local_workspace()
    land_sample_lake(workspace.store, DAYS[0], len(DAYS), users=60, events=60)
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    workspace.enable("events.properties.email", "email", acknowledge_irreversible=True)
    backdate_policy(workspace)
    for dataset in ("users", "events"):
        for partition in PARTITIONS:
            workspace.protect(dataset, partition)
    workspace.start_rotation()
    for partition in PARTITIONS[:2]:
        workspace.rotate("users", partition)
    return workspace


def test_concurrent_scan_finds_what_the_sequential_scan_finds(rotating: Workspace) -> None:
    sequential = rotating.rotation_status(threads=1)
    concurrent = rotating.rotation_status(threads=8)

    assert concurrent.remaining == sequential.remaining
    assert sorted(concurrent.remaining) == sorted(
        [f"users/{p}" for p in PARTITIONS[2:]] + [f"events/{p}" for p in PARTITIONS]
    )
    assert concurrent.scanned == sequential.scanned == 8


def test_scan_with_known_clean_partitions_reads_only_the_others(rotating: Workspace) -> None:
    first = rotating.rotation_status()

    again = rotating.rotation_status(known_clean=first.clean)

    assert (first.read, again.read) == (8, 6)
    assert again.remaining == first.remaining


def test_known_clean_partition_whose_files_changed_is_read_again(rotating: Workspace) -> None:
    first = rotating.rotation_status()
    path = Path(rotating.store.full_path(snapshot_path("users", PARTITIONS[0])))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # rewritten, as far as a listing can tell

    again = rotating.rotation_status(known_clean=first.clean)

    assert again.read == 7
    assert again.fingerprints[f"users/{PARTITIONS[0]}"] != first.fingerprints[f"users/{PARTITIONS[0]}"]


def test_partition_rotated_since_the_last_scan_leaves_the_remaining(rotating: Workspace) -> None:
    first = rotating.rotation_status()
    rotating.rotate("events", PARTITIONS[0])

    again = rotating.rotation_status(known_clean=first.clean)

    assert f"events/{PARTITIONS[0]}" in first.remaining and f"events/{PARTITIONS[0]}" not in again.remaining


def test_scan_with_a_read_budget_reads_that_many_and_leaves_the_rest_unknown(rotating: Workspace) -> None:
    status = rotating.rotation_status(max_reads=3)

    assert status.read == 3 and len(status.unread) == 5
    assert not status.complete
    assert not set(status.clean) & set(status.unread)  # an unread partition is never taken for clean


def test_budgeted_scans_reach_every_partition_as_the_ones_found_are_rotated(rotating: Workspace) -> None:
    """What the driver does tick after tick: read at most 2, rotate what they found, carry the clean ones."""
    clean: dict[str, str] = {}
    for _ in range(10):
        status = rotating.rotation_status(known_clean=clean, max_reads=2)
        if status.complete:
            break
        for label in status.remaining:
            dataset, _, partition = label.partition("/")
            rotating.rotate(dataset, partition)
        clean = status.clean

    assert status.complete
    assert rotating.rotation_status().complete


def test_zero_scan_threads_is_a_named_config_error(rotating: Workspace) -> None:
    with pytest.raises(ConfigError, match="scan threads"):
        rotating.rotation_status(threads=0)
