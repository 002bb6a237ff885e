"""The executor of the code location's runs: one process for a run of one step, a process per step otherwise.

A ranged protection, rotation or re-index run of small partitions spends most of its time starting
up: ~2.2 s for the run's process, then ~2.7 s for each step's own process under the multiprocess
executor, for 1.3-1.5 s of work (issue 20). A run of one step gains nothing from a step process (there
is nothing to run beside it), so it runs in the run's process; a run of several steps (the protect job
covers users and events) keeps one process per step so large partitions of different datasets are
worked on in parallel. FIELDCRYPT_DAGSTER_EXECUTOR=in_process / multiprocess forces either.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster._core.definitions.executor_definition import (
    _core_in_process_executor_creation,
    _core_multiprocess_executor_creation,
    multiple_process_executor_requirements,
)
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.base import Executor

_DEFAULT_CONFIG: dict[str, Any] = {"retries": {"enabled": {}}}


class ByStepCountExecutor(Executor):
    """In process for a plan of one step, multiprocess for more."""

    def __init__(self) -> None:
        self.single = _core_in_process_executor_creation(_DEFAULT_CONFIG)
        self.several = _core_multiprocess_executor_creation(_DEFAULT_CONFIG)

    def choose(self, execution_plan: Any) -> Executor:
        return self.single if len(execution_plan.step_keys_to_execute) <= 1 else self.several

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[dg.DagsterEvent]:
        return self.choose(execution_plan).execute(plan_context, execution_plan)

    @property
    def retries(self) -> RetryMode:
        return self.several.retries


@dg.executor(name="by_step_count", requirements=multiple_process_executor_requirements())
def by_step_count_executor(init_context: dg.InitExecutorContext) -> Executor:
    return ByStepCountExecutor()
