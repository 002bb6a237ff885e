"""A Delta Lake table (delta-rs) declared `kind: delta`, protected through its own commits.

A partitioned table written by delta-rs goes through enable, protect (several partitions, an append,
protect again), verify, rotate, re-index and purge-history; after each step delta-rs (and polars)
read it back with every untouched column equal to the read before protection, and the log's
statistics hold no protected plaintext. After purge-history, a scan of every byte under the table
(data files, `_delta_log` JSON and checkpoints) finds no protected plaintext.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from fieldcrypt import InputError, Workspace
from fieldcrypt.catalog import Catalog
from fieldcrypt.cli import run
from fieldcrypt.errors import ConcurrentUpdateError
from fieldcrypt.lake.tables.base import TableSource
from fieldcrypt.lake.tables.delta import DeltaTableFormat
from tests.catalogs import catalog_error, write_catalog
from tests.delta_tables import DATASETS, DAYS, TABLE, UNTOUCHED, between_plan_and_commit, emails, users
from tests.plaintext_scan import scan


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    write_deltalake(str(lake / TABLE), users(0, 300, DAYS), partition_by=["date"])
    return lake


@pytest.fixture
def workspace(lake: Path, tmp_path: Path, keystore_path: Path) -> Workspace:
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", str(lake), {"provider": "local", "keystore": str(keystore_path)}, DATASETS
    )
    return Workspace(Catalog.load(catalog, environ={}).workspace_config(), actor="test")


def read(lake: Path) -> pa.Table:
    return DeltaTable(str(lake / TABLE)).to_pyarrow_table().sort_by("user_id")


def log_stats(lake: Path) -> Iterator[str]:
    """Every `stats` string of every add action in the table's JSON log from the commit that set its statistics
    columns on (the commits before it are the history that still holds plaintext until purged)."""
    since = False
    for path in sorted((lake / TABLE / "_delta_log").glob("*.json")):
        for line in path.read_text().splitlines():
            action = json.loads(line)
            since = since or "delta.dataSkippingStatsColumns" in action.get("metaData", {}).get("configuration", {})
            if since and "add" in action and action["add"].get("stats"):
                yield action["add"]["stats"]


def assert_reads_back(lake: Path, before: pa.Table) -> pa.Table:
    table = read(lake)
    assert table.num_rows == before.num_rows
    assert table.select(UNTOUCHED).equals(before.select(UNTOUCHED))
    polars = pl.read_delta(str(lake / TABLE)).sort("user_id")
    assert polars.select(UNTOUCHED).to_arrow().cast(before.select(UNTOUCHED).schema).equals(before.select(UNTOUCHED))
    return table


def protect_all(workspace: Workspace) -> int:
    return sum(workspace.protect("users_delta", p).newly_encrypted for p in workspace.partitions("users_delta"))


def test_a_delta_table_is_protected_through_its_own_commits_and_purged(
    workspace: Workspace, lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plaintexts = emails(users(0, 340, DAYS))
    before = read(lake)
    assert workspace.partitions("users_delta") == [f"date={day}" for day in DAYS]

    workspace.enable("users_delta.email", "email", acknowledge_irreversible=True, blind_index=True)
    workspace.encrypt_history("users_delta.email", acknowledge_irreversible=True)
    assert protect_all(workspace) == 300
    protected = assert_reads_back(lake, before)
    assert not set(emails(protected)) & set(plaintexts)
    assert "email__fc_ct" in protected.column_names
    history = DeltaTable(str(lake / TABLE)).history()
    ours = [entry["fieldcrypt"] for entry in history if "fieldcrypt" in entry]
    assert {entry["fieldcrypt.operation"] for entry in ours} == {"encrypt"}
    assert len(ours) == len(DAYS)  # one transaction per partition

    # An append after protection (delta-rs, as an upstream writer would), then protect again.
    write_deltalake(str(lake / TABLE), users(300, 40, DAYS[:2]), mode="append", schema_mode="merge")
    before = read(lake)
    assert protect_all(workspace) == 40
    assert_reads_back(lake, before)
    assert workspace.verify("users_delta", "date=2026-11-01")["users_delta.email"] > 0
    assert sum(sum(workspace.verify("users_delta", p).values()) for p in workspace.partitions("users_delta")) == 340

    status = workspace.table_history("users_delta")
    assert status.holds_plaintext and status.attributes == ("users_delta.email",)

    # The statistics written since the table's stats columns were set (fieldcrypt's and the append's) hold no
    # protected plaintext, nor anything of a `__fc_*` column.
    written = list(log_stats(lake))
    assert len(written) == len(DAYS) + 2 + 2  # the protected files, the append's two, their protected successors
    assert not any(p in stats for stats in written for p in plaintexts)
    assert not any("__fc_" in stats or '"email"' in stats for stats in written)

    workspace.start_reindex("users_delta.email")
    for partition in workspace.partitions("users_delta"):
        assert workspace.reindex("users_delta", partition).reindexed["users_delta.email"] > 0
    assert workspace.complete_reindex("users_delta.email") == len(DAYS)
    assert_reads_back(lake, before)

    workspace.start_rotation()
    for partition in workspace.partitions("users_delta"):
        assert workspace.rotate("users_delta", partition).rewrapped > 0
    workspace.complete_rotation()
    assert_reads_back(lake, before)

    cli = ["--catalog", str(tmp_path / "fieldcrypt.yaml")]
    assert run([*cli, "status", "users_delta"]) == 0
    said = capsys.readouterr().out
    assert "older versions of the delta table still hold plaintext of users_delta.email" in said
    assert "fully protected, no plaintext left" not in said

    assert scan(lake / TABLE, plaintexts)  # the old versions (data files and log statistics) still hold plaintext
    assert run([*cli, "purge-history", "users_delta", "--older-than", "0h"]) == 0
    assert "data files and" in capsys.readouterr().out
    assert scan(lake / TABLE, plaintexts) == []
    after = assert_reads_back(lake, before)
    assert not set(emails(after)) & set(plaintexts)
    assert not workspace.table_history("users_delta").holds_plaintext
    assert run([*cli, "status", "users_delta"]) == 0
    assert "users_delta.email: fully protected, no plaintext left" in capsys.readouterr().out
    audited = {event["operation"] for event in workspace.audit.events()}
    assert {"purge_history_intent", "history_purged", "table_commit"} <= audited
    assert sum(sum(workspace.verify("users_delta", p).values()) for p in workspace.partitions("users_delta")) == 340


def test_an_append_between_plan_and_commit_is_kept_by_the_retried_commit(
    workspace: Workspace, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace.enable("users_delta.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_delta.email", acknowledge_irreversible=True)
    appended = users(1000, 12, DAYS[:1])
    between_plan_and_commit(
        monkeypatch, lambda: write_deltalake(str(lake / TABLE), appended, mode="append", schema_mode="merge")
    )

    report = workspace.protect("users_delta", "date=2026-11-01")

    assert report.newly_encrypted == 100  # the planned files; the appended rows are the next run's
    table = read(lake)
    assert table.num_rows == 312
    assert set(appended.column("user_id").to_pylist()) <= set(table.column("user_id").to_pylist())
    monkeypatch.undo()
    assert workspace.protect("users_delta", "date=2026-11-01").newly_encrypted == 12
    assert read(lake).num_rows == 312
    assert sum(workspace.verify("users_delta", "date=2026-11-01").values()) == 112


def test_a_file_removed_by_another_writer_before_the_commit_is_refused_by_name_and_nothing_committed(
    workspace: Workspace, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace.enable("users_delta.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_delta.email", acknowledge_irreversible=True)
    between_plan_and_commit(monkeypatch, lambda: DeltaTable(str(lake / TABLE)).delete("user_id = 3"))

    with pytest.raises(ConcurrentUpdateError, match="was removed from the Delta table by another writer"):
        workspace.protect("users_delta", "date=2026-11-01")

    table = DeltaTable(str(lake / TABLE))
    assert not [entry for entry in table.history() if "fieldcrypt" in entry]  # no data commit of fieldcrypt's
    assert table.to_pyarrow_table().num_rows == 299
    partition = lake / TABLE / "date=2026-11-01"
    assert not list(partition.glob("part-fc-*")), "the new files of a refused commit are deleted"
    assert not [p for p in partition.iterdir() if p.name.startswith(".")], "no temporary file is left"
    monkeypatch.undo()
    assert workspace.protect("users_delta", "date=2026-11-01").newly_encrypted == 99


def test_a_commit_that_lost_the_race_to_another_partitions_commit_is_retried_on_the_new_head(
    workspace: Workspace, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """delta-rs takes fieldcrypt's transaction (no predicate) to have read the whole table: another writer's
    commit removing a file of ANOTHER partition, landing between fieldcrypt's reload and its commit, fails it.
    The other writer is a real delta-rs delete, run at that moment (the one hook: `_actions`)."""
    workspace.enable("users_delta.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_delta.email", acknowledge_irreversible=True)
    original = DeltaTableFormat._actions
    raced: list[int] = []

    def actions(self: DeltaTableFormat, *args: Any) -> Any:
        planned = original(self, *args)
        if not raced:  # user 4 lives in date=2026-11-02: its file there is removed and rewritten
            raced.append(DeltaTable(str(lake / TABLE)).delete("user_id = 4")["num_deleted_rows"])
        return planned

    monkeypatch.setattr(DeltaTableFormat, "_actions", actions)

    report = workspace.protect("users_delta", "date=2026-11-01")

    assert raced == [1] and report.newly_encrypted == 100
    table = read(lake)
    assert table.num_rows == 299 and 4 not in table.column("user_id").to_pylist()
    ours = [entry["fieldcrypt"] for entry in DeltaTable(str(lake / TABLE)).history() if "fieldcrypt" in entry]
    assert [entry["fieldcrypt.partition"] for entry in ours] == ["date=2026-11-01"]
    assert sum(workspace.verify("users_delta", "date=2026-11-01").values()) == 100


@pytest.mark.parametrize(
    ("configuration", "refusal"),
    [
        ({"delta.enableDeletionVectors": "true"}, "has deletion vectors enabled"),
        ({"delta.columnMapping.mode": "name"}, r"uses column mapping \(delta.columnMapping.mode\)"),
        ({"delta.enableChangeDataFeed": "true"}, "has change data feed enabled"),
        ({"delta.appendOnly": "true"}, r"is append-only \(delta.appendOnly\)"),
    ],
)
def test_a_table_fieldcrypt_cannot_write_is_refused_by_name_and_left_as_it_was(
    tmp_path: Path, keystore_path: Path, configuration: dict[str, str], refusal: str, enable_at: Callable[..., Any]
) -> None:
    lake = tmp_path / "lake"
    write_deltalake(str(lake / TABLE), users(0, 30, DAYS), partition_by=["date"], configuration=configuration)
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", str(lake), {"provider": "local", "keystore": str(keystore_path)}, DATASETS
    )
    workspace = Workspace(Catalog.load(catalog, environ={}).workspace_config(), actor="test")
    before = {p: p.read_bytes() for p in (lake / TABLE).rglob("*") if p.is_file()}
    refused = rf"users_delta \(Delta table .*warehouse/users\) {refusal}.*; fieldcrypt read and wrote nothing of it"

    with pytest.raises(InputError, match=refused):
        workspace.enable("users_delta.email", "email", acknowledge_irreversible=True)
    enable_at(workspace, "users_delta.email", "email")
    for command in ("protect", "status", "rotate"):
        with pytest.raises(InputError, match=refused):
            getattr(workspace, command)("users_delta", "date=2026-11-01")

    assert {p: p.read_bytes() for p in (lake / TABLE).rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ({"kind": "delta", "path": "t", "partitioning": "daily"}, "come from its own partition columns"),
        ({"kind": "delta", "path": "file:///elsewhere/t"}, "is not inside the lake"),
        ({"kind": "delta", "table": "db.t"}, "only for kind: iceberg"),
        ({"kind": "iceberg", "iceberg_catalog": {"type": "sql", "uri": "sqlite:///c.db"}}, "needs table: <names"),
        ({"kind": "iceberg", "table": "db.t"}, "needs iceberg_catalog"),
        ({"kind": "iceberg", "table": "db.t", "iceberg_catalog": {"type": "sql"}}, "a sql catalog needs a uri"),
        (
            {"kind": "iceberg", "table": "db.t", "iceberg_catalog": {"type": "glue", "s3.secret-access-key": "x"}},
            "credentials are read from the environment",
        ),
        ({"kind": "lance", "path": "t"}, "kind"),
    ],
)
def test_the_catalog_refuses_a_table_declaration_by_name(
    tmp_path: Path, keystore_path: Path, declaration: dict[str, Any], message: str
) -> None:
    assert message in catalog_error(tmp_path, keystore_path, declaration)


def test_the_catalog_declares_delta_by_uri_and_iceberg_with_paths_resolved_against_the_catalog_file(
    tmp_path: Path, keystore_path: Path
) -> None:
    lake = tmp_path / "lake"
    datasets = {
        "users_delta": {"kind": "delta", "path": f"file://{lake / TABLE}", "ingested_at": "ingested_at"},
        "events": {
            "kind": "iceberg",
            "table": "analytics.events",
            "iceberg_catalog": {"type": "sql", "uri": "sqlite:///iceberg/catalog.db", "warehouse": "lake"},
            "ingested_at": "ingested_at",
        },
    }
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", str(lake), {"provider": "local", "keystore": str(keystore_path)}, datasets
    )
    config = Catalog.load(catalog, environ={}).workspace_config()
    delta, iceberg = config.datasets["users_delta"], config.datasets["events"]
    assert (delta.kind, delta.path, delta.source) == ("delta", TABLE, TableSource("delta", location=TABLE))
    assert iceberg.kind == "iceberg" and iceberg.source is not None
    assert iceberg.source.identifier == "analytics.events"
    assert dict(iceberg.source.catalog) == {
        "type": "sql",
        "uri": f"sqlite:///{tmp_path / 'iceberg' / 'catalog.db'}",
        "warehouse": f"file://{lake}",
    }


def test_an_unpartitioned_delta_table_is_one_partition(tmp_path: Path, keystore_path: Path) -> None:
    lake = tmp_path / "lake"
    write_deltalake(str(lake / TABLE), users(0, 50, DAYS))
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", str(lake), {"provider": "local", "keystore": str(keystore_path)}, DATASETS
    )
    workspace = Workspace(Catalog.load(catalog, environ={}).workspace_config(), actor="test")
    before = read(lake)
    assert workspace.partitions("users_delta") == [None]
    workspace.enable("users_delta.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_delta.email", acknowledge_irreversible=True)

    assert workspace.protect("users_delta", None).newly_encrypted == 50

    after = assert_reads_back(lake, before)
    assert not set(emails(after)) & set(emails(before))
    assert workspace.verify("users_delta", None) == {"users_delta.email": 50}
    with pytest.raises(InputError, match="is not a delta table partition"):
        workspace.protect("users_delta", "2026-11-01")


def test_a_vacuum_that_deleted_the_new_files_before_the_commit_is_refused_by_name(
    workspace: Workspace, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace.enable("users_delta.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_delta.email", acknowledge_irreversible=True)
    before = read(lake)
    between_plan_and_commit(
        monkeypatch,
        lambda: DeltaTable(str(lake / TABLE)).vacuum(
            retention_hours=0, dry_run=False, enforce_retention_duration=False, full=True
        ),
    )

    with pytest.raises(ConcurrentUpdateError, match="written and verified by this run, is gone before its commit"):
        workspace.protect("users_delta", "date=2026-11-01")

    assert read(lake).select(before.column_names).equals(before)  # only the new (null) columns were added
    monkeypatch.undo()
    assert workspace.protect("users_delta", "date=2026-11-01").newly_encrypted == 100
