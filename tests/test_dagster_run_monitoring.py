"""A SIGKILLed run does not hold its `kms` pool slot forever: run monitoring fails it, the slot is freed.

A real run (tests/dagster_monitoring_job.py) is launched in a child process against a
real sqlite instance configured from the repository's dagster.yaml; its step claims a
`kms` slot and the whole process group is SIGKILLed. The daemon's two iterations that
matter - run monitoring and the concurrency-slot sweep - are then driven in this process
(a full `dagster-daemon` would need minutes of polling). Two settings are shortened for
the test and say so: `max_runtime_seconds` and `free_slots_after_run_end_seconds` (1 s
each instead of hours/a minute); the iterations only compare timestamps, so the test
waits for those timestamps to pass rather than asserting on time. The iterations are
given a minimal workspace context: they only use its instance (no code server is
needed, since the default run launcher cannot resume runs).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._daemon.monitoring.concurrency import execute_concurrency_slots_iteration
from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration

ROOT = Path(__file__).resolve().parent.parent
SHORTENED = {"max_runtime_seconds": 1, "free_slots_after_run_end_seconds": 1}
WAIT_LIMIT = 60.0  # a bound for polling loops, never asserted on


class _DaemonContext:
    """What the monitoring iterations read from a workspace process context."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance

    def create_request_context(self) -> Any:
        return None


def _wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    settings = yaml.safe_load((ROOT / "dagster_home" / "dagster.yaml").read_text())
    settings["run_monitoring"].update(SHORTENED)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as opened:
        opened.event_log_storage.set_concurrency_slots("kms", 1)
        yield opened


def _killed_run_holding_a_kms_slot(instance: dg.DagsterInstance, tmp_path: Path) -> str:
    marker = tmp_path / "run_id"
    env = {**os.environ, "FIELDCRYPT_TEST_MARKER": str(marker)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.dagster_monitoring_job"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "child.log").open("w"),
    )
    try:
        _wait_until(lambda: bool(marker.exists() and marker.read_text()) or child.poll() is not None, "the run")
        assert marker.exists(), (tmp_path / "child.log").read_text()[-2000:]
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    return marker.read_text()


def _claimed(instance: dg.DagsterInstance) -> list[str]:
    return [slot.run_id for slot in instance.event_log_storage.get_concurrency_info("kms").claimed_slots]


def test_repository_dagster_yaml_enables_run_monitoring_and_frees_slots_of_ended_runs() -> None:
    monitoring = yaml.safe_load((ROOT / "dagster_home" / "dagster.yaml").read_text())["run_monitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["max_runtime_seconds"] > 0
    assert monitoring["free_slots_after_run_end_seconds"] > 0


def test_sigkilled_run_is_failed_by_run_monitoring_and_its_kms_slot_freed(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    run_id = _killed_run_holding_a_kms_slot(instance, tmp_path)
    assert _claimed(instance) == [run_id]
    record = instance.get_run_record_by_id(run_id)
    assert record is not None and record.dagster_run.status == dg.DagsterRunStatus.STARTED
    start = record.start_time or 0.0
    _wait_until(lambda: time.time() > start + SHORTENED["max_runtime_seconds"], "the run's maximum runtime")

    list(execute_run_monitoring_iteration(_DaemonContext(instance), logging.getLogger("test")))  # type: ignore[arg-type]

    failed = instance.get_run_record_by_id(run_id)
    assert failed is not None and failed.dagster_run.status == dg.DagsterRunStatus.FAILURE
    end = failed.end_time or 0.0
    _wait_until(lambda: time.time() > end + SHORTENED["free_slots_after_run_end_seconds"], "the slot grace period")

    list(execute_concurrency_slots_iteration(_DaemonContext(instance), logging.getLogger("test")))  # type: ignore[arg-type]

    assert _claimed(instance) == []
