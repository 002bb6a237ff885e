"""Master-key rotation through Dagster: the rotation assets, the campaign jobs, the backfill, the schedule and sensor.

The rotation backfill is launched through GraphQL as the UI launches it, with the code
location loaded out of process (as test_dagster_backfill.py does), on the local provider
and on aws-kms against moto. The failure paths run in process, where KMS faults can be
injected into boto3 (tests/faults.py).
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckKey, DagsterInstance, DagsterRunStatus
from dagster._core.storage.dagster_run import RunsFilter
from dagster._core.test_utils import instance_for_test
from dagster._serdes import serialize_value
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql
from dagster_support import (
    WORKSPACE,
    asset_key,
    enable,
    fresh_code_location_import,
    kms_fieldcrypt,
    land,
    local_fieldcrypt,
    make_keystore,
    node,
    past_day,
    run_backfill_to_the_end,
    write_workspace_file,
)

from assets.rotation import rotation_partition_key
from demo.sample_data import snapshot_path
from fieldcrypt import AccessDeniedError, ConfigError, ThrottledError, Workspace
from fieldcrypt.keys.keystore import Keystore
from fieldcrypt.lake.store import TEMP_MARKER
from resources import FieldcryptResource
from tests.faults import KmsFaults

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCATION = "fieldcrypt_rotation_test"
DAYS = [past_day(4), past_day(3), past_day(2)]
PARTITIONS = [day.isoformat() for day in DAYS]
DATASETS = ("users", "events")
ROTATED = {"users": "rotated_users_keys", "events": "rotated_events_keys"}
# Ingestion times a month after each snapshot day: after enablement, so every row is encrypted.
FUTURE = timedelta(days=30)


# -- setup ----------------------------------------------------------------------------------


def protect_lake(fieldcrypt: FieldcryptResource, days: list[Any] = DAYS) -> None:
    """Land `days` of users and events, enable three attributes and protect every partition
    with several data keys per attribute (so rotation has several to rewrap)."""
    for day in days:
        land(fieldcrypt, day, FUTURE, users=120, events=160)
    enable(fieldcrypt, ("users.email", "email"), ("users.phone", "last4"), ("events.properties.email", "email"))
    workspace = fieldcrypt.workspace("test")
    workspace.key_cache().max_cells_per_key = 50
    for dataset in DATASETS:
        for day in days:
            assert workspace.protect(dataset, day.isoformat()).newly_encrypted > 0


def read_table(workspace: Workspace, dataset: str, partition: str) -> pa.Table:
    with workspace.store.open_input(snapshot_path(dataset, partition)) as handle:
        return pq.read_table(handle)


def all_but_wrapped_keys(workspace: Workspace) -> dict[str, pa.Table]:
    """Every column except the wrapped-key ones (ciphertext, masks, the rest), per stored file."""
    tables = {}
    for dataset in DATASETS:
        for partition in workspace.partitions(dataset):
            table = read_table(workspace, dataset, partition)
            tables[f"{dataset}/{partition}"] = table.select([n for n in table.column_names if "__fc_dek" not in n])
    return tables


def workspace_defs(fieldcrypt: FieldcryptResource) -> dg.Definitions:
    """The workspace's definitions as the code location builds them, bound to this resource."""
    from pipelines.definitions import workspace_definitions

    return dg.Definitions.merge(
        workspace_definitions(fieldcrypt.config()), dg.Definitions(resources=fieldcrypt.as_resources())
    )


def evaluate(definition: Any, context: Any, instance: DagsterInstance | None = None) -> Any:
    """One tick of a sensor or schedule as the daemon evaluates it (`evaluate_tick`): a SkipReason, the
    schedule's run request, or the sensor's result."""
    with dg.partition_loading_context(dynamic_partitions_store=instance or DagsterInstance.ephemeral()):
        data = definition.evaluate_tick(context)
    if not data.run_requests and not getattr(data, "dynamic_partitions_requests", None):
        return dg.SkipReason(data.skip_message)
    if isinstance(definition, dg.ScheduleDefinition):
        (request,) = data.run_requests
        return request
    return dg.SensorResult(run_requests=data.run_requests, dynamic_partitions_requests=data.dynamic_partitions_requests)


def start_campaign(
    fieldcrypt: FieldcryptResource, instance: DagsterInstance, **config: str
) -> dg.ExecuteInProcessResult:
    from assets.scope import WorkspaceScope
    from pipelines.rotation import start_key_rotation_job

    return start_key_rotation_job(WorkspaceScope.of(fieldcrypt.config())).execute_in_process(
        run_config={"ops": {node("start_rotation_campaign"): {"config": config}}},
        resources=fieldcrypt.as_resources(),
        instance=instance,
        raise_on_error=False,
    )


def complete_campaign(fieldcrypt: FieldcryptResource, instance: DagsterInstance) -> dg.ExecuteInProcessResult:
    from assets.scope import WorkspaceScope
    from pipelines.rotation import complete_key_rotation_job

    return complete_key_rotation_job(WorkspaceScope.of(fieldcrypt.config())).execute_in_process(
        resources=fieldcrypt.as_resources(), instance=instance, raise_on_error=False
    )


def rotate_partition(
    fieldcrypt: FieldcryptResource, partition: str, *, instance: DagsterInstance | None = None, **kwargs: Any
) -> dg.ExecuteInProcessResult:
    """Materialize the rotation assets' partition of snapshot `partition` in the current campaign."""
    from assets import build_assets
    from pipelines.campaign_partitions import show_campaign_partitions

    instance = instance or DagsterInstance.ephemeral()
    campaign_id = current_campaign_id(fieldcrypt)
    generated = build_assets(fieldcrypt.config())
    show_campaign_partitions(generated.scope, instance, campaign_id)  # start_key_rotation does this on its instance
    return dg.materialize(
        list(generated.rotated.values()),
        partition_key=rotation_partition_key(campaign_id, partition),
        resources=fieldcrypt.as_resources(),
        instance=instance,
        **kwargs,
    )


def current_campaign_id(fieldcrypt: FieldcryptResource) -> str:
    binding = fieldcrypt.workspace("test").bindings.load()
    assert binding is not None and binding.campaigns
    return binding.campaigns[-1].campaign_id


def rotation_metadata(result: dg.ExecuteInProcessResult, dataset: str) -> dict[str, Any]:
    (materialization,) = result.asset_materializations_for_node(node(ROTATED[dataset]))
    return {key: value.value for key, value in materialization.metadata.items()}


