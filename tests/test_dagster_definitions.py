"""The code location as Dagster loads it: what it defines, how it picks resources, what importing it does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster_support import asset_key, fresh_code_location_import, node

from fieldcrypt import ConfigError
from resources import FieldcryptResource
from tests.catalogs import demo_datasets_yaml, write_catalog

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTECTED = ("protected_users", "protected_events")
LOCAL_KEY = {"provider": "local", "keystore": "keys/keystore.json"}
CHECK_NAMES = {"no_plaintext_after_enablement", "data_keys_unwrap", "row_count_preserved", "no_undeclared_pii"}


def _subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDCRYPT_")}
    return {**env, "DAGSTER_HOME": str(tmp_path), **extra}


def test_workspace_yaml_validates_with_the_dagster_cli(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())

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
        resource = defs.resources["fieldcrypt_demo"]
        config = resource.config()
        print(resource.workspace_name, config.key.provider, config.lake_uri, config.key.kms_key)
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
    # the environment overrides the catalog's demo workspace: S3 lake and KMS key, and no call made to either
    assert completed.stdout.split() == [
        "demo",
        "aws-kms",
        "s3://customer-bucket/lake",
        "arn:aws:kms:eu-west-1:111122223333:key/00000000-0000-0000-0000-000000000000",
    ]


def test_protection_assets_run_ranges_of_100_partitions_in_the_workspaces_kms_pool_with_three_checks() -> None:
    from pipelines.definitions import defs

    for name in PROTECTED:
        asset = defs.resolve_assets_def(asset_key(name, "demo"))
        assert asset.backfill_policy == dg.BackfillPolicy.multi_run(100)
        assert asset.op.pool == "kms_demo"
        assert {k for k in asset.required_resource_keys if k.startswith("fieldcrypt")} == {"fieldcrypt_demo"}
        assert {key.name for key in asset.check_keys} == CHECK_NAMES
        assert isinstance(asset.partitions_def, dg.DailyPartitionsDefinition)
        dataset = name.removeprefix("protected_")
        assert asset_key(dataset, "demo") in asset.dependency_keys
    jobs = {job.name: job for job in defs.resolve_all_job_defs()}
    assert {"demo__protect_snapshots", "demo__enable_attribute"} <= set(jobs)
    assert jobs["demo__protect_snapshots"].tags["fieldcrypt/workspace"] == "demo"


def test_daily_schedule_protects_the_newest_partition() -> None:
    from pipelines.definitions import defs

    schedule = defs.resolve_schedule_def(node("protect_newest_partition", "demo"))
    now = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0)
    yesterday = (now - timedelta(days=1)).date().isoformat()

    with dg.build_schedule_context(scheduled_execution_time=now) as context:
        (request,) = schedule.evaluate_tick(context).run_requests or []

    assert schedule.job_name == "demo__protect_snapshots"
    assert request.partition_key == yesterday


def test_resources_default_to_the_shipped_catalogs_demo_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("FIELDCRYPT_")]:
        monkeypatch.delenv(name)

    with fresh_code_location_import():
        from resources.settings import resources_from_catalog

        resource: FieldcryptResource = resources_from_catalog()["fieldcrypt_demo"]
        config = resource.config()

    assert (resource.catalog_path, resource.workspace_name) == (str(REPO_ROOT / "fieldcrypt.yaml"), "demo")
    assert (config.key.provider, config.key.keystore_path, config.lake_uri) == (
        "local",
        str(REPO_ROOT / "demo-workspace" / "keys" / "keystore.json"),
        str(REPO_ROOT / "demo-workspace" / "lake"),
    )


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("FIELDCRYPT_KEY_PROVIDER", "aws-kms", "workspaces.demo.key.kms_key: Field required"),
        ("FIELDCRYPT_KEY_PROVIDER", "vault", "workspaces.demo.key.provider (from FIELDCRYPT_KEY_PROVIDER)"),
        ("FIELDCRYPT_DATA_KEY_TTL_SECONDS", "abc", "data_key_ttl_seconds (from FIELDCRYPT_DATA_KEY_TTL_SECONDS)"),
        ("FIELDCRYPT_DATA_KEY_TTL_SECONDS", "3600", "less than or equal to 1800"),
        ("FIELDCRYPT_WORKSPACE", "nosuch", "workspace 'nosuch' (FIELDCRYPT_WORKSPACE) is not declared"),
    ],
)
def test_a_bad_setting_fails_the_code_location_load_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigError, match=re.escape(named)), fresh_code_location_import():
        import pipelines.definitions  # noqa: F401


def test_a_dataset_added_to_the_catalog_gets_its_assets_jobs_and_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = {
        **demo_datasets_yaml(),
        "clicks": {
            "partitioning": {
                "granularity": "hourly",
                "levels": [{"key": "dt", "format": "%Y-%m-%d"}, {"key": "hour", "format": "%H"}],
                "start": "2026-11-01",
            },
            "ingested_at": "ts",
            "primary_key": "click_id",
        },
        "accounts": {"partitioning": "none", "ingested_at": "updated_at", "primary_key": "account_id"},
    }
    catalog = write_catalog(tmp_path / "fieldcrypt.yaml", "acme", str(tmp_path / "lake"), LOCAL_KEY, datasets)
    monkeypatch.setenv("FIELDCRYPT_CATALOG", str(catalog))

    with fresh_code_location_import():
        from pipelines.definitions import defs

        clicks = defs.resolve_assets_def(asset_key("protected_clicks"))
        accounts = defs.resolve_assets_def(asset_key("protected_accounts"))
        jobs = {job.name for job in defs.resolve_all_job_defs()}
        schedules = {schedule.name for schedule in defs.schedules or []}

    assert isinstance(clicks.partitions_def, dg.HourlyPartitionsDefinition)
    assert clicks.partitions_def.get_partition_keys()[:2] == ["2026-11-01T00", "2026-11-01T01"]
    assert accounts.partitions_def is None
    assert {"acme__protect_snapshots_daily", "acme__protect_snapshots_hourly", "acme__protect_snapshots_none"} <= jobs
    assert {"acme__rotate_keys_daily", "acme__rotate_keys_hourly", "acme__rotate_keys_none"} <= jobs
    assert {"acme__protect_newest_partition_daily", "acme__protect_newest_partition_hourly"} == schedules - {
        "acme__scheduled_key_rotation"
    }
    campaigns = dg.DynamicPartitionsDefinition(name="acme__rotation_campaign")
    assert defs.resolve_assets_def(asset_key("rotated_clicks_keys")).partitions_def == dg.MultiPartitionsDefinition(
        {"campaign": campaigns, "snapshot": clicks.partitions_def}
    )
    assert defs.resolve_assets_def(asset_key("rotated_accounts_keys")).partitions_def == campaigns
