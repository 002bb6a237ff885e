"""The code location's default executor (pipelines/executor.py): a run of one step runs in the run's process,
a run of several steps runs each step in a process of its own. Real runs on a test instance."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg
from dagster._core.test_utils import instance_for_test

from tests.executor_jobs import make_one_step, make_two_steps


def _engine_messages(make: Callable[[], dg.JobDefinition]) -> list[str]:
    """The engine's messages of a run of the job `make` returns, loaded as a run worker loads it."""
    with instance_for_test() as instance, dg.execute_job(dg.reconstructable(make), instance=instance) as result:
        assert result.success
        return [event.message or "" for event in result.all_events if event.event_type_value == "ENGINE_EVENT"]


def test_run_of_one_step_executes_in_the_run_process() -> None:
    messages = _engine_messages(make_one_step)

    assert any(message.startswith("Executing steps in process") for message in messages), messages


def test_run_of_several_steps_executes_each_step_in_a_process_of_its_own() -> None:
    messages = _engine_messages(make_two_steps)

    assert any("multiprocess executor" in message for message in messages), messages