def failure_message(result: dg.ExecuteInProcessResult, name: str) -> str:
    failure = result.failure_data_for_node(node(name))
    assert failure is not None, name
    return failure.error.message if failure.error else ""


@pytest.fixture
def fieldcrypt(tmp_path: Path) -> FieldcryptResource:
    return local_fieldcrypt(tmp_path / "lake", make_keystore(tmp_path))


# -- the rotation backfill through GraphQL, local and aws-kms --------------------------------


@pytest.fixture
def workspace_file(tmp_path: Path) -> Path:
    return write_workspace_file(tmp_path / "workspace.yaml", LOCATION)


@pytest.fixture(params=["local", "aws-kms"])
def provider(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The code location's settings (set in the environment, which the gRPC server subprocess and
    the in-process runs read), the same workspace as a plain resource, and the campaign's config."""
    settings = {
        "FIELDCRYPT_WORKSPACE": WORKSPACE,
        "FIELDCRYPT_DAGSTER_EXECUTOR": "in_process",
        "FIELDCRYPT_PARTITIONS_START": DAYS[0].isoformat(),
    }
    if request.param == "local":
        lake, keystore = tmp_path / "lake", make_keystore(tmp_path)
        settings |= {
            "FIELDCRYPT_LAKE": str(lake),
            "FIELDCRYPT_KEY_PROVIDER": "local",
            "FIELDCRYPT_KEYSTORE": str(keystore),
        }
        plain, start_config = local_fieldcrypt(lake, keystore), {}
    else:
        moto: str = request.getfixturevalue("moto")
        make_kms_key: Callable[..., str] = request.getfixturevalue("make_kms_key")
        bucket: str = request.getfixturevalue("s3_bucket")
        old_key, new_key = make_kms_key(Description="old"), make_kms_key(Description="new")
        settings |= {
            "FIELDCRYPT_LAKE": f"s3://{bucket}/lake",
            "FIELDCRYPT_S3_ENDPOINT_URL": moto,
            "FIELDCRYPT_KEY_PROVIDER": "aws-kms",
            "FIELDCRYPT_KMS_KEY": old_key,
            "FIELDCRYPT_KMS_ENDPOINT_URL": moto,
            "FIELDCRYPT_KMS_MAX_ATTEMPTS": "2",
        }
        plain = kms_fieldcrypt(tmp_path, settings["FIELDCRYPT_LAKE"], old_key, moto)
        start_config = {"to_kms_key_arn": new_key}
    settings["FIELDCRYPT_CATALOG"] = plain.catalog_path
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FIELDCRYPT_PARTITIONS_END", raising=False)
    return {"fieldcrypt": plain, "start_config": start_config}


def test_graphql_rotation_backfill_rewraps_both_datasets_resumes_and_completes(
    provider: dict[str, Any], workspace_file: Path
) -> None:
    fieldcrypt: FieldcryptResource = provider["fieldcrypt"]
    protect_lake(fieldcrypt)
    workspace = fieldcrypt.workspace("test")
    before = all_but_wrapped_keys(workspace)

    with (
        fresh_code_location_import(),
        instance_for_test(synchronous_run_coordinator=True, synchronous_run_launcher=True) as instance,
        define_out_of_process_context(str(workspace_file), None, instance) as context,
    ):
        assert context.get_code_location_entries()[LOCATION].load_error is None
        started = start_campaign(fieldcrypt, instance, **provider["start_config"])
        assert started.success
        campaign = workspace.bindings.load().active_campaign  # type: ignore[union-attr]
        assert campaign is not None and campaign.started_by == f"dagster:{started.run_id}"

        first = launch_rotation_backfill(context, instance, campaign.campaign_id, PARTITIONS[:2])
        mid_campaign = {p: workspace.verify("users", p) for p in (PARTITIONS[0], PARTITIONS[2])}
        refused = complete_campaign(fieldcrypt, instance)
        resumed = launch_rotation_backfill(context, instance, campaign.campaign_id, PARTITIONS)  # over everything
        completed = complete_campaign(fieldcrypt, instance)

        runs = {b: instance.get_runs(filters=RunsFilter.for_backfill(b)) for b in (first, resumed)}
        latest = {
            (dataset, partition): latest_metadata(
                instance, dataset, rotation_partition_key(campaign.campaign_id, partition)
            )
            for dataset in DATASETS
            for partition in PARTITIONS
        }
        check_results = {
            dataset: instance.event_log_storage.get_asset_check_execution_history(
                AssetCheckKey(asset_key(f"rotated_{dataset}_keys"), "no_old_wrapped_keys"), limit=20
            )
            for dataset in DATASETS
        }

    # one run per backfill (its partitions fit in one range of multi_run(100)), all succeeded
    assert [len(runs[first]), len(runs[resumed])] == [1, 1]
    assert {run.status for backfill in runs.values() for run in backfill} == {DagsterRunStatus.SUCCESS}
    # mid-campaign, a rotated and a not yet rotated partition both decrypt
    assert all(sum(counts.values()) > 0 for counts in mid_campaign.values())
    # the completion check failed while the last day remained, naming it, and passed after the resume
    assert not refused.success
    message = failure_message(refused, "complete_rotation_campaign")
    assert f"users/{PARTITIONS[2]}" in message and f"events/{PARTITIONS[2]}" in message
    assert PARTITIONS[0] not in message
    assert completed.success
    assert workspace.bindings.load().campaigns[-1].status == "complete"  # type: ignore[union-attr]
    # the resumed backfill skipped what the first one rotated, and rotated the rest once per data key
    for dataset in DATASETS:
        for partition in PARTITIONS[:2]:
            assert latest[dataset, partition]["skipped"] is True and latest[dataset, partition]["kms_calls"] == 0
        last = latest[dataset, PARTITIONS[2]]
        assert last["rewritten"] is True and last["campaign_id"] == campaign.campaign_id
        assert last["rewrapped"] == last["distinct_data_keys"] > 1
        assert last["master_keys_before"] == {campaign.old.ref: last["distinct_data_keys"]}
        assert last["master_key_id"] == campaign.new.ref
    for dataset, history in check_results.items():
        evaluated = [record for record in history if record.status.value != "PLANNED"]
        assert len(evaluated) == 2 and {record.status.value for record in evaluated} == {"SUCCEEDED"}, dataset
    # ciphertext, masks and every other column byte-identical; everything under the new key and readable
    if campaign.new.provider == "aws-kms":  # after completion, only the new key opens the lake
        # what the operator does next: point the configuration at the new key (the variable overrides the catalog)
        os.environ["FIELDCRYPT_KMS_KEY"] = campaign.new.key_id  # restored by the fixture's monkeypatch
        fieldcrypt = kms_fieldcrypt(
            workspace_file.parent / "after",
            os.environ["FIELDCRYPT_LAKE"],
            campaign.new.key_id,
            os.environ["FIELDCRYPT_KMS_ENDPOINT_URL"],
        )
    after_workspace = fieldcrypt.workspace("test")
    assert {"email__fc_ct", "phone__fc_ct"} <= set(before[f"users/{PARTITIONS[0]}"].column_names)
    assert all_but_wrapped_keys(after_workspace) == before
    assert after_workspace.rotation_status().complete
    assert sum(after_workspace.verify("users", PARTITIONS[0]).values()) > 0


