"""Beyond one machine: backfills whose steps run on two Celery workers, over PostgreSQL and Redis.

Real services on loopback, started here (tests/distributed_support.py): a PostgreSQL
cluster holds the Dagster instance (dagster-postgres: runs, events, schedules), a Redis
server is the Celery broker and result backend, and two `celery worker` processes
(dagster_celery's step task, one step at a time each) run the steps. S3 and KMS are
moto's server. Several workspaces share the deployment: acme and globex, each with its
own bucket and KMS key, are protected and rotated by backfills launched together (one per
workspace, as a backfill targets one workspace), and a third, initech, is left alone. The
code location is the production one (`pipelines.definitions`, loaded
out of process from a workspace file), with FIELDCRYPT_DAGSTER_EXECUTOR=celery as its only
difference from a single machine: no asset code changes. Backfills are launched through
GraphQL as the UI does; the backfill daemon's iteration is driven by hand and runs launch
synchronously here, while their steps go to the workers.

Run with `pytest -m distributed` (`make pytest-distributed`, and `.ci/run`); needs the
`distributed` extra and Debian's postgresql and redis-server.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.dagster_run import RunsFilter
from dagster._core.test_utils import instance_for_test
from dagster._daemon.backfill import execute_backfill_iteration
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql
from dagster_support import (
    enable,
    fresh_code_location_import,
    land,
    past_day,
    shift_to_straddle_now,
    write_workspace_file,
)
from distributed_support import celery_workers, postgres_server, redis_server, wait_for_workers

from resources import FieldcryptResource
from tests.catalogs import write_workspaces_catalog

pytestmark = pytest.mark.distributed

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCATION = "fieldcrypt_distributed"
DAYS = [past_day(5), past_day(4), past_day(3), past_day(2)]
PARTITIONS = [day.isoformat() for day in DAYS]
DATASETS = ("users", "events")
BACKFILLED = ("acme", "globex")  # protected and rotated by the backfills
UNTOUCHED = "initech"  # protected before, never targeted: its objects must not change
WORKERS = ["worker-a", "worker-b"]
BACKFILL_TIMEOUT_SECONDS = 240
WORKSPACE_TAG = "fieldcrypt/workspace"


@dataclass
class Tenant:
    """A workspace of the deployment: its resource, its bucket, and the KMS key it rotates to."""

    fieldcrypt: FieldcryptResource
    bucket: str
    next_key: str


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
def tenants(tmp_path: Path, moto_endpoint: str) -> dict[str, Tenant]:
    """acme, globex and initech in one catalog, each on a fresh bucket under its own KMS key (moto), with
    DAYS of users and events landed and two attributes enabled; initech's partitions protected already."""
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")

    def new_key() -> str:
        arn: str = kms.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
        return arn

    run = secrets.token_hex(4)
    buckets = {name: f"dist-{name}-{run}" for name in (*BACKFILLED, UNTOUCHED)}
    entries = {}
    for name, bucket in buckets.items():
        s3.create_bucket(Bucket=bucket)
        key = {"provider": "aws-kms", "kms_key": new_key(), "endpoint_url": moto_endpoint, "max_attempts": 2}
        entries[name] = {
            "lake": f"s3://{bucket}/lake",
            "s3_endpoint_url": moto_endpoint,
            "region": "us-east-1",
            "key": key,
            "partitions_start": PARTITIONS[0],
        }
    catalog = write_workspaces_catalog(tmp_path / "fieldcrypt.yaml", entries)
    tenants = {
        name: Tenant(FieldcryptResource(catalog_path=str(catalog), workspace_name=name), bucket, new_key())
        for name, bucket in buckets.items()
    }
    for tenant in tenants.values():
        for day in DAYS:
            land(tenant.fieldcrypt, day, shift_to_straddle_now(DAYS[1]), users=100, events=200)
        enable(tenant.fieldcrypt, ("users.email", "email"), ("events.properties.email", "email"))
    protect_everything(tenants[UNTOUCHED].fieldcrypt)
    return tenants


def protect_everything(fieldcrypt: FieldcryptResource) -> None:
    workspace = fieldcrypt.workspace("test")
    for dataset in DATASETS:
        for partition in PARTITIONS:
            workspace.protect(dataset, partition)


