"""The protection ledger: what fieldcrypt wrote is recorded outside the file, so removing it is named.

Each test changes a protected lake the way an outside writer, a buggy job or a restore
could (plain pyarrow and file operations), then reads it through the workspace.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path, users_table, write_snapshot
from fieldcrypt import IntegrityError, Workspace
from fieldcrypt.policy.ledger import shard_path
from fieldcrypt.policy.select import FILE_METADATA_KEY

DAY = date(2026, 11, 1)
PARTITION = DAY.isoformat()
FILE = snapshot_path("users", PARTITION)


@pytest.fixture
def lake(local_workspace: Workspace, enable_at: Callable[..., Any]) -> Workspace:
    enable_at(local_workspace, "users.email", "email")
    enable_at(local_workspace, "users.phone", "last4")
    local_workspace.protect("users", PARTITION)
    return local_workspace


def path_of(workspace: Workspace, rel: str = FILE) -> Path:
    return Path(workspace.store.full_path(rel))


def drop_attribute(workspace: Workspace, attribute: str, stem: str) -> int:
    """Rewrite the file without the attribute's `fieldcrypt` entry and its `__fc` columns; the cells removed."""
    path = path_of(workspace)
    table = pq.read_table(path)
    removed = table.num_rows - table.column(f"{stem}__fc_ct").null_count
    table = table.drop_columns([c for c in table.column_names if c.startswith(f"{stem}__fc_")])
    metadata = dict(table.schema.metadata)
    described = json.loads(metadata[FILE_METADATA_KEY])
    del described["attributes"][attribute]
    metadata[FILE_METADATA_KEY] = json.dumps(described).encode()
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return removed


def test_attribute_dropped_with_its_columns_is_refused_by_verify_naming_the_file(lake: Workspace) -> None:
    removed = drop_attribute(lake, "users.email", "email")
    with pytest.raises(IntegrityError, match=f"{FILE} does not hold what fieldcrypt wrote") as refused:
        lake.verify("users", PARTITION)
    assert f"users.email had {removed} protected cells; the file has none" in str(refused.value)


def test_attribute_dropped_with_its_columns_is_refused_by_reveal(lake: Workspace) -> None:
    drop_attribute(lake, "users.email", "email")
    with pytest.raises(IntegrityError, match=FILE):
        list(lake.reveal("users", PARTITION, ["phone"], reason="ticket-1"))


def test_attribute_dropped_with_its_columns_is_refused_by_dispatch(lake: Workspace) -> None:
    drop_attribute(lake, "users.email", "email")
    with pytest.raises(IntegrityError, match=FILE):
        list(lake.dispatch("users", list(range(300)), ["phone"], reason="campaign-1", partition=PARTITION))


def test_file_rewritten_by_an_outside_writer_with_the_same_rows_is_refused_naming_it(lake: Workspace) -> None:
    path = path_of(lake)
    pq.write_table(pq.read_table(path), path, compression="snappy")
    with pytest.raises(IntegrityError, match=f"{FILE} is not the file fieldcrypt wrote"):
        lake.verify("users", PARTITION)
    with pytest.raises(IntegrityError, match=f"{FILE} is not the file fieldcrypt wrote"):
        lake.status("users", PARTITION)


def test_protection_refuses_a_file_whose_protected_cells_were_removed_and_leaves_it_as_it_is(lake: Workspace) -> None:
    drop_attribute(lake, "users.email", "email")  # its masks now look like values to encrypt
    before = path_of(lake).read_bytes()
    with pytest.raises(IntegrityError, match=f"{FILE} does not hold what fieldcrypt wrote"):
        lake.protect("users", PARTITION)
    assert path_of(lake).read_bytes() == before


def test_deleted_ledgered_file_is_refused_naming_it(lake: Workspace) -> None:
    path_of(lake).unlink()
    with pytest.raises(IntegrityError, match=f"{FILE} is in the protection ledger .* but not in the lake"):
        lake.status("users", PARTITION)
    with pytest.raises(IntegrityError, match=f"{FILE} is in the protection ledger"):
        lake.verify("users", PARTITION)


