"""Jobs of tests/test_dagster_executor.py, in a module the run's step processes can import (`tests.executor_jobs`)."""

import dagster as dg

from pipelines.executor import by_step_count_executor


@dg.op
def first() -> int:
    return 1


@dg.op
def second(value: int) -> int:
    return value + 1


@dg.job(executor_def=by_step_count_executor)
def one_step() -> None:
    first()


@dg.job(executor_def=by_step_count_executor)
def two_steps() -> None:
    second(first())


def make_one_step() -> dg.JobDefinition:
    return one_step


def make_two_steps() -> dg.JobDefinition:
    return two_steps
