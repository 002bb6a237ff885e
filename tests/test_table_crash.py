"""A protection run killed (SIGKILL) around its Delta table commit: the next run settles it without an operator.

A child process runs `protect` of one partition of a delta-rs table and kills itself with SIGKILL
at a chosen point (fault injection: a monkeypatch in the child, since a real kill cannot be aimed
at the window between two calls):

- `after-commit`: when the engine calls `Ledger.replace_files`, i.e. after the Delta commit landed
  and before the protection ledger recorded it. The next protect completes the ledger step from
  the commit's proof (audited `table_commit_recovered`), with no accept-rewrite; verify passes and
  delta-rs reads the table back. A new file whose bytes changed after the crash is refused by name.
- `before-commit`: when the engine calls the Delta commit, after every new `part-fc-*` file was
  published. The table is as it was; the next run's sweep deletes those files (no version references
  them, their run is gone), withdraws their staged entries and protects the partition.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from pyiceberg.catalog.sql import SqlCatalog

import fieldcrypt
from fieldcrypt import Workspace
from fieldcrypt.catalog import Catalog
from fieldcrypt.errors import IntegrityError
from fieldcrypt.lake.tables.base import NEW_FILE_PREFIX
from fieldcrypt.policy.ledger import Ledger, LedgerError
from tests.catalogs import write_catalog
from tests.delta_tables import DATASETS, DAYS, TABLE, UNTOUCHED, emails, users
from tests.iceberg_tables import BY_DAY, PARTITIONS
from tests.iceberg_tables import DAYS as ICE_DAYS
from tests.iceberg_tables import SCHEMA as ICE_SCHEMA
from tests.iceberg_tables import UNTOUCHED as ICE_UNTOUCHED
from tests.iceberg_tables import users as ice_users

REPO = Path(fieldcrypt.__file__).resolve().parents[1]
PARTITION = f"date={DAYS[0]}"
ICE_PARTITION = PARTITIONS[0]

CHILD = r"""
import os, signal, sys

import fieldcrypt.engine.table_commit
import fieldcrypt.lake.tables.delta
import fieldcrypt.lake.tables.iceberg
import fieldcrypt.policy.ledger
from fieldcrypt import Workspace
from fieldcrypt.catalog import Catalog
from fieldcrypt.errors import IntegrityError

catalog, dataset, partition, operation, stage = sys.argv[1:6]


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


# fault injection: SIGKILL at the chosen point of the protection run
if stage == "after-commit":
    fieldcrypt.policy.ledger.Ledger.replace_files = die
elif stage == "before-publish":
    fieldcrypt.engine.table_commit.TableCommit._publish = staticmethod(die)
elif stage == "before-commit":
    fieldcrypt.lake.tables.delta.DeltaTableFormat.commit = die
    fieldcrypt.lake.tables.iceberg.IcebergTableFormat.commit = die