def test_ledgered_file_moved_within_its_partition_is_refused_naming_it(lake: Workspace) -> None:
    path = path_of(lake)
    path.rename(path.with_name("part-9.parquet"))
    with pytest.raises(IntegrityError, match=f"{FILE} is in the protection ledger .* deleted or moved"):
        lake.verify("users", PARTITION)


def test_protected_file_copied_into_another_partition_is_refused_naming_it(lake: Workspace) -> None:
    other = snapshot_path("users", (DAY + timedelta(days=1)).isoformat())
    path_of(lake, other).parent.mkdir(parents=True)
    shutil.copy(path_of(lake), path_of(lake, other))
    with pytest.raises(IntegrityError, match=f"{other} was written by fieldcrypt .* but is not in the protection"):
        lake.status("users", (DAY + timedelta(days=1)).isoformat())


def test_newly_landed_file_is_pending_not_an_error(lake: Workspace) -> None:
    later = DAY + timedelta(days=1)
    write_snapshot(lake.store, "users", later, users_table(later, 50))
    report = lake.status("users", later.isoformat())
    assert report.attributes["users.email"].pending > 0
    assert not lake.store.exists(shard_path("users", later.isoformat()))


def test_ledger_shard_edited_by_hand_is_refused(lake: Workspace) -> None:
    shard = path_of(lake, shard_path("users", PARTITION))
    doc = json.loads(shard.read_text())
    doc["files"][FILE]["attributes"]["users.email"]["cells"] += 1
    shard.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="is not a valid protection-ledger shard, or failed authentication"):
        lake.verify("users", PARTITION)


def test_rotation_updates_the_ledger_entry_with_the_rewrapped_keys(lake: Workspace) -> None:
    before = json.loads(path_of(lake, shard_path("users", PARTITION)).read_text())["files"][FILE]
    lake.start_rotation()
    assert lake.rotate("users", PARTITION).rewritten
    after = json.loads(path_of(lake, shard_path("users", PARTITION)).read_text())["files"][FILE]
    assert after["chunks"] != before["chunks"]
    assert lake.verify("users", PARTITION)["users.email"] > 0


def test_restored_older_copy_of_a_rotated_file_is_refused(lake: Workspace) -> None:
    path = path_of(lake)
    old = path.read_bytes()
    lake.start_rotation()
    lake.rotate("users", PARTITION)
    path.write_bytes(old)
    with pytest.raises(IntegrityError, match=f"{FILE} does not hold what fieldcrypt wrote .* users.email cell was"):
        lake.status("users", PARTITION)


def test_ledger_entry_written_with_each_file_of_a_partition_on_s3(
    moto: str, s3_bucket: str, make_kms_key: Callable[..., str]
) -> None:
    """Two files of one partition protected at once: both compare-and-swap updates of the shard land."""
    from fieldcrypt import KeyConfig, WorkspaceConfig
    from tests.catalogs import TEST_DATASETS
    from tests.conftest import WORKSPACE

    day = date(2099, 1, 1)
    key = KeyConfig(provider="aws-kms", kms_key=make_kms_key(), kms_region="us-east-1", kms_endpoint_url=moto)
    config = WorkspaceConfig(
        WORKSPACE,
        f"s3://{s3_bucket}/lake",
        key,
        s3_endpoint_url=moto,
        s3_region="us-east-1",
        datasets=TEST_DATASETS,
        file_workers=2,
    )
    workspace = Workspace(config, actor="run-7")
    write_snapshot(workspace.store, "users", day, users_table(day, 40))
    second = snapshot_path("users", day).replace("part-0", "part-1")
    with workspace.store.open_output(second) as sink:
        pq.write_table(users_table(day, 40, seed=1).set_column(0, "user_id", pa.array(range(100, 140))), sink)
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    workspace.protect("users", day.isoformat())
    shard = json.loads(workspace.store.read_bytes(shard_path("users", day.isoformat())))
    assert sorted(shard["files"]) == [snapshot_path("users", day), second]
    assert shard["staged"] == {}
    cells = sum(entry["attributes"]["users.email"]["cells"] for entry in shard["files"].values())
    assert workspace.verify("users", day.isoformat())["users.email"] == cells > 0
    workspace.store.delete(second)
    with pytest.raises(IntegrityError, match=f"{second} is in the protection ledger"):
        workspace.status("users", day.isoformat())
