"""The fieldcrypt code location: `Definitions.merge` of each served workspace's definitions, built from the catalog.

Importing it reads the catalog (`resources.settings`: fieldcrypt.yaml, or $FIELDCRYPT_CATALOG,
with the environment's overrides) and makes no network or KMS call. Every served workspace
gets, under its own name (assets/scope.py), its datasets' landed, protected, rotation,
re-index and erasure assets, its protect, enable, history, rotation and erasure jobs, schedules and the rotation
driver sensor; a new dataset or workspace is one catalog entry and a code-location reload.
By default a run of one step runs in the run's process and a run of several steps runs each in a
process of its own (pipelines/executor.py); FIELDCRYPT_DAGSTER_EXECUTOR=in_process runs every run's
steps in one process, =multiprocess every step in its own.
"""

from __future__ import annotations

import os

import dagster as dg

from assets import build_assets
from fieldcrypt.catalog import workspace_ident
from fieldcrypt.errors import ConfigError
from fieldcrypt.workspace import WorkspaceConfig
from pipelines.erasure import build_erasure_definitions
from pipelines.executor import by_step_count_executor
from pipelines.jobs import enable_attribute_job, encrypt_history_job, protect_jobs
from pipelines.observation import build_observation_definitions
from pipelines.rotation import build_rotation_definitions
from pipelines.schedules import build_schedule_definitions
from resources.settings import BROKEN, SERVED, resources_from_catalog


def _executor_defs() -> dg.Definitions:
    choice = os.environ.get("FIELDCRYPT_DAGSTER_EXECUTOR", "by_step_count")
    if choice == "by_step_count":  # pipelines/executor.py: one process for a one-step run
        return dg.Definitions(executor=by_step_count_executor)
    if choice == "in_process":
        return dg.Definitions(executor=dg.in_process_executor)
    if choice == "multiprocess":
        return dg.Definitions(executor=dg.multiprocess_executor)
    if choice == "celery":  # steps on Celery workers (the `distributed` extra; deploy/README.md)
        from dagster_celery import celery_executor

        broker = {"broker": {"env": "FIELDCRYPT_CELERY_BROKER"}, "backend": {"env": "FIELDCRYPT_CELERY_BACKEND"}}
        return dg.Definitions(executor=celery_executor.configured(broker))
    raise ConfigError(
        f"FIELDCRYPT_DAGSTER_EXECUTOR={choice!r} is not one of by_step_count, in_process, multiprocess, celery"
    )


def workspace_definitions(config: WorkspaceConfig) -> dg.Definitions:
    """Everything one workspace has in the code location (its resource is bound by the code location)."""
    assets = build_assets(config)
    protect = protect_jobs(assets)
    return dg.Definitions.merge(
        assets.definitions(),
        dg.Definitions(jobs=[*protect, enable_attribute_job(assets), encrypt_history_job(assets.scope)]),
        build_schedule_definitions(assets.scope, assets.groups, protect),
        build_rotation_definitions(assets),  # master-key rotation: its jobs, schedule and sensor
        build_erasure_definitions(assets),  # erasure requests: record one, erase partitions (a backfill)
        build_observation_definitions(assets),  # landed snapshots observed; stale protection re-run
    )


def catalog_error_sensor(workspace: str, problem: str) -> dg.SensorDefinition:
    """A workspace whose catalog entry does not validate is not served; this sensor says so on every tick."""

    @dg.sensor(
        name=f"{workspace_ident(workspace)}__catalog_error",
        minimum_interval_seconds=3600,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Workspace {workspace} is not served: its catalog entry does not validate. {problem}",
    )
    def catalog_error(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        raise ConfigError(f"workspace {workspace} is not served: {problem}")

    return catalog_error


defs = dg.Definitions.merge(
    *(workspace_definitions(config) for config in SERVED),
    dg.Definitions(sensors=[catalog_error_sensor(name, problem) for name, problem in BROKEN.items()]),
    dg.Definitions(resources=resources_from_catalog()),
    _executor_defs(),
)