def launch_rotation_backfill(context: Any, instance: DagsterInstance, campaign_id: str, partitions: list[str]) -> str:
    """A backfill of both rotation assets over `partitions` of the campaign, as the UI launches it; run to the end."""
    launched = execute_dagster_graphql(
        context,
        LAUNCH_PARTITION_BACKFILL_MUTATION,
        variables={
            "backfillParams": {
                "assetSelection": [{"path": asset_key(f"rotated_{dataset}_keys").path} for dataset in DATASETS],
                "partitionNames": [rotation_partition_key(campaign_id, p) for p in partitions],
            }
        },
    )
    assert launched.data["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", launched.data
    backfill_id: str = launched.data["launchPartitionBackfill"]["backfillId"]
    run_backfill_to_the_end(context, instance, backfill_id)
    return backfill_id


def latest_metadata(instance: DagsterInstance, dataset: str, partition: str) -> dict[str, Any]:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key(f"rotated_{dataset}_keys"), asset_partitions=[partition]), limit=1
    ).records
    assert records and records[0].asset_materialization is not None
    return {key: value.value for key, value in records[0].asset_materialization.metadata.items()}


# -- what the UI shows per campaign: the launch dialog's "missing" is what still needs rotating --------

PARTITION_STATS = """
query PartitionStats($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode { partitionStats { numMaterialized numPartitions numFailed } }
  }
}
"""


def partition_stats(context: Any, asset: str) -> dict[str, int]:
    """What the UI's partition bar and launch dialog count for the asset, read through GraphQL.

    A new request context per query, as the webserver makes per HTTP request: a request context
    caches the dynamic partitions it has read."""
    request = context.process_context.create_request_context()
    result = execute_dagster_graphql(request, PARTITION_STATS, variables={"assetKey": {"path": asset_key(asset).path}})
    node = result.data["assetNodeOrError"]
    assert node["__typename"] == "AssetNode", result
    stats: dict[str, int] = node["partitionStats"]
    return stats


