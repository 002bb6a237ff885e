"""The fieldcrypt code location: `Definitions.merge` of small per-area definitions.

Importing it reads the environment (see `resources.environment`) and makes no network or
KMS call. FIELDCRYPT_DAGSTER_EXECUTOR=in_process runs each run's steps in one process
(tests, small machines); by default steps run in parallel processes.
"""

from __future__ import annotations

import os

import dagster as dg

import assets
from pipelines import jobs, rotation, schedules
from resources import resources_from_env


def _executor_defs() -> dg.Definitions:
    choice = os.environ.get("FIELDCRYPT_DAGSTER_EXECUTOR", "multiprocess")
    if choice == "in_process":
        return dg.Definitions(executor=dg.in_process_executor)
    if choice == "multiprocess":
        return dg.Definitions(executor=dg.multiprocess_executor)
    raise ValueError(f"FIELDCRYPT_DAGSTER_EXECUTOR={choice!r} is not one of in_process, multiprocess")


defs = dg.Definitions.merge(
    assets.defs,
    jobs.defs,
    schedules.defs,
    rotation.defs,  # master-key rotation: its assets, jobs, schedule and sensor
    dg.Definitions(resources=resources_from_env()),
    _executor_defs(),
)
