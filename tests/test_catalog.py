"""The catalog file: one validated declaration of workspaces, lakes, keys and datasets for the CLI and Dagster."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from fieldcrypt import ConfigError, Workspace
from fieldcrypt.catalog import Catalog
from fieldcrypt.cli import run
from fieldcrypt.policy.layout import HiveLevel
from tests.catalogs import SHIPPED_CATALOG, TEST_DATASETS, declared, demo_datasets_yaml

LOCAL = {"provider": "local", "keystore": "keys/keystore.json"}


def write(tmp_path: Path, workspace: dict[str, Any], **top: Any) -> Path:
    path = tmp_path / "fieldcrypt.yaml"
    path.write_text(yaml.safe_dump({"workspaces": {"acme": workspace}, **top}))
    return path


def entry(**overrides: Any) -> dict[str, Any]:
    return {"lake": "lake", "key": LOCAL, "datasets": demo_datasets_yaml(), **overrides}


def test_shipped_catalog_declares_the_demo_workspace() -> None:
    config = Catalog.load(SHIPPED_CATALOG, environ={}).workspace_config()
    assert config.name == "demo"
    assert sorted(config.datasets) == ["events", "orders", "users"]
    assert config.lake_uri == str(SHIPPED_CATALOG.parent / "demo-workspace" / "lake")
    assert dict(config.datasets["users"].attributes) == {"email": "email", "phone": "last4"}
    assert (config.datasets["orders"].kind, config.datasets["orders"].path) == ("delta", "orders")


def test_relative_paths_are_relative_to_the_catalog_file(tmp_path: Path) -> None:
    config = Catalog.load(write(tmp_path, entry()), environ={}).workspace_config()
    assert (config.lake_uri, config.key.keystore_path) == (str(tmp_path / "lake"), str(tmp_path / "keys/keystore.json"))


def test_partitioning_shorthands_and_levels_become_the_declared_layout(tmp_path: Path) -> None:
    datasets = {
        "a": {"ingested_at": "ts", "partitioning": "hourly"},
        "b": {"ingested_at": "ts", "partitioning": {"granularity": "daily", "key": "ds"}},
        "c": {
            "ingested_at": "ts",
            "path": "raw/c/",
            "primary_key": ["tenant", "id"],
            "partitioning": {
                "granularity": "monthly",
                "levels": [{"key": "y", "format": "%Y"}, {"key": "m", "format": "%-m"}],
            },
        },
        "d": {"ingested_at": "ts", "partitioning": "none"},
    }
    config = Catalog.load(write(tmp_path, entry(datasets=datasets)), environ={}).workspace_config()
    assert config.datasets["a"].partitioning.levels == (HiveLevel("dt", "%Y-%m-%d-%H"),)
    assert config.datasets["b"].partitioning.levels == (HiveLevel("ds", "%Y-%m-%d"),)
    assert config.datasets["c"].path == "raw/c"
    assert config.datasets["c"].partitioning.directory("2026-02") == "y=2026/m=2"
    assert not config.datasets["d"].partitioning.partitioned


@pytest.mark.parametrize(
    ("workspace", "problem"),
    [
        (entry(lake=None), "workspaces.acme.lake: Input should be a valid string"),
        (entry(key={"provider": "local"}), "workspaces.acme.key.keystore: Field required"),
        (entry(key={"provider": "vault"}), "workspaces.acme.key.provider: Input tag 'vault'"),
        (entry(key={**LOCAL, "kms_key": "x"}), "workspaces.acme.key.kms_key: Extra inputs are not permitted"),
        (entry(data_key_ttl_seconds=3600), "workspaces.acme.data_key_ttl_seconds: Input should be less than or equal"),
        (entry(datasets={"users": {"path": "users"}}), "workspaces.acme.datasets.users.ingested_at: Field required"),
        (entry(datasets={"users": {"ingested_at": "t", "partitioning": "weekly"}}), "datasets.users.partitioning"),
        (entry(datasets={"users": {"ingested_at": "t", "path": "../x"}}), "datasets.users.path: Value error"),
        (entry(datasets={"u-s": {"ingested_at": "t"}}), "dataset name 'u-s' must be letters"),
        (
            entry(datasets={"u": {"ingested_at": "t", "primary_key": ["a", "a"]}}),
            "composite primary key lists distinct",
        ),
        (entry(datasets={"u": {"ingested_at": "t", "attributes": {"email": "first3"}}}), "datasets.u.attributes.email"),
        (entry(lakes="typo"), "workspaces.acme.lakes: Extra inputs are not permitted"),
    ],
)
def test_invalid_catalog_is_refused_naming_the_key_and_the_problem(
    tmp_path: Path, workspace: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match="fieldcrypt.yaml: .*" + problem.replace("(", r"\(")):
        Catalog.load(write(tmp_path, workspace), environ={})


def test_partition_levels_that_do_not_spell_the_granularity_are_refused_naming_the_dataset(tmp_path: Path) -> None:
    datasets = {
        "c": {
            "ingested_at": "t",
            "partitioning": {"granularity": "hourly", "levels": [{"key": "dt", "format": "%Y-%m-%d"}]},
        }
    }
    catalog = Catalog.load(write(tmp_path, entry(datasets=datasets)), environ={})
    with pytest.raises(ConfigError, match=r"workspaces.acme: datasets.c.partitioning: .* must spell %H %Y %d %m"):
        catalog.workspace_config()


def test_missing_catalog_and_bad_yaml_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no catalog at .*nowhere.yaml"):
        Catalog.load(tmp_path / "nowhere.yaml", environ={})
    (tmp_path / "bad.yaml").write_text("workspaces: [\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML at line"):
        Catalog.load(tmp_path / "bad.yaml", environ={})


def test_environment_overrides_the_selected_workspace_and_errors_name_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, entry())
    environ = {
        "FIELDCRYPT_LAKE": "s3://bucket/prefix",
        "FIELDCRYPT_KEY_PROVIDER": "aws-kms",
        "FIELDCRYPT_KMS_KEY": "arn:aws:kms:eu-west-1:111122223333:key/k",
        "FIELDCRYPT_DATA_KEY_TTL_SECONDS": "5",
    }
    config = Catalog.load(path, environ=environ).workspace_config()
    assert (config.lake_uri, config.key.provider, config.key.kms_key) == (
        "s3://bucket/prefix",
        "aws-kms",
        "arn:aws:kms:eu-west-1:111122223333:key/k",
    )
    assert config.data_key_ttl_seconds == 5
    with pytest.raises(ConfigError, match=r"data_key_ttl_seconds \(from FIELDCRYPT_DATA_KEY_TTL_SECONDS\)"):
        Catalog.load(path, environ={"FIELDCRYPT_DATA_KEY_TTL_SECONDS": "abc"})


def test_the_cli_applies_the_catalogs_data_key_ttl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings reach the CLI's workspace too (the TTL bounds how long a revoked key keeps working)."""
    captured: list[float] = []
    monkeypatch.setattr(
        Workspace, "datasets", property(lambda self: captured.append(self.config.data_key_ttl_seconds) or [])
    )
    path = write(tmp_path, entry(data_key_ttl_seconds=7))
    assert run(["--catalog", str(path), "datasets"]) == 0
    monkeypatch.setenv("FIELDCRYPT_DATA_KEY_TTL_SECONDS", "5")
    assert run(["--catalog", str(path), "datasets"]) == 0
    assert set(captured[:1] + captured[-1:]) == {7, 5} and captured[0] == 7 and captured[-1] == 5


