"""A Delta Lake table (delta-rs) declared `kind: delta`, protected through its own commits.

A partitioned table written by delta-rs goes through enable, protect (several partitions, an append,
protect again), verify, rotate, re-index and purge-history; after each step delta-rs (and polars)
read it back with every untouched column equal to the read before protection, and the log's
statistics hold no protected plaintext. After purge-history, a scan of every byte under the table
(data files, `_delta_log` JSON and checkpoints) finds no protected plaintext.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from fieldcrypt import Workspace
from fieldcrypt.catalog import Catalog
from fieldcrypt.cli import run
from tests.catalogs import write_catalog
from tests.plaintext_scan import scan

TABLE = "warehouse/users"
DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
UNTOUCHED = ["user_id", "plan", "ingested_at", "date"]
DATASETS = {"users_delta": {"kind": "delta", "path": TABLE, "ingested_at": "ingested_at", "primary_key": "user_id"}}


def users(first: int, count: int, days: list[str]) -> pa.Table:
    ids = list(range(first, first + count))
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "email": [f"person{i}.secret@example.com" for i in ids],
            "plan": [("free", "pro", "team")[i % 3] for i in ids],
            "ingested_at": pa.array([datetime(2026, 11, 1, 12, tzinfo=UTC)] * len(ids), pa.timestamp("us", tz="UTC")),
            "date": [days[i % len(days)] for i in ids],
        }
    )


def emails(table: pa.Table) -> list[str]:
    return [str(value) for value in table.column("email").to_pylist()]


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
