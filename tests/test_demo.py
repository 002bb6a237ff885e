"""The demo's snapshots (demo/run.py, demo/sample_data.py): ingestion times within their own day, never after now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from demo.run import land_today
from demo.sample_data import land_sample_lake, snapshot_path, users_table
from fieldcrypt.lake.store import LakeStore
from tests.dagster_support import node


def ingested(lake: Path, dataset: str, day: str) -> list[datetime]:
    return pq.read_table(lake / snapshot_path(dataset, day)).column("ingested_at").to_pylist()


def test_each_history_snapshot_holds_rows_ingested_within_its_own_day(tmp_path: Path) -> None:
    first = datetime.now(UTC).date() - timedelta(days=3)
    land_sample_lake(LakeStore.from_uri(str(tmp_path)), first, 3, users=50, events=50)
    for offset in range(3):
        day = first + timedelta(days=offset)
        for dataset in ("users", "events"):
            assert {t.date() for t in ingested(tmp_path, dataset, day.isoformat())} == {day}


def test_todays_snapshot_is_never_ingested_after_it_lands(tmp_path: Path) -> None:
    enabled_at = datetime.now(UTC) - timedelta(microseconds=500)
    landed = land_today(LakeStore.from_uri(str(tmp_path)), enabled_at, 40, 40)
    times = ingested(tmp_path, "users", enabled_at.date().isoformat())
    assert max(times) <= landed <= datetime.now(UTC)


def test_todays_snapshot_has_rows_on_both_sides_of_the_enablement(tmp_path: Path) -> None:
    enabled_at = datetime.now(UTC) - timedelta(microseconds=500)
    land_today(LakeStore.from_uri(str(tmp_path)), enabled_at, 40, 40)
    table = pq.read_table(tmp_path / snapshot_path("users", enabled_at.date().isoformat()))
    after = pc.sum(pc.greater_equal(table.column("ingested_at"), enabled_at)).as_py()
    assert after == 20


def test_ingestion_span_outside_the_snapshots_day_is_refused() -> None:
    day = datetime(2026, 11, 27, tzinfo=UTC)
    with pytest.raises(ValueError, match="not within the snapshot's day"):
        users_table(day.date(), 10, ingested=[(day + timedelta(days=4), day + timedelta(days=5))])


def test_the_campaign_asset_sends_the_segment_and_keeps_only_counts(tmp_path: Path) -> None:
    """campaign_dispatch through a real Dagster run: counts in metadata, plaintext nowhere, the read audited."""
    import dagster as dg
    from dagster_support import enable, local_fieldcrypt, make_keystore

    from assets.scope import WorkspaceScope
    from demo.campaign import campaign_dispatch_asset
    from tests.policy_support import backdate_policy

    lake = tmp_path / "lake"
    fieldcrypt = local_fieldcrypt(lake, make_keystore(tmp_path))
    day = datetime(2026, 11, 1, tzinfo=UTC).date()
    land_sample_lake(LakeStore.from_uri(str(lake)), day, 1, users=300, events=10)
    secrets = {v for v in pq.read_table(lake / snapshot_path("users", day)).column("email").to_pylist() if v}
    enable(fieldcrypt, ("users.email", "email"), ("users.phone", "last4"))
    workspace = fieldcrypt.workspace("test")
    backdate_policy(workspace)
    workspace.protect("users", day.isoformat())

    partitions = dg.DailyPartitionsDefinition(start_date="2026-11-01", end_date="2026-11-02")
    result = dg.materialize(
        [campaign_dispatch_asset(WorkspaceScope.of(fieldcrypt.config()), partitions)],
        partition_key=day.isoformat(),
        resources=fieldcrypt.as_resources(),
    )

    (materialization,) = result.asset_materializations_for_node(node("campaign_dispatch"))
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["rows_sent"] == 100 and metadata["segment_keys"] == 1667  # ids 0, 3, ... present in 300 users
    assert metadata["cells_decrypted"] > 0
    assert not secrets & {str(v) for v in metadata.values()}
    dispatches = [e for e in workspace.audit.events() if e["operation"] == "dispatch"]
    assert dispatches and all(e["reason"].startswith("campaign run ") for e in dispatches)


def test_todays_orders_are_appended_to_the_delta_table_as_its_next_version(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    from demo.run import ORDER_DAYS
    from demo.sample_data import ORDERS_TABLE, land_orders

    store = LakeStore.from_uri(str(tmp_path))
    enabled_at = datetime.now(UTC) - timedelta(microseconds=500)
    today = enabled_at.date()
    land_orders(store, today - timedelta(days=ORDER_DAYS), ORDER_DAYS, rows=30)
    land_today(store, enabled_at, 10, 10, orders=40)

    table = DeltaTable(str(tmp_path / ORDERS_TABLE))
    assert table.version() == 1 and table.metadata().partition_columns == ["date"]
    read = table.to_pyarrow_table()
    days = [(today - timedelta(days=ORDER_DAYS - d)).isoformat() for d in range(ORDER_DAYS)] + [today.isoformat()]
    assert sorted(set(read.column("date").to_pylist())) == days
    todays = read.filter(pc.equal(read.column("date"), today.isoformat()))
    assert todays.num_rows == 40
    assert pc.sum(pc.greater_equal(todays.column("ingested_at"), enabled_at)).as_py() == 20


def test_make_demo_protects_the_hive_datasets_and_the_delta_table_through_dagster(tmp_path: Path) -> None:
    """`make demo` end to end (small sizes), in a process of its own as `make demo` runs it: the orders Delta
    table is protected through Dagster runs of its own partitions, reported by counts, never by value."""
    import os
    import subprocess
    import sys

    from deltalake import DeltaTable

    project = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIELDCRYPT_", "DAGSTER_"))}
    env["PYTHONPATH"] = str(project)
    sizes = ["--users", "100", "--events", "100", "--orders", "40"]
    done = subprocess.run(
        [sys.executable, "-m", "demo.run", "--dir", str(tmp_path / "demo"), *sizes],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    said = done.stdout
    assert "sync_table_partitions sensor tick: orders partitions date=" in said
    checks = said.split("asset checks: ")[1].split(" ")[0].split("/")
    assert checks[0] == checks[1] and int(checks[0]) > 0
    assert "orders (Delta table, read back by delta-rs)" in said
    assert "older versions of the delta table still hold plaintext of orders.email" in said
    assert "fieldcrypt purge-history orders" in said
    uri = str(tmp_path / "demo" / "lake" / "orders")
    landed = DeltaTable(uri, version=1).to_pyarrow_table()  # before protection: the orders as appended
    plaintexts = {email for email in landed.column("email").to_pylist() if email}
    assert not [email for email in plaintexts if email in said + done.stderr]
    table = DeltaTable(uri).to_pyarrow_table()
    protected = table.filter(pc.is_valid(table.column("email__fc_ct")))
    assert protected.num_rows > 0 and table.num_rows == landed.num_rows
    assert not set(protected.column("email").to_pylist()) & plaintexts