@pytest.fixture
def deployment(
    tenants: dict[str, Tenant],
    postgres_url: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    """The code location's environment, two Celery workers in it, and a Dagster instance on PostgreSQL."""
    for name in [n for n in os.environ if n.startswith("FIELDCRYPT_")]:
        monkeypatch.delenv(name)  # every setting comes from the catalog: the code location serves all three
    settings = {
        "FIELDCRYPT_CATALOG": tenants[UNTOUCHED].fieldcrypt.catalog_path,
        "FIELDCRYPT_DAGSTER_EXECUTOR": "celery",
        "FIELDCRYPT_CELERY_BROKER": f"{redis_url}/0",
        "FIELDCRYPT_CELERY_BACKEND": f"{redis_url}/1",
        # Runs of two partitions (backfills otherwise run ranges of 25): per backfill 2 runs x 2 steps, and the
        # two workspaces' backfills together, to spread over the workers.
        "FIELDCRYPT_MAX_PARTITIONS_PER_RUN": "2",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    workspace_file = write_workspace_file(tmp_path / "workspace.yaml", LOCATION)
    storage = {"storage": {"postgres": {"postgres_url": postgres_url}}}
    with (
        celery_workers(WORKERS, env, REPO_ROOT, tmp_path) as pids,
        fresh_code_location_import(),
        instance_for_test(overrides=storage, synchronous_run_coordinator=True, synchronous_run_launcher=True) as inst,
        define_out_of_process_context(str(workspace_file), None, inst) as context,
    ):
        wait_for_workers("tests.celery_app", WORKERS, env, REPO_ROOT)
        assert context.get_code_location_entries()[LOCATION].load_error is None
        yield {"instance": inst, "context": context, "pids": pids, "logs": tmp_path}


def test_protection_backfills_of_two_workspaces_spread_over_both_workers_and_each_lake_verifies(
    tenants: dict[str, Tenant], deployment: dict[str, Any], moto_endpoint: str
) -> None:
    untouched = _objects(moto_endpoint, tenants[UNTOUCHED].bucket)

    runs = _backfills(deployment, {name: [f"protected_{d}" for d in DATASETS] for name in BACKFILLED}, PARTITIONS)

    all_runs = [run for workspace_runs in runs.values() for run in workspace_runs]
    assert {run.status for run in all_runs} == {DagsterRunStatus.SUCCESS}
    assert _step_workers(deployment["instance"], all_runs) == _all_workers(deployment)
    _assert_each_run_stays_in_its_workspace(deployment["instance"], runs)
    for name in BACKFILLED:
        workspace = tenants[name].fieldcrypt.workspace("test")
        verified = {(d, p): workspace.verify(d, p) for d in DATASETS for p in PARTITIONS}
        assert all(c.pending == 0 for d, p in verified for c in workspace.status(d, p).attributes.values()), name
        assert sum(n for counts in verified.values() for n in counts.values()) > 0, name
    assert _objects(moto_endpoint, tenants[UNTOUCHED].bucket) == untouched


def test_rotation_backfills_of_two_workspaces_spread_over_both_workers_and_each_campaign_completes(
    tenants: dict[str, Tenant], deployment: dict[str, Any], moto_endpoint: str
) -> None:
    from assets.rotation import rotation_partition_key
    from assets.scope import WorkspaceScope
    from pipelines.campaign_partitions import show_campaign_partitions

    campaigns = {}
    for name in BACKFILLED:
        fieldcrypt = tenants[name].fieldcrypt
        protect_everything(fieldcrypt)
        campaign = fieldcrypt.workspace("test").start_rotation(to_kms_key=tenants[name].next_key)
        # Rotation partitions are the campaign's (pipelines.rotation): register it, as start_key_rotation does.
        show_campaign_partitions(WorkspaceScope.of(fieldcrypt.config()), deployment["instance"], campaign.campaign_id)
        campaigns[name] = campaign
    untouched = _objects(moto_endpoint, tenants[UNTOUCHED].bucket)

    runs = _backfills(
        deployment,
        {name: [f"rotated_{d}_keys" for d in DATASETS] for name in BACKFILLED},
        {
            name: [str(rotation_partition_key(campaigns[name].campaign_id, p)) for p in PARTITIONS]
            for name in BACKFILLED
        },
    )

    all_runs = [run for workspace_runs in runs.values() for run in workspace_runs]
    assert {run.status for run in all_runs} == {DagsterRunStatus.SUCCESS}
    assert _step_workers(deployment["instance"], all_runs) == _all_workers(deployment)
    _assert_each_run_stays_in_its_workspace(deployment["instance"], runs)
    for name in BACKFILLED:
        after = tenants[name].fieldcrypt.workspace("test")
        status = after.rotation_status()
        assert status.complete and not status.remaining, (name, status.remaining)  # the completion check is clean
        assert after.complete_rotation().campaign_id == campaigns[name].campaign_id
        verified = [after.verify(d, p) for d in DATASETS for p in PARTITIONS]
        assert sum(n for counts in verified for n in counts.values()) > 0, name
    assert _objects(moto_endpoint, tenants[UNTOUCHED].bucket) == untouched
    binding = tenants[UNTOUCHED].fieldcrypt.workspace("test").bindings.load()
    assert binding is not None and not binding.campaigns  # initech was never part of a campaign


def _backfills(
    deployment: dict[str, Any], assets: dict[str, list[str]], partitions: list[str] | dict[str, list[str]]
) -> dict[str, list[Any]]:
    """One backfill per workspace over its `assets`, launched together through GraphQL, driven to the end
    together; the runs of each."""
    context, instance = deployment["context"], deployment["instance"]
    backfill_ids = {}
    for workspace, names in assets.items():
        launched = execute_dagster_graphql(
            context,
            LAUNCH_PARTITION_BACKFILL_MUTATION,
            variables={
                "backfillParams": {
                    "assetSelection": [{"path": [workspace, a]} for a in names],
                    "partitionNames": partitions[workspace] if isinstance(partitions, dict) else partitions,
                    # asset-backfill runs carry the backfill's tags only: the workspace's, for the run queue
                    "tags": [{"key": WORKSPACE_TAG, "value": workspace}],
                }
            },
        )
        assert launched.data["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", launched.data
        backfill_ids[workspace] = launched.data["launchPartitionBackfill"]["backfillId"]
    logger = logging.getLogger("test_distributed")
    deadline = time.monotonic() + BACKFILL_TIMEOUT_SECONDS
    while True:
        list(execute_backfill_iteration(context.process_context, logger))
        statuses = {w: instance.get_backfill(b).status for w, b in backfill_ids.items()}
        if BulkActionStatus.REQUESTED not in statuses.values():
            break
        assert time.monotonic() < deadline, _worker_logs(deployment)
    assert set(statuses.values()) == {BulkActionStatus.COMPLETED_SUCCESS}, (statuses, _worker_logs(deployment))
    runs = {w: list(instance.get_runs(filters=RunsFilter.for_backfill(b))) for w, b in backfill_ids.items()}
    assert {w: len(r) for w, r in runs.items()} == {w: len(PARTITIONS) // 2 for w in backfill_ids}  # multi_run(2)
    return runs


def _assert_each_run_stays_in_its_workspace(instance: DagsterInstance, runs: dict[str, list[Any]]) -> None:
    """Each run is tagged with its workspace, selects its assets only and built its resource only."""
    for workspace, workspace_runs in runs.items():
        for run in workspace_runs:
            assert run.tags[WORKSPACE_TAG] == workspace
            assert {key.path[0] for key in run.asset_selection or ()} == {workspace}
            built = set()
            for record in instance.get_records_for_run(run.run_id).records:
                event = record.event_log_entry.dagster_event
                if event is not None and event.event_type == DagsterEventType.RESOURCE_INIT_SUCCESS:
                    built.update(
                        k for k in event.event_specific_data.metadata if k.startswith("fieldcrypt") and ":" not in k
                    )
            assert built == {f"fieldcrypt_{workspace}"}, (workspace, built)


def _objects(endpoint: str, bucket: str) -> dict[str, tuple[str, Any]]:
    """Every object of a bucket: (ETag, LastModified)."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    objects = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for entry in page.get("Contents", []):
            objects[entry["Key"]] = (entry["ETag"], entry["LastModified"])
    assert objects
    return objects


def _step_workers(instance: DagsterInstance, runs: list[Any]) -> set[tuple[str, int]]:
    """(Celery worker hostname, pid) of every step of `runs`, from the runs' own events."""
    run_ids = {run.run_id for run in runs}
    placed: set[tuple[str, int]] = set()
    for run_id in run_ids:
        records = instance.get_records_for_run(run_id).records
        starts = {
            r.event_log_entry.step_key: r.event_log_entry.dagster_event.pid for r in records if _is(r, "STEP_START")
        }
        hosts: dict[str, str] = {}
        for record in records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if event is None or event.event_type != DagsterEventType.ENGINE_EVENT or entry.step_key is None:
                continue
            worker = event.engine_event_data.metadata.get("Celery worker")
            if worker is not None:
                hosts[entry.step_key] = str(worker.value)
        assert set(starts) == set(hosts) and starts, (run_id, starts, hosts)
        placed.update((hosts[step].partition("@")[0], pid) for step, pid in starts.items())
    return placed


def _all_workers(deployment: dict[str, Any]) -> set[tuple[str, int]]:
    return set(deployment["pids"].items())


def _is(record: Any, event_type: str) -> bool:
    event = record.event_log_entry.dagster_event
    return event is not None and event.event_type_value == event_type


def _worker_logs(deployment: dict[str, Any]) -> str:
    return "\n".join((deployment["logs"] / f"{name}.log").read_text()[-3000:] for name in WORKERS)
