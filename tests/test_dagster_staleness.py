"""Protection shows as stale once new plaintext lands, as the UI's partition page reads it (its GraphQL query).

The landed snapshots are observed (assets/landed.py); a protected partition is fresh after its own
rewrite is observed, stale once a file lands in it or `encrypt-history` runs from the CLI, requested by
the workspace's automation condition, and fresh again once protected again. The code location is served
out of process from a workspace file, as `dagster dev` does; runs and observations use the same instance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster._core.definitions.observe import observe
from dagster._core.test_utils import instance_for_test
from dagster._core.workspace.context import WorkspaceRequestContext
from dagster._daemon.sensor import execute_sensor_iteration
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql
from dagster_support import (
    WORKSPACE,
    asset_key,
    enable,
    fresh_code_location_import,
    land,
    local_fieldcrypt,
    make_keystore,
    materialize_partition,
    past_day,
    shift_to_straddle_now,
    write_workspace_file,
)

from assets import build_assets
from demo.sample_data import users_table
from fieldcrypt.cli import ACK_FLAG, run
from resources import FieldcryptResource

LOCATION = "fieldcrypt_staleness"
DAYS = [past_day(4), past_day(3)]
PARTITIONS = [day.isoformat() for day in DAYS]
LATE = PARTITIONS[1]

# The query of the UI's partition page (dagster-webserver 1.13, AssetPartitionStaleQuery).
STALE_STATUS = """
query AssetPartitionStaleQuery($assetKey: AssetKeyInput!, $partitionKey: String!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      staleStatus(partition: $partitionKey)
      staleCauses(partition: $partitionKey) { key { path } partitionKey reason category dependency { path } }
    }
  }
}
"""


@dataclass
class Served:
    fieldcrypt: FieldcryptResource
    instance: dg.DagsterInstance
    context: WorkspaceRequestContext

    def observe(self) -> None:
        """What "Observe" on the landed assets does (the sensor records the same observations)."""
        assets = build_assets(self.fieldcrypt.config())
        result = observe(list(assets.landed.values()), instance=self.instance, resources=self.fieldcrypt.as_resources())
        assert result.success

    def protect(self, partition: str) -> None:
        assert materialize_partition(self.fieldcrypt, partition, instance=self.instance).success

    def stale(self, asset: str = "protected_users") -> dict[str, str]:
        """Partition -> stale status of `asset`, as the UI's partition page queries it."""
        return {partition: self._partition_page(asset, partition)["staleStatus"] for partition in PARTITIONS}

    def stale_causes(self, partition: str) -> list[dict[str, Any]]:
        return list(self._partition_page("protected_users", partition)["staleCauses"])

    def _partition_page(self, asset: str, partition: str) -> dict[str, Any]:
        result = execute_dagster_graphql(
            self.context.process_context.create_request_context(),
            STALE_STATUS,
            variables={"assetKey": {"path": asset_key(asset).path}, "partitionKey": partition},
        )
        assert result.errors is None, result.errors
        node: dict[str, Any] = result.data["assetNodeOrError"]
        return node

    def pending(self, dataset: str, partition: str) -> int:
        status = self.fieldcrypt.workspace("test").status(dataset, partition)
        return sum(counts.pending for counts in status.attributes.values())


