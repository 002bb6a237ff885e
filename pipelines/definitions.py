"""The fieldcrypt code location: `Definitions.merge` of small per-area definitions, built from the catalog.

Importing it reads the catalog (`resources.settings`: fieldcrypt.yaml, or $FIELDCRYPT_CATALOG,
with the environment's overrides) and makes no network or KMS call. Every declared dataset
gets its landed, protected and rotation assets; a new dataset is one catalog entry and a
code-location reload. FIELDCRYPT_DAGSTER_EXECUTOR=in_process runs each run's steps in one
process (tests, small machines); by default steps run in parallel processes.
"""

from __future__ import annotations

import os

import dagster as dg

from assets import build_assets
from fieldcrypt.errors import ConfigError
from pipelines.jobs import enable_attribute_job, encrypt_history_job, protect_jobs
from pipelines.rotation import build_rotation_definitions
from pipelines.schedules import build_schedule_definitions
from resources.settings import WORKSPACE, resources_from_catalog


def _executor_defs() -> dg.Definitions:
    choice = os.environ.get("FIELDCRYPT_DAGSTER_EXECUTOR", "multiprocess")
    if choice == "in_process":
        return dg.Definitions(executor=dg.in_process_executor)
    if choice == "multiprocess":
        return dg.Definitions(executor=dg.multiprocess_executor)
    if choice == "celery":  # steps on Celery workers (the `distributed` extra; deploy/README.md)
        from dagster_celery import celery_executor

        broker = {"broker": {"env": "FIELDCRYPT_CELERY_BROKER"}, "backend": {"env": "FIELDCRYPT_CELERY_BACKEND"}}
        return dg.Definitions(executor=celery_executor.configured(broker))
    raise ConfigError(f"FIELDCRYPT_DAGSTER_EXECUTOR={choice!r} is not one of in_process, multiprocess, celery")


dataset_assets = build_assets(WORKSPACE.datasets)
protect = protect_jobs(dataset_assets)

defs = dg.Definitions.merge(
    dataset_assets.definitions(),
    dg.Definitions(jobs=[*protect, enable_attribute_job(dataset_assets), encrypt_history_job()]),
    build_schedule_definitions(dataset_assets.groups, protect),
    build_rotation_definitions(dataset_assets),  # master-key rotation: its jobs, schedule and sensor
    dg.Definitions(resources=resources_from_catalog()),
    _executor_defs(),
)
