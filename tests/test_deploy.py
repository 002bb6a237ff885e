"""deploy/: what can be checked without a cluster or a Docker engine.

The instance file loads as a Dagster instance whose run queue and pools are the intended
ones, and (with the `distributed` extra) each class's config validates against
dagster-postgres's and dagster-k8s's own schemas; the Helm values say the same as the
instance file; the Dockerfile copies what exists and starts the code location that exists.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from fieldcrypt.catalog import CATALOG_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"


def instance_yaml() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    return loaded


def helm_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())
    return loaded


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.fixture
def deploy_instance(tmp_path: Path) -> DagsterInstance:
    """deploy/dagster.yaml as a live instance, with its storage and run launcher swapped for local ones."""
    config = {k: v for k, v in instance_yaml().items() if k not in ("storage", "run_launcher")}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path)))


def test_instance_queue_limits_runs_per_workspace_and_rotations(deploy_instance: DagsterInstance) -> None:
    queue = deploy_instance.get_concurrency_config().run_queue_config
    assert queue is not None
    assert {"key": "fieldcrypt/workspace", "value": {"applyLimitPerUniqueValue": True}, "limit": 4} in (
        queue.tag_concurrency_limits
    )
    assert {"key": "fieldcrypt/operation", "value": "rotate", "limit": 2} in queue.tag_concurrency_limits


def test_fifth_run_of_a_workspace_waits_while_another_workspace_starts(deploy_instance: DagsterInstance) -> None:
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    queue = deploy_instance.get_concurrency_config().run_queue_config
    assert queue is not None

    def run(workspace: str, n: int) -> DagsterRun:
        return DagsterRun(
            job_name="protect_snapshots", run_id=f"{workspace}-{n}", tags={"fieldcrypt/workspace": workspace}
        )

    # The decision the queued-run daemon makes (Dagster's own counter) with four of acme's runs in progress.
    counter = TagConcurrencyLimitsCounter(queue.tag_concurrency_limits, [run("acme", n) for n in range(4)])

    assert counter.is_blocked(run("acme", 4)) and not counter.is_blocked(run("globex", 0))


def test_instance_gives_every_pool_including_kms_a_default_limit(deploy_instance: DagsterInstance) -> None:
    pools = deploy_instance.get_concurrency_config().pool_config
    assert pools.default_pool_limit == 8


def test_instance_monitors_runs_and_frees_slots_of_dead_ones(deploy_instance: DagsterInstance) -> None:
    assert deploy_instance.run_monitoring_enabled
    assert deploy_instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 60


def test_helm_values_render_the_same_queue_pools_and_monitoring_as_the_instance_file() -> None:
    instance, values = instance_yaml(), helm_values()
    runs = instance["concurrency"]["runs"]
    assert values["concurrency"]["runs"] == {
        "maxConcurrentRuns": runs["max_concurrent_runs"],
        "tagConcurrencyLimits": runs["tag_concurrency_limits"],
    }
    assert values["concurrency"]["pools"] == {
        "defaultLimit": instance["concurrency"]["pools"]["default_limit"],
        "granularity": instance["concurrency"]["pools"]["granularity"],
    }
    camel = {re.sub(r"_(\w)", lambda m: m.group(1).upper(), k): v for k, v in instance["run_monitoring"].items()}
    assert values["dagsterDaemon"]["runMonitoring"] == camel


def test_helm_values_launch_runs_as_kubernetes_jobs_on_external_postgres() -> None:
    values, instance = helm_values(), instance_yaml()
    assert values["runLauncher"]["type"] == "K8sRunLauncher" == instance["run_launcher"]["class"]
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    assert values["postgresql"]["postgresqlScheme"] == instance["storage"]["postgres"]["postgres_db"]["scheme"]


def test_helm_user_deployment_serves_the_code_location_the_dockerfile_starts() -> None:
    (deployment,) = helm_values()["dagster-user-deployments"]["deployments"]
    (cmd,) = [args for kind, args in dockerfile_instructions() if kind == "CMD"]
    started = yaml.safe_load(cmd)  # the exec form is a JSON list
    assert started[:3] == ["dagster", "api", "grpc"]
    served = ["--module-name", "pipelines.definitions", "--attribute", "defs", "--working-directory", "/opt/fieldcrypt"]
    assert started[3:9] == deployment["dagsterApiGrpcArgs"]
    assert deployment["dagsterApiGrpcArgs"] == served
    assert "\ndefs = " in (REPO_ROOT / "pipelines" / "definitions.py").read_text()


def test_dockerfile_copies_only_what_the_project_has() -> None:
    copied = [shlex.split(args) for kind, args in dockerfile_instructions() if kind == "COPY"]
    sources = [part for args in copied if not args[0].startswith("--from") for part in args[:-1]]
    assert sources and all((REPO_ROOT / source).exists() for source in sources), sources
    packages = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert {p.rstrip("*") for p in packages["include"]} <= set(sources)  # the wheel's packages


def test_dockerfile_ships_the_code_location_workspace_yaml_loads() -> None:
    location = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    copied = {shlex.split(args)[0] for kind, args in dockerfile_instructions() if kind == "COPY"}
    package = location["module_name"].split(".")[0]
    assert {package, "assets", "resources", "workspace.yaml"} <= copied


def test_dockerfile_installs_an_extra_the_project_declares() -> None:
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installs = " ".join(args for kind, args in dockerfile_instructions() if kind == "RUN" and "pip " in args)
    named = set(re.findall(r"\[(\w+)\]", installs))
    assert named and named <= set(extras), named


def test_dockerfile_sets_the_catalog_variable_the_code_location_reads() -> None:
    env = " ".join(args for kind, args in dockerfile_instructions() if kind == "ENV")
    assert f"{CATALOG_ENV}=/etc/fieldcrypt/fieldcrypt.yaml" in env
    mounts = helm_values()["dagster-user-deployments"]["deployments"][0]["volumeMounts"]
    assert [m["mountPath"] for m in mounts] == ["/etc/fieldcrypt"]


@pytest.fixture
def pg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, "placeholder")


@pytest.mark.distributed
def test_instance_storage_validates_against_dagster_postgres(pg_env: None) -> None:
    from dagster._config import process_config
    from dagster_postgres import DagsterPostgresStorage

    storage = process_config(DagsterPostgresStorage.config_type(), instance_yaml()["storage"]["postgres"])

    assert storage.success, storage.errors


@pytest.mark.distributed
def test_instance_run_launcher_validates_against_dagster_k8s() -> None:
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher

    launcher = process_config(K8sRunLauncher.config_type(), instance_yaml()["run_launcher"]["config"])

    assert launcher.success, launcher.errors


@pytest.mark.distributed
def test_instance_storage_url_names_a_postgres_driver_that_is_installed(pg_env: None) -> None:
    import sqlalchemy
    from dagster._config import process_config
    from dagster_postgres import DagsterPostgresStorage
    from dagster_postgres.utils import pg_url_from_config

    storage = process_config(DagsterPostgresStorage.config_type(), instance_yaml()["storage"]["postgres"])
    url = pg_url_from_config(storage.value)

    engine = sqlalchemy.create_engine(url)  # imports the driver; connects only when used

    assert engine.dialect.driver == "psycopg2"