def land_late_batch(lake: Path, partition: str) -> None:
    """A second users file in a protected partition, ingested after enablement (its emails are pending)."""
    table = users_table(DAYS[1], 50, seed=7)
    table = table.set_column(0, "user_id", pc.add(table["user_id"], pa.scalar(10_000, pa.int64())))
    after = pa.array([datetime.now(UTC) + timedelta(minutes=1)] * table.num_rows, pa.timestamp("us", tz="UTC"))
    table = table.set_column(table.schema.get_field_index("ingested_at"), "ingested_at", after)
    pq.write_table(table, lake / "users" / f"date={partition}" / "late-batch.parquet")


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """Two protected partitions of users and events (emails enabled), observed, the code location served."""
    lake = tmp_path / "lake"
    fieldcrypt = local_fieldcrypt(lake, make_keystore(tmp_path))
    for day in DAYS:
        land(fieldcrypt, day, shift_to_straddle_now(DAYS[1]), users=100, events=100)
    enable(fieldcrypt, ("users.email", "email"), ("events.properties.email", "email"))
    for name, value in {
        "FIELDCRYPT_CATALOG": fieldcrypt.catalog_path,
        "FIELDCRYPT_WORKSPACE": WORKSPACE,
        "FIELDCRYPT_DAGSTER_EXECUTOR": "in_process",
        "FIELDCRYPT_PARTITIONS_START": DAYS[0].isoformat(),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FIELDCRYPT_PARTITIONS_END", raising=False)
    workspace_file = write_workspace_file(tmp_path / "workspace.yaml", LOCATION)
    with (
        fresh_code_location_import(),
        instance_for_test() as instance,
        define_out_of_process_context(str(workspace_file), None, instance) as context,
    ):
        assert context.get_code_location_entries()[LOCATION].load_error is None
        served = Served(fieldcrypt, instance, context)
        served.observe()
        for partition in PARTITIONS:
            served.protect(partition)
        yield served


def test_protected_partition_stays_fresh_after_its_rewrite_is_observed(served: Served) -> None:
    served.observe()  # protection rewrote every file in place since the first observation

    assert served.stale() == {partition: "FRESH" for partition in PARTITIONS}


def test_file_landed_into_a_protected_partition_makes_it_stale_once_observed(served: Served, tmp_path: Path) -> None:
    land_late_batch(tmp_path / "lake", LATE)
    assert served.pending("users", LATE) > 0

    served.observe()

    assert served.stale() == {PARTITIONS[0]: "FRESH", LATE: "STALE"}
    causes = served.stale_causes(LATE)
    assert [(c["key"]["path"], c["partitionKey"], c["reason"]) for c in causes] == [
        (asset_key("users").path, LATE, "has a new data version")
    ], causes


def test_observation_sensor_marks_the_partition_a_file_landed_in_stale(served: Served, tmp_path: Path) -> None:
    land_late_batch(tmp_path / "lake", LATE)
    runs_before = served.instance.get_runs_count()

    # One iteration of the sensor daemon: the sensor runs by default, in the served code location.
    list(execute_sensor_iteration(served.context.process_context, logging.getLogger("test"), None, None))

    assert served.stale() == {PARTITIONS[0]: "FRESH", LATE: "STALE"}
    assert served.instance.get_runs_count() == runs_before  # observations are recorded without a run


def test_stale_partition_is_requested_by_the_automation_condition(served: Served, tmp_path: Path) -> None:
    defs = dg.Definitions.merge(
        build_assets(served.fieldcrypt.config()).definitions(),
        dg.Definitions(resources=served.fieldcrypt.as_resources()),
    )
    first = dg.evaluate_automation_conditions(defs=defs, instance=served.instance)
    land_late_batch(tmp_path / "lake", LATE)
    served.observe()

    second = dg.evaluate_automation_conditions(defs=defs, instance=served.instance, cursor=first.cursor)

    assert first.total_requested == 0
    assert second.total_requested == 1
    assert second.get_requested_partitions(asset_key("protected_users")) == {LATE}


def test_protecting_a_stale_partition_again_makes_it_fresh(served: Served, tmp_path: Path) -> None:
    land_late_batch(tmp_path / "lake", LATE)
    served.observe()
    assert served.stale()[LATE] == "STALE"

    served.protect(LATE)
    served.observe()

    assert served.pending("users", LATE) == 0
    assert served.stale() == {partition: "FRESH" for partition in PARTITIONS}


def test_encrypt_history_from_the_cli_marks_every_partition_of_its_dataset_stale(served: Served) -> None:
    cli = ["--catalog", served.fieldcrypt.catalog_path, "--workspace", WORKSPACE]
    assert run([*cli, "encrypt-history", "users.email", ACK_FLAG]) == 0
    assert served.pending("users", PARTITIONS[0]) > 0

    served.observe()

    assert served.stale("protected_users") == {partition: "STALE" for partition in PARTITIONS}
    assert served.stale("protected_events") == {partition: "FRESH" for partition in PARTITIONS}


def test_observing_unchanged_partitions_records_no_partition_observation(served: Served) -> None:
    served.observe()  # records the state protection left, where it differs from what protection reported
    before = _observation_count(served.instance)

    served.observe()

    assert _observation_count(served.instance) == before


def _observation_count(instance: dg.DagsterInstance) -> int:
    """Observations of a partition (each observation run also records one of the whole asset)."""
    return sum(
        record.asset_observation is not None and record.asset_observation.partition is not None
        for dataset in ("users", "events")
        for record in instance.fetch_observations(asset_key(dataset), limit=1000).records
    )