def test_several_workspaces_need_a_choice_only_when_one_is_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "fieldcrypt.yaml"
    path.write_text(yaml.safe_dump({"workspaces": {"a": entry(), "b": entry(lake="other")}}))
    catalog = Catalog.load(path, environ={})  # a code location serving both needs no choice
    assert catalog.workspace_config("a").lake_uri == str(tmp_path / "lake")
    with pytest.raises(
        ConfigError, match="several workspaces are declared; set default_workspace or FIELDCRYPT_WORKSPACE"
    ):
        catalog.workspace_config()
    assert Catalog.load(path, environ={"FIELDCRYPT_WORKSPACE": "b"}).workspace_config().lake_uri == str(
        tmp_path / "other"
    )


def test_one_workspaces_bad_entry_fails_that_workspace_alone(tmp_path: Path) -> None:
    path = tmp_path / "fieldcrypt.yaml"
    broken = {**entry(), "data_key_ttl_seconds": "abc"}
    path.write_text(yaml.safe_dump({"default_workspace": "a", "workspaces": {"a": entry(), "b": broken}}))

    catalog = Catalog.load(path, environ={})

    assert catalog.workspace_config("a").name == "a"
    with pytest.raises(ConfigError, match=r"workspaces\.b\.data_key_ttl_seconds: "):
        catalog.workspace_config("b")
    # the selected workspace's errors are the load's: the CLI and the environment's overrides need it
    with pytest.raises(ConfigError, match=r"workspaces\.b\.data_key_ttl_seconds"):
        Catalog.load(path, environ={"FIELDCRYPT_WORKSPACE": "b"})


