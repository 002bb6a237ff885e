"""A multi-partition backfill launched through GraphQL, as the UI's "Materialize all partitions" does.

The code location is loaded out of process from a workspace file (a gRPC server
subprocess that reads its settings from the environment, as in production); the backfill
daemon's iteration is driven by hand, and runs launch synchronously in this process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterRunStatus
from dagster._core.storage.dagster_run import RunsFilter
from dagster._core.test_utils import instance_for_test
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql
from dagster_support import (
    WORKSPACE,
    enable,
    fresh_code_location_import,
    land,
    local_fieldcrypt,
    make_keystore,
    past_day,
    run_backfill_to_the_end,
    shift_to_straddle_now,
    write_workspace_file,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCATION = "fieldcrypt_test"
DAYS = [past_day(4), past_day(3), past_day(2)]


@pytest.fixture
def workspace_file(tmp_path: Path) -> Path:
    return write_workspace_file(tmp_path / "workspace.yaml", LOCATION)


def test_graphql_partition_backfill_protects_every_partition_in_ranges_of_partitions_per_run(
    tmp_path: Path, workspace_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, keystore = tmp_path / "lake", make_keystore(tmp_path)
    fieldcrypt = local_fieldcrypt(lake, keystore)
    for day in DAYS:  # one shift for all: the first day predates enablement, the middle one straddles it
        land(fieldcrypt, day, shift_to_straddle_now(DAYS[1]))
    enable(fieldcrypt, ("users.email", "email"), ("events.properties.email", "email"))
    for name, value in {
        "FIELDCRYPT_CATALOG": fieldcrypt.catalog_path,  # the code location's catalog: workspace acme on this lake
        "FIELDCRYPT_WORKSPACE": WORKSPACE,
        "FIELDCRYPT_DAGSTER_EXECUTOR": "in_process",
        "FIELDCRYPT_PARTITIONS_START": DAYS[0].isoformat(),
        "FIELDCRYPT_MAX_PARTITIONS_PER_RUN": "2",  # three partitions: two runs
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FIELDCRYPT_PARTITIONS_END", raising=False)
    partitions = [day.isoformat() for day in DAYS]

    with (
        fresh_code_location_import(),
        instance_for_test(synchronous_run_coordinator=True, synchronous_run_launcher=True) as instance,
        define_out_of_process_context(str(workspace_file), None, instance) as context,
    ):
        assert context.get_code_location_entries()[LOCATION].load_error is None
        launched = execute_dagster_graphql(
            context,
            LAUNCH_PARTITION_BACKFILL_MUTATION,
            variables={
                "backfillParams": {
                    "assetSelection": [{"path": [WORKSPACE, f"protected_{d}"]} for d in ("users", "events")],
                    "partitionNames": partitions,
                }
            },
        )
        assert launched.data["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", launched.data
        backfill_id = launched.data["launchPartitionBackfill"]["backfillId"]
        run_backfill_to_the_end(context, instance, backfill_id)
        runs = instance.get_runs(filters=RunsFilter.for_backfill(backfill_id))
        materialized = {
            asset: {
                record.asset_materialization.partition: record.asset_materialization.metadata["partition"].value
                for record in instance.fetch_materializations(AssetKey([WORKSPACE, asset]), limit=10).records
                if record.asset_materialization is not None
            }
            for asset in ("protected_users", "protected_events")
        }
        check_history = {
            key: instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
            for key in _check_keys(("protected_users", "protected_events"))
        }

    assert {run.status for run in runs} == {DagsterRunStatus.SUCCESS}
    ranges = sorted(
        (run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"]) for run in runs
    )
    assert ranges == [(partitions[0], partitions[1]), (partitions[2], partitions[2])]  # multi_run(2)
    for asset, by_partition in materialized.items():  # one materialization per partition, with its own metadata
        assert by_partition == {p: p for p in partitions}, asset
    workspace = fieldcrypt.workspace("test")
    for dataset in ("users", "events"):
        for partition in partitions:
            status = workspace.status(dataset, partition)
            assert all(c.pending == 0 for c in status.attributes.values()), (dataset, partition)
        protected = [workspace.status(dataset, p).attributes for p in partitions]
        assert sum(c.already_protected for attrs in protected for c in attrs.values()) > 0
    run_ids = sorted(run.run_id for run in runs)
    for key, history in check_history.items():  # every check was evaluated once in each run, and passed
        # Dagster 1.13 also leaves a per-partition "planned" row for an unpartitioned check (see assets/checks.py).
        evaluated = [record for record in history if record.status.value != "PLANNED"]
        assert sorted(record.run_id for record in evaluated) == run_ids, key
        assert {record.status.value for record in evaluated} == {"SUCCEEDED"}, key


def _check_keys(assets: tuple[str, ...]) -> list[AssetCheckKey]:
    names = ("no_plaintext_after_enablement", "data_keys_unwrap", "row_count_preserved")
    return [AssetCheckKey(AssetKey([WORKSPACE, asset]), name) for asset in assets for name in names]