workspace = Workspace(Catalog.load(catalog, environ={}).workspace_config(), actor="crash-test")
getattr(workspace, operation)(dataset, partition)
print(operation, "finished without being killed")
"""


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    write_deltalake(str(lake / TABLE), users(0, 300, DAYS), partition_by=["date"])
    return lake


@pytest.fixture
def catalog(lake: Path, tmp_path: Path, keystore_path: Path) -> Path:
    return write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", str(lake), {"provider": "local", "keystore": str(keystore_path)}, DATASETS
    )


@pytest.fixture
def workspace(catalog: Path) -> Workspace:
    workspace = Workspace(Catalog.load(catalog, environ={}).workspace_config(), actor="test")
    workspace.enable("users_delta.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_delta.email", acknowledge_irreversible=True)
    workspace.key_cache()  # binds the lake to its master key before the child runs
    return workspace


def run_in_child_killed_at(
    catalog: Path, operation: str, stage: str, dataset: str = "users_delta", partition: str = PARTITION
) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(catalog), dataset, partition, operation, stage],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


def read(lake: Path) -> pa.Table:
    return DeltaTable(str(lake / TABLE)).to_pyarrow_table().sort_by("user_id")


def published(lake: Path) -> list[Path]:
    return sorted((lake / TABLE / PARTITION).glob(f"{NEW_FILE_PREFIX}*.parquet"))


def live(lake: Path) -> set[str]:
    return {Path(p).name for p in DeltaTable(str(lake / TABLE)).file_uris()}


def audited(workspace: Workspace) -> list[str]:
    return [event["operation"] for event in workspace.audit.events()]


def test_a_run_killed_after_its_delta_commit_is_recorded_by_the_next_protect(
    workspace: Workspace, catalog: Path, lake: Path
) -> None:
    assert workspace.protect("users_delta", PARTITION).newly_encrypted == 100
    (old,) = published(lake)
    before = read(lake)
    workspace.start_rotation()
    run_in_child_killed_at(catalog, "rotate", "after-commit")
    (new,) = set(published(lake)) - {old}
    assert new.name in live(lake) and old.name not in live(lake)  # committed: the ledger still names the old file
    with pytest.raises(LedgerError, match="not in the lake"):  # the ledger's check alone refuses it
        workspace.ledger.check(
            workspace.layout("users_delta").spec,
            PARTITION,
            [f"{TABLE}/{PARTITION}/{new.name}"],
            workspace.policy().for_dataset("users_delta"),
        )

    assert workspace.protect("users_delta", PARTITION).newly_encrypted == 0  # no accept-rewrite needed
    assert "table_commit_recovered" in audited(workspace)
    shard = workspace.ledger.load("users_delta", PARTITION)
    assert shard is not None and set(shard.files) == {f"{TABLE}/{PARTITION}/{new.name}"} and not shard.staged
    assert workspace.verify("users_delta", PARTITION)["users_delta.email"] == 100
    assert workspace.rotate("users_delta", PARTITION).rewrapped == 0  # the dead run's commit did rewrap it
    for partition in workspace.partitions("users_delta")[1:]:
        workspace.rotate("users_delta", partition)
    workspace.complete_rotation()
    after = read(lake)
    assert after.select(UNTOUCHED).equals(before.select(UNTOUCHED))
    assert emails(after) == emails(before)  # the masked values: unchanged by a rotation
    status = workspace.status("users_delta", PARTITION)
    assert status.temp_files_left == 0


def test_a_new_file_tampered_with_after_the_crash_is_refused_by_name_and_not_recorded(
    workspace: Workspace, catalog: Path, lake: Path
) -> None:
    assert workspace.protect("users_delta", PARTITION).newly_encrypted == 100
    (old,) = published(lake)
    workspace.start_rotation()
    run_in_child_killed_at(catalog, "rotate", "after-commit")
    (new,) = set(published(lake)) - {old}
    data = bytearray(new.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of a column chunk: the size stays, the file identity does not
    new.write_bytes(bytes(data))
    with pytest.raises(LedgerError, match=new.name) as raised:
        workspace.protect("users_delta", PARTITION)
    assert "staged protection-ledger entry" in str(raised.value)
    assert "table_commit_recovered" not in audited(workspace)
    with pytest.raises(IntegrityError, match=new.name):  # verify names the tampered cell's row
        workspace.verify("users_delta", PARTITION)


def test_a_run_killed_before_its_delta_commit_leaves_files_the_next_run_deletes(
    workspace: Workspace, catalog: Path, lake: Path
) -> None:
    before = read(lake)
    run_in_child_killed_at(catalog, "protect", "before-commit")
    (orphan,) = published(lake)
    assert orphan.name not in live(lake)  # never committed: the table is as it was
    assert read(lake).select(before.column_names).equals(before)  # only the __fc_* columns added, all null
    shard = workspace.ledger.load("users_delta", PARTITION)
    assert shard is not None and f"{TABLE}/{PARTITION}/{orphan.name}" in shard.staged

    status = workspace.status("users_delta", PARTITION)  # its sweep deletes the dead run's file
    assert status.temp_files_left == 0
    assert not orphan.exists()
    shard = workspace.ledger.load("users_delta", PARTITION)
    assert shard is not None and not shard.staged
    assert "table_file_swept" in audited(workspace)

    assert workspace.protect("users_delta", PARTITION).newly_encrypted == 100
    assert workspace.verify("users_delta", PARTITION)["users_delta.email"] == 100
    assert read(lake).select(UNTOUCHED).equals(before.select(UNTOUCHED))


def test_a_published_file_held_by_a_live_run_is_left_and_counted(workspace: Workspace, lake: Path) -> None:
    """The run that published a file holds its flock until the commit: a sweep meanwhile leaves it."""
    table = workspace.layout("users_delta").table(workspace.store)
    assert table is not None
    seen: list[int] = []
    real_commit = type(table).commit

    def commit(self: object, *args: object, **kwargs: object) -> int:
        # fault injection: a second workspace's status runs between the publish and the commit
        seen.append(Workspace(workspace.config, actor="other").status("users_delta", PARTITION).temp_files_left)
        assert published(lake)
        return real_commit(self, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(table), "commit", commit)
        assert workspace.protect("users_delta", PARTITION).newly_encrypted == 100
    assert seen == [1]
    assert workspace.verify("users_delta", PARTITION)["users_delta.email"] == 100


# -- Iceberg (pyiceberg, SQL catalog on SQLite) --------------------------------------------------------------


@pytest.fixture
def iceberg(tmp_path: Path, keystore_path: Path) -> tuple[Workspace, Path, Path]:
    """An Iceberg table of 300 users over three days, users_ice.email enabled: (workspace, catalog, table root)."""
    lake = tmp_path / "lake"
    (lake / "warehouse").mkdir(parents=True)
    properties = {"type": "sql", "uri": f"sqlite:///{tmp_path}/iceberg.db", "warehouse": f"file://{lake}/warehouse"}
    sql = SqlCatalog("default", **properties)
    sql.create_namespace("shop")
    sql.create_table("shop.users", schema=ICE_SCHEMA, partition_spec=BY_DAY).append(ice_users(0, 300, ICE_DAYS))
    datasets = {
        "users_ice": {
            "kind": "iceberg",
            "table": "shop.users",
            "path": "warehouse/shop/users",
            "iceberg_catalog": properties,
            "ingested_at": "ingested_at",
            "primary_key": "user_id",
        }
    }
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", str(lake), {"provider": "local", "keystore": str(keystore_path)}, datasets
    )
    workspace = Workspace(Catalog.load(catalog, environ={}).workspace_config(), actor="test")
    workspace.enable("users_ice.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_ice.email", acknowledge_irreversible=True)
    workspace.key_cache()
    return workspace, catalog, lake / "warehouse/shop/users"


def ice_published(root: Path) -> set[Path]:
    return set(root.rglob(f"{NEW_FILE_PREFIX}*.parquet"))


def ice_read(workspace: Workspace) -> pa.Table:
    """The table as pyiceberg itself reads it."""
    source = workspace.layout("users_ice").source
    assert source is not None
    properties = {k: v for k, v in source.catalog.items() if k != "name"}
    return SqlCatalog("default", **properties).load_table("shop.users").scan().to_arrow().sort_by("user_id")


def test_an_iceberg_run_killed_after_its_commit_is_recorded_by_the_next_protect(
    iceberg: tuple[Workspace, Path, Path],
) -> None:
    workspace, catalog, root = iceberg
    assert workspace.protect("users_ice", ICE_PARTITION).newly_encrypted == 100
    old = ice_published(root)
    before = ice_read(workspace)
    workspace.start_rotation()
    run_in_child_killed_at(catalog, "rotate", "after-commit", "users_ice", ICE_PARTITION)
    (new,) = ice_published(root) - old
    live = workspace.files("users_ice", ICE_PARTITION)
    assert [Path(rel).name for rel in live] == [new.name]

    assert workspace.protect("users_ice", ICE_PARTITION).newly_encrypted == 0  # no accept-rewrite needed
    assert "table_commit_recovered" in audited(workspace)
    assert workspace.verify("users_ice", ICE_PARTITION)["users_ice.email"] == 100
    after = ice_read(workspace)
    assert after.select(ICE_UNTOUCHED).equals(before.select(ICE_UNTOUCHED))


def test_an_iceberg_run_killed_before_its_commit_leaves_files_the_next_run_deletes(
    iceberg: tuple[Workspace, Path, Path],
) -> None:
    workspace, catalog, root = iceberg
    run_in_child_killed_at(catalog, "protect", "before-commit", "users_ice", ICE_PARTITION)
    (orphan,) = ice_published(root)
    assert workspace.status("users_ice", ICE_PARTITION).temp_files_left == 0
    assert not orphan.exists()
    assert "table_file_swept" in audited(workspace)
    assert workspace.protect("users_ice", ICE_PARTITION).newly_encrypted == 100
    assert workspace.verify("users_ice", ICE_PARTITION)["users_ice.email"] == 100


def test_a_live_run_between_its_commit_and_its_ledger_step_is_left_to_record_it(workspace: Workspace) -> None:
    """Another run reading the partition meanwhile does not 'recover' a commit whose run is alive."""
    real = Ledger.replace_files
    seen: list[int] = []

    def replace_files(self: Ledger, *args: Any, **kwargs: Any) -> None:
        # fault injection: a second workspace's status runs after the commit, before this run's ledger step
        seen.append(Workspace(workspace.config, actor="other").status("users_delta", PARTITION).temp_files_left)
        real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Ledger, "replace_files", replace_files)
        assert workspace.protect("users_delta", PARTITION).newly_encrypted == 100
    assert seen == [0]  # committed: live in the table, nothing to sweep
    assert "table_commit_recovered" not in audited(workspace)
    assert workspace.verify("users_delta", PARTITION)["users_delta.email"] == 100


def test_a_run_killed_between_staging_and_publishing_leaves_an_entry_the_next_run_withdraws(
    workspace: Workspace, catalog: Path, lake: Path
) -> None:
    run_in_child_killed_at(catalog, "protect", "before-publish")
    assert not published(lake)
    shard = workspace.ledger.load("users_delta", PARTITION)
    assert shard is not None and len(shard.staged) == 1  # the entry of a file that was never written
    workspace.status("users_delta", PARTITION)
    shard = workspace.ledger.load("users_delta", PARTITION)
    assert shard is not None and not shard.staged
    assert workspace.protect("users_delta", PARTITION).newly_encrypted == 100