def test_code_location_load_keeps_the_selected_workspaces_file_error_for_that_workspace(tmp_path: Path) -> None:
    path = tmp_path / "fieldcrypt.yaml"
    broken = {**entry(), "data_key_ttl_seconds": "abc"}
    path.write_text(yaml.safe_dump({"default_workspace": "b", "workspaces": {"a": entry(), "b": broken}}))

    catalog = Catalog.load(path, environ={}, fail_on_selected=False)

    assert catalog.workspace_config("a").name == "a"
    with pytest.raises(ConfigError, match=r"workspaces\.b\.data_key_ttl_seconds: "):
        catalog.workspace_config("b")
    # a wrong value from the environment still fails the load, naming the variable
    with pytest.raises(ConfigError, match=r"data_key_ttl_seconds \(from FIELDCRYPT_DATA_KEY_TTL_SECONDS\)"):
        Catalog.load(path, environ={"FIELDCRYPT_DATA_KEY_TTL_SECONDS": "abc"}, fail_on_selected=False)


@pytest.mark.parametrize(("names", "problem"), [(["a-b", "a_b"], "differ only in"), (["9x"], "letters, digits")])
def test_workspace_names_are_checked(tmp_path: Path, names: list[str], problem: str) -> None:
    path = tmp_path / "fieldcrypt.yaml"
    path.write_text(yaml.safe_dump({"workspaces": {name: entry() for name in names}}))
    with pytest.raises(ConfigError, match=problem):
        Catalog.load(path, environ={})


def test_catalog_that_drops_an_enabled_attribute_is_refused(
    make_local_workspace: Callable[..., Workspace], enable_at: Callable[..., Any]
) -> None:
    workspace = make_local_workspace()
    enable_at(workspace, "users.email", "email")
    users = replace(TEST_DATASETS["users"], attributes={"phone": "last4"})
    dropped = make_local_workspace(datasets={**TEST_DATASETS, "users": users})
    with pytest.raises(ConfigError, match="catalog lists the attributes of users without email, which are enabled"):
        dropped.status("users", "2026-11-01")


def test_catalog_that_changes_a_protected_datasets_ingestion_column_is_refused(
    make_local_workspace: Callable[..., Workspace], enable_at: Callable[..., Any]
) -> None:
    workspace = make_local_workspace()
    enable_at(workspace, "users.email", "email")
    changed = make_local_workspace(datasets={**TEST_DATASETS, "users": declared("users", "landed_at", "user_id")})
    with pytest.raises(ConfigError, match="catalog declares users with ingestion column 'landed_at'"):
        changed.protect("users", "2026-11-01")