@pytest.fixture
def second_campaign(tmp_path: Path, workspace_file: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A local lake whose first campaign was backfilled over every partition and completed, then a second
    campaign started; yields (resource, instance, GraphQL context, every snapshot partition, second campaign)."""
    lake, keystore = tmp_path / "lake", make_keystore(tmp_path)
    for name, value in {
        "FIELDCRYPT_WORKSPACE": WORKSPACE,
        "FIELDCRYPT_DAGSTER_EXECUTOR": "in_process",
        "FIELDCRYPT_PARTITIONS_START": DAYS[0].isoformat(),
        "FIELDCRYPT_LAKE": str(lake),
        "FIELDCRYPT_KEY_PROVIDER": "local",
        "FIELDCRYPT_KEYSTORE": str(keystore),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FIELDCRYPT_PARTITIONS_END", raising=False)
    fieldcrypt = local_fieldcrypt(lake, keystore)
    monkeypatch.setenv("FIELDCRYPT_CATALOG", fieldcrypt.catalog_path)
    protect_lake(fieldcrypt)
    every_day = [past_day(n).isoformat() for n in (4, 3, 2, 1)]  # the code location's partitions up to yesterday
    with (
        fresh_code_location_import(),
        instance_for_test(synchronous_run_coordinator=True, synchronous_run_launcher=True) as instance,
        define_out_of_process_context(str(workspace_file), None, instance) as context,
    ):
        assert start_campaign(fieldcrypt, instance).success
        launch_rotation_backfill(context, instance, current_campaign_id(fieldcrypt), every_day)
        assert complete_campaign(fieldcrypt, instance).success
        assert partition_stats(context, ROTATED["users"])["numMaterialized"] == len(every_day)
        assert start_campaign(fieldcrypt, instance).success
        yield fieldcrypt, instance, context, every_day, fieldcrypt.workspace("test").bindings.load().active_campaign


def test_new_campaign_shows_every_rotation_partition_as_missing(second_campaign: Any) -> None:
    _, _, context, every_day, _ = second_campaign

    for asset in ROTATED.values():
        stats = partition_stats(context, asset)
        # the launch dialog's "missing and failed" default: every partition of the new campaign
        assert (stats["numPartitions"], stats["numMaterialized"], stats["numFailed"]) == (len(every_day), 0, 0)


def test_partition_rotated_in_the_new_campaign_is_the_only_one_done_and_names_the_new_key(
    second_campaign: Any,
) -> None:
    fieldcrypt, instance, context, every_day, campaign = second_campaign

    launch_rotation_backfill(context, instance, campaign.campaign_id, every_day[:1])

    assert partition_stats(context, ROTATED["users"])["numMaterialized"] == 1
    current_partitions = defs_partitions_def().get_partition_keys(dynamic_partitions_store=instance)
    done = instance.get_materialized_partitions(asset_key(ROTATED["users"]))
    assert sorted(set(current_partitions) & done) == [rotation_partition_key(campaign.campaign_id, every_day[0])]
    metadata = latest_metadata(instance, "users", rotation_partition_key(campaign.campaign_id, every_day[0]))
    assert (metadata["campaign_id"], metadata["master_key_id"]) == (campaign.campaign_id, campaign.new.ref)


def defs_partitions_def() -> dg.PartitionsDefinition:
    from pipelines.definitions import defs

    partitions_def = defs.resolve_assets_def(asset_key(ROTATED["users"])).partitions_def
    assert partitions_def is not None
    return partitions_def


# -- the campaign jobs, in process ----------------------------------------------------------------


def test_start_job_creates_a_new_local_key_version_and_records_the_campaign(
    fieldcrypt: FieldcryptResource,
) -> None:
    protect_lake(fieldcrypt, DAYS[:1])
    instance = DagsterInstance.ephemeral()

    result = start_campaign(fieldcrypt, instance)

    assert result.success
    campaign = fieldcrypt.workspace("test").bindings.load().active_campaign  # type: ignore[union-attr]
    assert campaign is not None
    assert (campaign.old.key_version, campaign.new.key_version) == ("1", "2")
    assert campaign.started_by == f"dagster:{result.run_id}"
    assert Keystore.load(Path(fieldcrypt.config().key.keystore_path or "")).current == 2
    observation = instance.fetch_observations(asset_key("rotated_users_keys"), limit=1).records[0]
    assert observation.asset_observation is not None
    assert observation.asset_observation.metadata["campaign_id"].value == campaign.campaign_id


def test_start_job_is_refused_while_a_campaign_is_in_progress(fieldcrypt: FieldcryptResource) -> None:
    protect_lake(fieldcrypt, DAYS[:1])
    instance = DagsterInstance.ephemeral()
    start_campaign(fieldcrypt, instance)

    again = start_campaign(fieldcrypt, instance)

    assert not again.success
    assert "still in progress" in failure_message(again, "start_rotation_campaign")


def test_completion_job_names_the_one_partition_left_and_succeeds_once_it_is_rotated(
    fieldcrypt: FieldcryptResource,
) -> None:
    protect_lake(fieldcrypt, DAYS[:2])
    instance = DagsterInstance.ephemeral()
    campaign_start = start_campaign(fieldcrypt, instance)
    assert campaign_start.success
    rotate_partition(fieldcrypt, PARTITIONS[0], instance=instance)
    rotate_partition(fieldcrypt, PARTITIONS[1], instance=instance, selection=[asset_key("rotated_users_keys")])

    refused = complete_campaign(fieldcrypt, instance)
    rotate_partition(fieldcrypt, PARTITIONS[1], instance=instance, selection=[asset_key("rotated_events_keys")])
    completed = complete_campaign(fieldcrypt, instance)

    message = failure_message(refused, "complete_rotation_campaign")
    assert f"1 partitions still hold old wrapped keys: events/{PARTITIONS[1]}" in message
    failure = refused.failure_data_for_node(node("complete_rotation_campaign"))
    assert failure is not None and failure.user_failure_data is not None
    assert failure.user_failure_data.metadata["remaining"].value == {
        f"events/{PARTITIONS[1]}": [campaign_ref(fieldcrypt, "old")]
    }
    assert completed.success
    keystore = Keystore.load(Path(fieldcrypt.config().key.keystore_path or ""))
    assert keystore.versions[1].key == b""  # the old local version is retired


def campaign_ref(fieldcrypt: FieldcryptResource, which: str) -> str:
    campaign = fieldcrypt.workspace("test").bindings.load().campaigns[-1]  # type: ignore[union-attr]
    return str(getattr(campaign, which).ref)


# -- the rotation asset, in process ---------------------------------------------------------------


def test_rerotating_a_partition_is_skipped_without_rewrite_or_kms_call(fieldcrypt: FieldcryptResource) -> None:
    protect_lake(fieldcrypt, DAYS[:1])
    start_campaign(fieldcrypt, DagsterInstance.ephemeral())
    rotate_partition(fieldcrypt, PARTITIONS[0])
    path = Path(fieldcrypt.config().lake_uri) / snapshot_path("users", PARTITIONS[0])
    stored, mtime = path.read_bytes(), path.stat().st_mtime_ns

    result = rotate_partition(fieldcrypt, PARTITIONS[0])

    users = rotation_metadata(result, "users")
    assert (users["skipped"], users["rewritten"], users["rewrapped"], users["kms_calls"]) == (True, False, 0, 0)
    assert users["already_current"] == users["distinct_data_keys"] > 0
    assert path.read_bytes() == stored and path.stat().st_mtime_ns == mtime
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_date_without_a_stored_file_materializes_with_nothing_to_rotate(fieldcrypt: FieldcryptResource) -> None:
    protect_lake(fieldcrypt, DAYS[:1])
    start_campaign(fieldcrypt, DagsterInstance.ephemeral())
    empty_day = past_day(10).isoformat()

    result = rotate_partition(fieldcrypt, empty_day)

    assert result.success
    assert rotation_metadata(result, "events") == {
        "partition": empty_day,
        "campaign_id": current_campaign_id(fieldcrypt),
        "stored": False,
        "rewritten": False,
    }
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert not (Path(fieldcrypt.config().lake_uri) / "events" / f"date={empty_day}").exists()


def test_check_fails_naming_the_old_key_when_a_partition_still_holds_it(fieldcrypt: FieldcryptResource) -> None:
    from assets.rotation import _no_old_wrapped_keys

    protect_lake(fieldcrypt, DAYS[:1])
    start_campaign(fieldcrypt, DagsterInstance.ephemeral())

    result = _no_old_wrapped_keys(fieldcrypt.workspace("test"), "users", PARTITIONS[0])

    assert not result.passed
    assert result.metadata["old_master_keys"].value == [campaign_ref(fieldcrypt, "old")]


def test_metadata_and_run_logs_hold_no_plaintext_and_no_key_bytes(fieldcrypt: FieldcryptResource) -> None:
    protect_lake(fieldcrypt, DAYS[:1])
    instance = DagsterInstance.ephemeral()
    start = start_campaign(fieldcrypt, instance)
    result = rotate_partition(fieldcrypt, PARTITIONS[0], instance=instance)
    complete = complete_campaign(fieldcrypt, instance)

    logged = "\n".join(serialize_value(e) for run in (start, result, complete) for e in instance.all_logs(run.run_id))
    assert "cells_under_rewrapped_keys" in logged
    batches = fieldcrypt.workspace("test").reveal("users", PARTITIONS[0], ["email"])
    revealed = [row for batch in batches for row in batch.to_pylist()]
    emails = {row["users.email"] for row in revealed if row["users.email"]}
    assert emails and not [email for email in emails if email in logged]
    keys = [v.key for v in Keystore.load(Path(fieldcrypt.config().key.keystore_path or "")).versions.values() if v.key]
    assert keys
    for key in keys:
        assert base64.b64encode(key).decode() not in logged and key.hex() not in logged


# -- failure paths: KMS faults injected in process ---------------------------------------------------


def test_rewrap_denied_by_kms_fails_the_partition_leaves_its_file_intact_and_a_rerun_completes(
    tmp_path: Path, moto: str, make_kms_key: Callable[..., str], kms_faults: KmsFaults
) -> None:
    old_key, new_key = make_kms_key(), make_kms_key()
    fieldcrypt = kms_fieldcrypt(tmp_path, str(tmp_path / "lake"), old_key, moto)
    protect_lake(fieldcrypt, DAYS[:1])
    instance = DagsterInstance.ephemeral()
    assert start_campaign(fieldcrypt, instance, to_kms_key_arn=new_key).success
    path = tmp_path / "lake" / snapshot_path("users", PARTITIONS[0])
    stored = path.read_bytes()
    kms_faults.fail("ReEncrypt", "AccessDeniedException")

    denied = rotate_partition(
        fieldcrypt, PARTITIONS[0], instance=instance, selection=[asset_key("rotated_users_keys")], raise_on_error=False
    )

    assert not denied.success
    message = failure_message(denied, "rotated_users_keys")
    assert f"rotating users partition {PARTITIONS[0]} failed: AccessDeniedError" in message and "ReEncrypt" in message
    assert not [e for e in denied.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert path.read_bytes() == stored
    assert not [name for name in os.listdir(path.parent) if TEMP_MARKER in name]
    assert f"users/{PARTITIONS[0]}" in fieldcrypt.workspace("test").rotation_status().remaining

    kms_faults.clear()
    rerun = rotate_partition(fieldcrypt, PARTITIONS[0], instance=instance, selection=[asset_key("rotated_users_keys")])

    assert rerun.success and rotation_metadata(rerun, "users")["rewritten"] is True
    assert all(e.passed for e in rerun.get_asset_check_evaluations())
    assert f"users/{PARTITIONS[0]}" not in fieldcrypt.workspace("test").rotation_status().remaining


@pytest.mark.parametrize(
    ("error", "retried"),
    [(ThrottledError("KMS kept throttling"), True), (AccessDeniedError("denied"), False), (OSError("gone"), False)],
)
def test_only_throttling_is_retried(error: Exception, retried: bool) -> None:
    from assets.rotation import rotation_retryable

    assert rotation_retryable(error) is retried


# -- scheduled rotation: schedule + driver sensor, evaluated as the daemon would -------------------


def aligned_fieldcrypt(tmp_path: Path, days: list[Any]) -> FieldcryptResource:
    """A workspace whose daily partitions start at `days[0]`: the driver's blocks of N partitions start there."""
    return local_fieldcrypt(tmp_path / "lake", make_keystore(tmp_path), partitions_start=days[0])


def launch(
    defs: dg.Definitions,
    instance: DagsterInstance,
    request: dg.RunRequest,
    job_name: str | None = None,
    *,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """What the daemon does with a run request, in process: a ranged request's partition range is in its
    tags (`dagster/asset_partition_range_start` / `_end`), as in a multi_run backfill's runs."""
    job = defs.resolve_job_def(job_name or request.job_name or "")
    selection = {"asset_selection": request.asset_selection} if request.asset_selection else {}
    return job.execute_in_process(
        run_config=request.run_config,
        tags=request.tags,
        partition_key=request.partition_key,
        instance=instance,
        raise_on_error=raise_on_error,
        **selection,
    )


def driver_tick(defs: dg.Definitions, fieldcrypt: FieldcryptResource, instance: DagsterInstance) -> Any:
    sensor = defs.resolve_sensor_def(node("key_rotation_driver"))
    with dg.build_sensor_context(instance=instance, resources=fieldcrypt.as_resources(), definitions=defs) as context:
        return evaluate(sensor, context, instance)


def test_scheduled_rotation_starts_rotates_and_completes_a_local_campaign_by_itself(tmp_path: Path) -> None:
    fieldcrypt = aligned_fieldcrypt(tmp_path, DAYS)
    protect_lake(fieldcrypt, DAYS[:2])
    instance = DagsterInstance.ephemeral()
    resources = fieldcrypt.as_resources()
    defs = workspace_defs(fieldcrypt)
    scheduled_key_rotation = defs.resolve_schedule_def(node("scheduled_key_rotation"))

    def tick() -> Any:
        return driver_tick(defs, fieldcrypt, instance)

    assert isinstance(tick(), dg.SkipReason)  # nothing in progress
    with dg.build_schedule_context(instance=instance, resources=resources) as context:
        start = evaluate(scheduled_key_rotation, context, instance)
    assert isinstance(start, dg.RunRequest)
    assert launch(defs, instance, start, scheduled_key_rotation.job_name).success
    campaign = fieldcrypt.workspace("test").bindings.load().active_campaign  # type: ignore[union-attr]
    assert campaign is not None and campaign.new.key_version == "2"

    (rotation,) = tick().run_requests  # both dates in one ranged run
    assert rotation.run_key == f"{campaign.campaign_id}/{PARTITIONS[0]}+100"
    assert rotation.job_name == node("rotate_keys")
    assert set(rotation.asset_selection) == {asset_key(name) for name in ROTATED.values()}
    assert rotation.partition_key is None
    assert rotation.tags["dagster/asset_partition_range_start"] == f"{campaign.campaign_id}|{PARTITIONS[0]}"
    assert rotation.tags["dagster/asset_partition_range_end"] == f"{campaign.campaign_id}|{PARTITIONS[1]}"
    assert rotation.tags["fieldcrypt/rotation_campaign"] == campaign.campaign_id
    assert rotation.tags["fieldcrypt/workspace"] == WORKSPACE
    assert launch(defs, instance, rotation).success
    (completion,) = tick().run_requests
    assert (completion.job_name, completion.run_key) == (
        node("complete_key_rotation"),
        f"{campaign.campaign_id}/complete",
    )
    assert launch(defs, instance, completion).success
    assert fieldcrypt.workspace("test").bindings.load().campaigns[-1].status == "complete"  # type: ignore[union-attr]
    assert isinstance(tick(), dg.SkipReason)


def test_sensor_daemon_launches_the_drivers_ranged_run_which_rotates_every_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace_file: Path
) -> None:
    """The daemon's own path (out-of-process code location, run creation from the request's partition-range
    tags, run launcher), not a hand-made execution of the request."""
    from dagster._daemon.sensor import execute_sensor_iteration

    fieldcrypt = aligned_fieldcrypt(tmp_path, DAYS)
    settings = {
        "FIELDCRYPT_CATALOG": fieldcrypt.catalog_path,
        "FIELDCRYPT_WORKSPACE": WORKSPACE,
        "FIELDCRYPT_DAGSTER_EXECUTOR": "in_process",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    protect_lake(fieldcrypt)
    with (
        fresh_code_location_import(),
        instance_for_test(synchronous_run_coordinator=True, synchronous_run_launcher=True) as instance,
        define_out_of_process_context(str(workspace_file), None, instance) as context,
    ):
        assert start_campaign(fieldcrypt, instance).success
        campaign_id = current_campaign_id(fieldcrypt)
        location = context.get_code_location(LOCATION)
        (repository,) = location.get_repositories().values()
        instance.start_sensor(repository.get_sensor(node("key_rotation_driver")))

        list(execute_sensor_iteration(context.process_context, logging.getLogger("test"), None, None))

        (run,) = instance.get_runs(filters=RunsFilter(tags={"fieldcrypt/rotation_campaign": campaign_id}))
        materialized = {name: instance.get_materialized_partitions(asset_key(name)) for name in ROTATED.values()}
    assert run.status == DagsterRunStatus.SUCCESS
    assert run.tags["dagster/run_key"] == f"{campaign_id}/{PARTITIONS[0]}+100"
    assert run.tags["dagster/asset_partition_range_start"] == f"{campaign_id}|{PARTITIONS[0]}"
    assert run.tags["dagster/asset_partition_range_end"] == f"{campaign_id}|{PARTITIONS[-1]}"
    assert materialized == {name: {f"{campaign_id}|{p}" for p in PARTITIONS} for name in ROTATED.values()}
    assert fieldcrypt.workspace("test").rotation_status().remaining == {}


MANY_DAYS = [past_day(days_ago) for days_ago in range(9, 2, -1)]  # 7 consecutive dates


def test_driver_requests_ceil_n_over_partitions_per_run_ranged_runs_that_rotate_every_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDCRYPT_MAX_PARTITIONS_PER_RUN", "3")
    fieldcrypt = aligned_fieldcrypt(tmp_path, MANY_DAYS)
    protect_lake(fieldcrypt, MANY_DAYS)
    instance = DagsterInstance.ephemeral()
    start_campaign(fieldcrypt, instance)
    campaign_id = current_campaign_id(fieldcrypt)
    defs = workspace_defs(fieldcrypt)
    dates = [day.isoformat() for day in MANY_DAYS]

    requests = driver_tick(defs, fieldcrypt, instance).run_requests

    assert len(requests) == 3  # ceil(7 / 3)
    spans = [
        (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]) for r in requests
    ]
    assert spans == [
        (f"{campaign_id}|{dates[0]}", f"{campaign_id}|{dates[2]}"),
        (f"{campaign_id}|{dates[3]}", f"{campaign_id}|{dates[5]}"),
        (f"{campaign_id}|{dates[6]}", f"{campaign_id}|{dates[6]}"),
    ]
    assert len({r.run_key for r in requests}) == 3
    for request in requests:
        assert launch(defs, instance, request).success
    for dataset, asset in ROTATED.items():
        materialized = instance.get_materialized_partitions(asset_key(asset))
        assert materialized == {f"{campaign_id}|{date}" for date in dates}, dataset
    assert fieldcrypt.workspace("test").rotation_status().remaining == {}
    (completion,) = driver_tick(defs, fieldcrypt, instance).run_requests
    assert completion.job_name == node("complete_key_rotation")


def test_driver_range_keeps_its_run_key_while_its_partitions_are_rotated_one_by_one(tmp_path: Path) -> None:
    fieldcrypt = aligned_fieldcrypt(tmp_path, DAYS)
    protect_lake(fieldcrypt, DAYS)
    instance = DagsterInstance.ephemeral()
    start_campaign(fieldcrypt, instance)
    defs = workspace_defs(fieldcrypt)
    (before,) = driver_tick(defs, fieldcrypt, instance).run_requests

    rotate_partition(fieldcrypt, PARTITIONS[0], instance=instance)  # as a run in progress would
    (after,) = driver_tick(defs, fieldcrypt, instance).run_requests

    assert after.run_key == before.run_key  # the daemon skips it: the same work is not requested twice
    assert after.tags["dagster/asset_partition_range_start"].endswith(f"|{PARTITIONS[1]}")


def test_driver_requests_a_failed_partition_again_then_leaves_it_to_the_operator_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import assets.rotation

    monkeypatch.setenv("FIELDCRYPT_DRIVER_MAX_ATTEMPTS", "2")
    fieldcrypt = aligned_fieldcrypt(tmp_path, DAYS)
    protect_lake(fieldcrypt, DAYS)
    instance = DagsterInstance.ephemeral()
    start_campaign(fieldcrypt, instance)
    campaign_id = current_campaign_id(fieldcrypt)
    defs = workspace_defs(fieldcrypt)
    rotate_one = assets.rotation.rotate_one

    def failing_middle(context: Any, workspace: Workspace, dataset: str, partition: str | None, campaign: Any) -> Any:
        if partition == PARTITIONS[1]:
            raise OSError(f"lost the connection to {dataset} {partition}")
        return rotate_one(context, workspace, dataset, partition, campaign)

    monkeypatch.setattr(assets.rotation, "rotate_one", failing_middle)
    (first,) = driver_tick(defs, fieldcrypt, instance).run_requests
    assert not launch(defs, instance, first, raise_on_error=False).success
    remaining = fieldcrypt.workspace("test").rotation_status().remaining
    assert sorted(remaining) == [f"events/{PARTITIONS[1]}", f"users/{PARTITIONS[1]}"]  # the others are done

    (second,) = driver_tick(defs, fieldcrypt, instance).run_requests
    assert second.run_key == f"{first.run_key}/attempt-2"
    assert second.tags["dagster/asset_partition_range_start"] == f"{campaign_id}|{PARTITIONS[1]}"
    assert second.tags["dagster/asset_partition_range_end"] == f"{campaign_id}|{PARTITIONS[1]}"
    assert not launch(defs, instance, second, raise_on_error=False).success

    given_up = driver_tick(defs, fieldcrypt, instance)
    assert isinstance(given_up, dg.SkipReason)
    assert "failed 2 times" in (given_up.skip_message or "")
    assert f"{PARTITIONS[1]}..{PARTITIONS[1]}" in (given_up.skip_message or "")

    monkeypatch.setattr(assets.rotation, "rotate_one", rotate_one)  # the cause is fixed; the operator re-runs it
    assert rotate_partition(fieldcrypt, PARTITIONS[1], instance=instance).success
    (completion,) = driver_tick(defs, fieldcrypt, instance).run_requests
    assert completion.job_name == node("complete_key_rotation")


def test_driver_requests_nothing_more_for_a_range_whose_run_is_in_progress(tmp_path: Path) -> None:
    fieldcrypt = aligned_fieldcrypt(tmp_path, DAYS)
    protect_lake(fieldcrypt, DAYS[:1])
    instance = DagsterInstance.ephemeral()
    start_campaign(fieldcrypt, instance)
    defs = workspace_defs(fieldcrypt)
    (request,) = driver_tick(defs, fieldcrypt, instance).run_requests
    job = defs.resolve_job_def(request.job_name or "")
    instance.create_run_for_job(job, tags=request.tags, status=DagsterRunStatus.STARTED)

    skipped = driver_tick(defs, fieldcrypt, instance)

    assert isinstance(skipped, dg.SkipReason) and "queued or in progress" in (skipped.skip_message or "")


def test_rotation_schedule_skips_while_a_campaign_is_in_progress(fieldcrypt: FieldcryptResource) -> None:
    scheduled_key_rotation = workspace_defs(fieldcrypt).resolve_schedule_def(node("scheduled_key_rotation"))
    protect_lake(fieldcrypt, DAYS[:1])
    start_campaign(fieldcrypt, DagsterInstance.ephemeral())

    with dg.build_schedule_context(resources=fieldcrypt.as_resources()) as context:
        skipped = evaluate(scheduled_key_rotation, context)

    assert isinstance(skipped, dg.SkipReason) and "still in progress" in (skipped.skip_message or "")


def test_rotation_schedule_leaves_an_aws_kms_key_to_its_owner(tmp_path: Path) -> None:
    arn = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-0000-0000-000000000000"
    fieldcrypt = kms_fieldcrypt(tmp_path, "/nonexistent/lake", arn, "http://kms.invalid")
    scheduled_key_rotation = workspace_defs(fieldcrypt).resolve_schedule_def(node("scheduled_key_rotation"))

    with dg.build_schedule_context(resources=fieldcrypt.as_resources()) as context:
        skipped = evaluate(scheduled_key_rotation, context)

    assert isinstance(skipped, dg.SkipReason) and "local master key" in (skipped.skip_message or "")


def test_driver_leaves_a_date_outside_the_partitions_to_the_cli(
    fieldcrypt: FieldcryptResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDCRYPT_PARTITIONS_START", DAYS[1].isoformat())
    protect_lake(fieldcrypt, DAYS[:2])
    start_campaign(fieldcrypt, DagsterInstance.ephemeral())
    defs = workspace_defs(fieldcrypt)
    key_rotation_driver = defs.resolve_sensor_def(node("key_rotation_driver"))
    instance = DagsterInstance.ephemeral()
    rotate_partition(fieldcrypt, PARTITIONS[1], instance=instance)
    with dg.build_sensor_context(instance=instance, resources=fieldcrypt.as_resources(), definitions=defs) as context:
        skipped = evaluate(key_rotation_driver, context)

    assert isinstance(skipped, dg.SkipReason) and "outside the code location" in (skipped.skip_message or "")


def test_driver_cursor_remembers_the_partitions_found_clean_in_the_campaign(fieldcrypt: FieldcryptResource) -> None:
    from pipelines.rotation_driver import read_driver_cursor

    protect_lake(fieldcrypt, DAYS[:2])
    instance = DagsterInstance.ephemeral()
    start_campaign(fieldcrypt, instance)
    rotate_partition(fieldcrypt, PARTITIONS[0], instance=instance)
    resources = fieldcrypt.as_resources()
    defs = workspace_defs(fieldcrypt)

    with dg.build_sensor_context(instance=instance, resources=resources, definitions=defs) as context:
        evaluate(defs.resolve_sensor_def(node("key_rotation_driver")), context, instance)
        cursor = context.cursor

    clean = read_driver_cursor(cursor, current_campaign_id(fieldcrypt))
    assert set(clean) == {f"users/{PARTITIONS[0]}", f"events/{PARTITIONS[0]}"}


def test_driver_with_a_read_budget_requests_completion_only_once_every_partition_was_read(
    fieldcrypt: FieldcryptResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDCRYPT_DRIVER_MAX_READS", "1")
    protect_lake(fieldcrypt, DAYS[:2])
    instance = DagsterInstance.ephemeral()
    start_campaign(fieldcrypt, instance)
    for partition in PARTITIONS[:2]:
        rotate_partition(fieldcrypt, partition, instance=instance)  # all four partitions clean, none read yet
    resources = fieldcrypt.as_resources()
    defs = workspace_defs(fieldcrypt)
    sensor = defs.resolve_sensor_def(node("key_rotation_driver"))
    cursor = None
    ticks = []
    for _ in range(6):
        with dg.build_sensor_context(
            instance=instance, resources=resources, cursor=cursor, definitions=defs
        ) as context:
            ticks.append(evaluate(sensor, context, instance))
            cursor = context.cursor
        if isinstance(ticks[-1], dg.SensorResult):
            break

    assert [type(tick) for tick in ticks] == [dg.SkipReason] * 3 + [dg.SensorResult]
    assert "not read yet" in (ticks[0].skip_message or "")  # type: ignore[union-attr]
    (completion,) = ticks[-1].run_requests  # type: ignore[union-attr]
    assert completion.job_name == node("complete_key_rotation")


KEYS = [f"2026-01-{day:02d}" for day in range(1, 11)]


def test_ranges_are_aligned_blocks_of_n_partitions_narrowed_to_what_remains() -> None:
    from pipelines.rotation_driver import PartitionRange, partition_ranges

    remaining = {"users": ["2026-01-02", "2026-01-03", "2026-01-05"], "events": ["2026-01-03", "2026-01-09"]}

    ranges = partition_ranges(remaining, KEYS, 4)

    assert ranges == [
        PartitionRange("2026-01-01", "2026-01-02", "2026-01-03", ("events", "users"), 3),
        PartitionRange("2026-01-05", "2026-01-05", "2026-01-05", ("users",), 1),
        PartitionRange("2026-01-09", "2026-01-09", "2026-01-09", ("events",), 1),
    ]


def test_a_range_spans_the_clean_partitions_between_those_that_remain() -> None:
    from pipelines.rotation_driver import partition_ranges

    (found,) = partition_ranges({"users": ["2026-01-01", "2026-01-10"]}, KEYS, 10)

    assert (found.first, found.last, found.partitions) == ("2026-01-01", "2026-01-10", 2)


def test_many_partitions_make_ceil_n_over_size_ranges_of_at_most_size_partitions() -> None:
    from pipelines.rotation_driver import partition_ranges

    keys = [f"p{index:05d}" for index in range(10_000)]

    ranges = partition_ranges({"users": keys}, keys, 25)

    assert len(ranges) == 400
    assert all(keys.index(r.last or "") - keys.index(r.first or "") == 24 for r in ranges[:3])


@pytest.mark.parametrize(
    ("earlier", "attempt"),
    [
        ([], 1),
        ([DagsterRunStatus.STARTED], None),
        ([DagsterRunStatus.QUEUED], None),
        ([DagsterRunStatus.FAILURE], 2),
        ([DagsterRunStatus.CANCELED], 2),
        ([DagsterRunStatus.SUCCESS], 2),  # done, yet a file under the old key appeared since
        ([DagsterRunStatus.FAILURE, DagsterRunStatus.FAILURE], 3),
        ([DagsterRunStatus.FAILURE] * 3, None),
    ],
)
def test_a_range_is_requested_again_once_its_last_run_finished_up_to_the_attempt_budget(
    earlier: list[DagsterRunStatus], attempt: int | None
) -> None:
    from pipelines.rotation_driver import next_attempt

    assert next_attempt(earlier, 3) == attempt


def test_a_driver_range_covers_what_a_backfill_run_of_the_rotation_assets_covers() -> None:
    import sys

    from pipelines.rotation_driver import partitions_per_run

    assert partitions_per_run(dg.BackfillPolicy.multi_run(25)) == 25
    assert partitions_per_run(dg.BackfillPolicy.single_run()) == sys.maxsize
    assert partitions_per_run(None) == 1


def test_range_run_keys_name_the_campaign_block_size_and_attempt() -> None:
    from pipelines.rotation_driver import range_run_key

    assert range_run_key("rot-1", "acme__rotate_keys", "2026-01-01", 25, 1) == "rot-1/2026-01-01+25"
    assert range_run_key("rot-1", "acme__rotate_keys", "2026-01-01", 25, 2) == "rot-1/2026-01-01+25/attempt-2"
    assert range_run_key("rot-1", "acme__rotate_keys_hourly", "2026-01-01-00:00", 25, 1) == (
        "rot-1/acme__rotate_keys_hourly/2026-01-01-00:00+25"
    )


@pytest.mark.parametrize("value", ["0", "many", "٣"])
@pytest.mark.parametrize("name", ["FIELDCRYPT_DRIVER_MAX_READS", "FIELDCRYPT_DRIVER_MAX_ATTEMPTS"])
def test_driver_setting_that_is_not_a_positive_number_is_a_named_config_error(
    monkeypatch: pytest.MonkeyPatch, value: str, name: str
) -> None:
    from pipelines.rotation_driver import driver_max_attempts, driver_max_reads

    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError, match=name):
        driver_max_reads() if name.endswith("READS") else driver_max_attempts()


@pytest.mark.parametrize("cursor", [None, "", "not base64!", base64.b64encode(b"not zlib").decode()])
def test_driver_cursor_that_does_not_parse_means_a_full_scan(cursor: str | None) -> None:
    from pipelines.rotation_driver import read_driver_cursor

    assert read_driver_cursor(cursor, "rot-1") == {}


def test_driver_cursor_of_another_campaign_means_a_full_scan() -> None:
    from pipelines.rotation_driver import driver_cursor, read_driver_cursor

    cursor = driver_cursor("rot-1", {"users/2026-11-01": "00112233aabbccdd"})

    assert read_driver_cursor(cursor, "rot-1") == {"users/2026-11-01": "00112233aabbccdd"}
    assert read_driver_cursor(cursor, "rot-2") == {}


def test_rotation_cron_comes_from_the_environment_with_a_quarterly_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIELDCRYPT_ROTATION_CRON", raising=False)
    with fresh_code_location_import():
        from pipelines.definitions import defs
        from pipelines.rotation import DEFAULT_ROTATION_CRON

        schedule = defs.resolve_schedule_def("demo__scheduled_key_rotation")
        assert schedule.cron_schedule == DEFAULT_ROTATION_CRON == "0 3 1 1,4,7,10 *"
    monkeypatch.setenv("FIELDCRYPT_ROTATION_CRON", "0 4 * * 1")
    with fresh_code_location_import():
        from pipelines.definitions import defs

        assert defs.resolve_schedule_def("demo__scheduled_key_rotation").cron_schedule == "0 4 * * 1"


# -- the definitions ---------------------------------------------------------------------------------


def test_rotation_assets_are_partitioned_by_campaign_and_snapshot_in_the_kms_pool_with_their_check() -> None:
    from pipelines.definitions import defs

    snapshot_partitions = defs.resolve_assets_def(asset_key("protected_users", "demo")).partitions_def
    for dataset, name in ROTATED.items():
        asset = defs.resolve_assets_def(asset_key(name, "demo"))
        assert asset.backfill_policy == dg.BackfillPolicy.multi_run(100)
        assert asset.op.pool == "kms_demo"
        assert {key.name for key in asset.check_keys} == {"no_old_wrapped_keys"}
        assert isinstance(asset.partitions_def, dg.MultiPartitionsDefinition)
        dimensions = {d.name: d.partitions_def for d in asset.partitions_def.partitions_defs}
        assert dimensions == {
            "campaign": dg.DynamicPartitionsDefinition(name="demo__rotation_campaign"),
            "snapshot": snapshot_partitions,
        }
        assert asset_key(f"protected_{dataset}", "demo") in asset.dependency_keys
    jobs = {job.name: job for job in defs.resolve_all_job_defs()}
    assert {"demo__start_key_rotation", "demo__rotate_keys", "demo__complete_key_rotation"} <= set(jobs)
    assert all(jobs[name].tags["fieldcrypt/operation"] == "rotate" for name in ("demo__rotate_keys",))
    rotated_partitions = defs.resolve_assets_def(asset_key("rotated_users_keys", "demo")).partitions_def
    assert defs.resolve_job_def("demo__rotate_keys").partitions_def == rotated_partitions
    schedule = defs.resolve_schedule_def("demo__scheduled_key_rotation")
    sensor = defs.resolve_sensor_def("demo__key_rotation_driver")
    assert (schedule.job_name, schedule.execution_timezone) == ("demo__start_key_rotation", "UTC")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    # the demo's orders Delta table has a rotation job of its own, partitioned by the table's partitions
    assert {job.name for job in sensor.jobs} == {
        "demo__rotate_keys",
        "demo__rotate_keys_orders",
        "demo__complete_key_rotation",
    }
