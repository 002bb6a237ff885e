"""The instance settings `make ui` and `make demo` put in DAGSTER_HOME (dagster_home/dagster.yaml)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "dagster_home" / "dagster.yaml"


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """An instance configured as `make ui` configures it: the shipped file copied into DAGSTER_HOME."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(SHIPPED, home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as opened:
        yield opened


def test_a_fresh_instance_does_not_open_the_community_modal(instance: dg.DagsterInstance) -> None:
    # The UI's `shouldShowNux` is `instance.nux_enabled and not seen before`.
    assert instance.nux_enabled is False


def test_a_fresh_instance_keeps_run_monitoring_and_the_run_queue_limits(instance: dg.DagsterInstance) -> None:
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_max_runtime_seconds > 0
    assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 4  # type: ignore[union-attr]


def test_no_instance_file_sits_where_dagster_dev_runs() -> None:
    # `dagster dev` (run from the project root by `make ui`) warns about a dagster.yaml or dagster.yml
    # in its working folder that is not DAGSTER_HOME.
    assert not (ROOT / "dagster.yaml").exists() and not (ROOT / "dagster.yml").exists()


def test_make_ui_and_the_demo_copy_the_instance_file_from_its_folder() -> None:
    assert "cp dagster_home/dagster.yaml $(DEMO_DIR)/dagster_home/dagster.yaml" in (ROOT / "Makefile").read_text()
    assert 'PROJECT_ROOT / "dagster_home" / "dagster.yaml"' in (ROOT / "demo" / "run.py").read_text()
