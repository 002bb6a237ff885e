"""The code location as Dagster loads it: what it defines, how it picks resources, what importing it does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from fieldcrypt import KeyProviderError
from resources import FieldcryptResource
from resources.environment import DEFAULT_KEYSTORE, DEFAULT_LAKE, resources_from_env

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTECTED = ("protected_users", "protected_events")
CHECK_NAMES = {"no_plaintext_after_enablement", "data_keys_unwrap", "row_count_preserved"}


def _subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDCRYPT_")}
    return {**env, "DAGSTER_HOME": str(tmp_path), **extra}


def test_workspace_yaml_validates_with_the_dagster_cli(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())

    completed = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=_subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    assert "All code locations passed validation" in completed.stderr + completed.stdout


def test_importing_the_code_location_makes_no_network_or_kms_call(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise AssertionError("network call while importing the code location")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        import dagster as dg
        from pipelines.definitions import defs

        dg.Definitions.validate_loadable(defs)
        resource = defs.resources["fieldcrypt"]
        print(resource.key.provider, resource.lake.uri.env_var_name, resource.key.kms_key_arn.env_var_name)
        """
    )
    env = _subprocess_env(
        tmp_path,
        FIELDCRYPT_KEY_PROVIDER="aws-kms",
        FIELDCRYPT_KMS_KEY="arn:aws:kms:eu-west-1:111122223333:key/00000000-0000-0000-0000-000000000000",
        FIELDCRYPT_KMS_ENDPOINT_URL="http://kms.invalid",
        FIELDCRYPT_LAKE="s3://customer-bucket/lake",
        FIELDCRYPT_S3_ENDPOINT_URL="http://s3.invalid",
    )

    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    assert completed.returncode == 0, completed.stderr
    # the lake and key are EnvVars: their values are read when a run starts, not at import
    assert completed.stdout.split() == ["aws-kms", "FIELDCRYPT_LAKE", "FIELDCRYPT_KMS_KEY"]


def test_protection_assets_run_one_partition_per_run_in_the_kms_pool_with_three_checks() -> None:
    from pipelines.definitions import defs

    for name in PROTECTED:
        asset = defs.resolve_assets_def(name)
        assert asset.backfill_policy == dg.BackfillPolicy.multi_run(1)
        assert asset.op.pool == "kms"
        assert {key.name for key in asset.check_keys} == CHECK_NAMES
        assert isinstance(asset.partitions_def, dg.DailyPartitionsDefinition)
        dataset = name.removeprefix("protected_")
        assert dg.AssetKey(dataset) in asset.dependency_keys
    assert {job.name for job in defs.resolve_all_job_defs()} >= {"protect_snapshots", "enable_attribute"}


def test_daily_schedule_protects_the_newest_partition() -> None:
    from pipelines.definitions import defs

    schedule = defs.resolve_schedule_def("protect_newest_partition")
    now = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0)
    yesterday = (now - timedelta(days=1)).date().isoformat()

    with dg.build_schedule_context(scheduled_execution_time=now) as context:
        (request,) = schedule.evaluate_tick(context).run_requests or []

    assert schedule.job_name == "protect_snapshots"
    assert request.partition_key == yesterday


def test_resources_default_to_the_local_demo_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FIELDCRYPT_KEY_PROVIDER", "FIELDCRYPT_LAKE", "FIELDCRYPT_KEYSTORE", "FIELDCRYPT_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)

    resource: FieldcryptResource = resources_from_env()["fieldcrypt"]

    assert (resource.key.provider, resource.key.keystore_path, resource.lake.uri) == (
        "local",
        DEFAULT_KEYSTORE,
        DEFAULT_LAKE,
    )


def test_aws_kms_without_a_key_arn_is_refused_when_the_location_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDCRYPT_KEY_PROVIDER", "aws-kms")
    monkeypatch.delenv("FIELDCRYPT_KMS_KEY", raising=False)

    with pytest.raises(KeyProviderError, match="needs FIELDCRYPT_KMS_KEY"):
        resources_from_env()


def test_unknown_key_provider_is_refused_when_the_location_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDCRYPT_KEY_PROVIDER", "vault")

    with pytest.raises(KeyProviderError, match="'vault' is not one of local, aws-kms"):
        resources_from_env()
