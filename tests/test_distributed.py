"""Beyond one machine: backfills whose steps run on two Celery workers, over PostgreSQL and Redis.

Real services on loopback, started here (tests/distributed_support.py): a PostgreSQL
cluster holds the Dagster instance (dagster-postgres: runs, events, schedules), a Redis
server is the Celery broker and result backend, and two `celery worker` processes
(dagster_celery's step task, one step at a time each) run the steps. S3 and KMS are
moto's server. The code location is the production one (`pipelines.definitions`, loaded
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
    WORKSPACE,
    enable,
    fresh_code_location_import,
    kms_fieldcrypt,
    land,
    past_day,
    shift_to_straddle_now,
    write_workspace_file,
)
from distributed_support import celery_workers, postgres_server, redis_server, wait_for_workers

from resources import FieldcryptResource

pytestmark = pytest.mark.distributed

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCATION = "fieldcrypt_distributed"
DAYS = [past_day(5), past_day(4), past_day(3), past_day(2)]
WORKERS = ["worker-a", "worker-b"]
BACKFILL_TIMEOUT_SECONDS = 150


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
def lake(tmp_path: Path, moto_endpoint: str) -> tuple[FieldcryptResource, str]:
    """Workspace acme on a fresh `s3://` lake under a new KMS key, both on moto; and a second key to rotate to."""
    bucket = f"dist-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")

    def new_key() -> str:
        arn: str = kms.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
        return arn

    fieldcrypt = kms_fieldcrypt(tmp_path, f"s3://{bucket}/lake", new_key(), moto_endpoint)
    for day in DAYS:
        land(fieldcrypt, day, shift_to_straddle_now(DAYS[1]), users=150, events=300)
    enable(fieldcrypt, ("users.email", "email"), ("events.properties.email", "email"))
    return fieldcrypt, new_key()


@pytest.fixture
def deployment(
    lake: tuple[FieldcryptResource, str],
    postgres_url: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    """The code location's environment, two Celery workers in it, and a Dagster instance on PostgreSQL."""
    fieldcrypt, _ = lake
    settings = {
        "FIELDCRYPT_CATALOG": fieldcrypt.catalog_path,
        "FIELDCRYPT_WORKSPACE": WORKSPACE,
        "FIELDCRYPT_DAGSTER_EXECUTOR": "celery",
        "FIELDCRYPT_CELERY_BROKER": f"{redis_url}/0",
        "FIELDCRYPT_CELERY_BACKEND": f"{redis_url}/1",
        "FIELDCRYPT_PARTITIONS_START": DAYS[0].isoformat(),
        # One run per partition (backfills otherwise run ranges of 25): 4 runs x 2 steps to spread over the workers.
        "FIELDCRYPT_MAX_PARTITIONS_PER_RUN": "1",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FIELDCRYPT_PARTITIONS_END", raising=False)
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


def test_protection_backfill_runs_its_steps_on_both_workers_and_the_lake_verifies(
    lake: tuple[FieldcryptResource, str], deployment: dict[str, Any]
) -> None:
    fieldcrypt, _ = lake
    partitions = [day.isoformat() for day in DAYS]

    runs = _backfill(deployment, ["protected_users", "protected_events"], partitions)

    assert {run.status for run in runs} == {DagsterRunStatus.SUCCESS}
    assert _step_workers(deployment["instance"], runs) == _all_workers(deployment)
    workspace = fieldcrypt.workspace("test")
    verified = {(d, p): workspace.verify(d, p) for d in ("users", "events") for p in partitions}
    assert all(c.pending == 0 for d, p in verified for c in workspace.status(d, p).attributes.values())
    assert sum(n for counts in verified.values() for n in counts.values()) > 0


def test_rotation_backfill_runs_its_steps_on_both_workers_and_completes(
    lake: tuple[FieldcryptResource, str], deployment: dict[str, Any]
) -> None:
    from assets.rotation import rotation_partition_key
    from assets.scope import WorkspaceScope
    from pipelines.rotation import show_campaign_partitions

    fieldcrypt, new_key = lake
    partitions = [day.isoformat() for day in DAYS]
    workspace = fieldcrypt.workspace("test")
    for dataset in ("users", "events"):
        for partition in partitions:
            workspace.protect(dataset, partition)
    campaign = workspace.start_rotation(to_kms_key=new_key)
    # Rotation partitions are the campaign's (pipelines.rotation): register it, as start_key_rotation does.
    show_campaign_partitions(WorkspaceScope.of(fieldcrypt.config()), deployment["instance"], campaign.campaign_id)
    keys = [str(rotation_partition_key(campaign.campaign_id, partition)) for partition in partitions]

    runs = _backfill(deployment, ["rotated_users_keys", "rotated_events_keys"], keys)

    assert {run.status for run in runs} == {DagsterRunStatus.SUCCESS}
    assert _step_workers(deployment["instance"], runs) == _all_workers(deployment)
    after = fieldcrypt.workspace("test")
    assert after.complete_rotation().campaign_id == campaign.campaign_id  # refuses while an old wrapped key remains
    verified = [after.verify(d, p) for d in ("users", "events") for p in partitions]
    assert sum(n for counts in verified for n in counts.values()) > 0


def _backfill(deployment: dict[str, Any], assets: list[str], partitions: list[str]) -> list[Any]:
    context, instance = deployment["context"], deployment["instance"]
    launched = execute_dagster_graphql(
        context,
        LAUNCH_PARTITION_BACKFILL_MUTATION,
        variables={
            "backfillParams": {
                "assetSelection": [{"path": [WORKSPACE, a]} for a in assets],
                "partitionNames": partitions,
            }
        },
    )
    assert launched.data["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", launched.data
    backfill_id = launched.data["launchPartitionBackfill"]["backfillId"]
    logger = logging.getLogger("test_distributed")
    deadline = time.monotonic() + BACKFILL_TIMEOUT_SECONDS
    while True:
        list(execute_backfill_iteration(context.process_context, logger))
        backfill = instance.get_backfill(backfill_id)
        if backfill.status != BulkActionStatus.REQUESTED:
            break
        assert time.monotonic() < deadline, _worker_logs(deployment)
    runs: list[Any] = list(instance.get_runs(filters=RunsFilter.for_backfill(backfill_id)))
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, (backfill.status, _worker_logs(deployment))
    assert len(runs) == len(partitions)
    return runs


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
