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
