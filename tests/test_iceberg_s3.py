"""An Apache Iceberg table in an `s3://` lake (moto server on loopback), protected through pyiceberg's own snapshots.

The table is created by pyiceberg as an upstream writer would: its SQL catalog on a local SQLite file, its
warehouse under the lake's `s3://` prefix, its FileIO given the S3 endpoint. fieldcrypt's catalog file
declares the same catalog without any S3 setting: fieldcrypt gives pyiceberg's FileIO the workspace's
`s3_endpoint_url` and `region` (fieldcrypt.lake.tables.iceberg.file_io_properties); credentials come from the
environment only. The moto server runs in a process of its own, as for the Delta table on S3
(tests/moto_process.py says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

from fieldcrypt import Workspace
from fieldcrypt.catalog import Catalog
from fieldcrypt.cli import run
from fieldcrypt.errors import ConcurrentUpdateError, ConfigError
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.lake.tables.iceberg import file_io_properties
from fieldcrypt.lake.tables.iceberg_table import IcebergCatalogConfig
from tests.catalogs import catalog_error, write_catalog
from tests.iceberg_tables import (
    BY_DAY,
    DAYS,
    PARTITIONS,
    SCHEMA,
    UNTOUCHED,
    between_plan_and_commit,
    plaintexts,
    users,
)
from tests.moto_process import BUCKET, download  # the bucket its `moto` fixture creates
from tests.moto_process import moto as moto  # the fixtures: a moto server in a process of its own
from tests.moto_process import moto_process as moto_process
from tests.plaintext_scan import scan

PREFIX = "lake"
REGION = "us-east-1"


@pytest.fixture
def lake_uri(moto: str) -> str:
    return f"s3://{BUCKET}/{PREFIX}"


@pytest.fixture
def catalog_properties(tmp_path: Path, lake_uri: str) -> dict[str, str]:
    """The pyiceberg catalog as fieldcrypt's catalog file declares it: no endpoint, region or credential."""
    return {"type": "sql", "uri": f"sqlite:///{tmp_path}/iceberg.db", "warehouse": f"{lake_uri}/warehouse"}


@pytest.fixture
def table(moto: str, catalog_properties: dict[str, str]) -> Table:
    """The table as an upstream writer creates it: pyiceberg given the S3 endpoint, credentials from the
    environment (the `moto` fixture's)."""
    catalog = SqlCatalog("default", **catalog_properties, **{"s3.endpoint": moto, "s3.region": REGION})
    catalog.create_namespace("shop")
    created = catalog.create_table("shop.users", schema=SCHEMA, partition_spec=BY_DAY)
    created.append(users(0, 300, DAYS))
    return created


@pytest.fixture
def catalog(
    table: Table, moto: str, lake_uri: str, tmp_path: Path, keystore_path: Path, catalog_properties: dict[str, str]
) -> Path:
    datasets = {
        "users_ice": {
            "kind": "iceberg",
            "table": "shop.users",
            "path": "warehouse/shop/users",  # the table's location under the lake
            "iceberg_catalog": catalog_properties,
            "ingested_at": "ingested_at",
            "primary_key": "user_id",
        }
    }
    key = {"provider": "local", "keystore": str(keystore_path)}
    return write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", lake_uri, key, datasets, s3_endpoint_url=moto, region=REGION
    )


@pytest.fixture
def workspace(catalog: Path) -> Workspace:
    return Workspace(Catalog.load(catalog, environ={}).workspace_config(), actor="test")


def read(table: Table) -> pa.Table:
    return table.refresh().scan().to_arrow().sort_by("user_id")


def stored(table: Table) -> str:
    """The table's location as a key prefix of the bucket."""
    return table.location().removeprefix(f"s3://{BUCKET}/").rstrip("/")


def protect_all(workspace: Workspace) -> int:
    return sum(workspace.protect("users_ice", p).newly_encrypted for p in workspace.partitions("users_ice"))


def test_file_io_properties_carry_the_workspace_endpoint_and_region_and_never_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-the-environment")
    loopback = LakeStore.from_uri("s3://b/lake", endpoint_url="http://127.0.0.1:9000", region="eu-west-3")
    aws = LakeStore.from_uri("s3://b/lake", region="eu-west-3")

    assert file_io_properties(loopback) == {
        "s3.endpoint": "http://127.0.0.1:9000",
        "s3.region": "eu-west-3",
        "s3.force-virtual-addressing": "false",
    }
    assert file_io_properties(aws) == {"s3.region": "eu-west-3"}
    assert file_io_properties(LakeStore.from_uri("/tmp/lake")) == {}


@pytest.mark.parametrize(
    "key", ["s3.access-key-id", "s3.secret-access-key", "s3.session-token", "client.access-key-id"]
)
def test_s3_credentials_in_the_iceberg_catalog_declaration_are_refused_by_name(
    tmp_path: Path, keystore_path: Path, key: str
) -> None:
    declaration = {
        "kind": "iceberg",
        "table": "shop.users",
        "iceberg_catalog": {"type": "sql", "uri": "sqlite:///c.db", key: "x"},
    }
    said = catalog_error(tmp_path, keystore_path, declaration)
    assert f"{key}: credentials are read from the environment" in said
    with pytest.raises(ConfigError, match=f"{key} is a secret and cannot be in the catalog file"):
        IcebergCatalogConfig("default", {"type": "sql", "uri": "sqlite:///c.db", key: "x"})  # the lake's own check


def test_an_iceberg_table_on_s3_is_protected_verified_and_purged_with_no_plaintext_left(
    workspace: Workspace,
    table: Table,
    catalog: Path,
    moto: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secrets = {"AWS_ACCESS_KEY_ID": "AKIAFIELDCRYPTICEBERG", "AWS_SECRET_ACCESS_KEY": "fieldcrypt-iceberg-secret"}
    for name, value in secrets.items():  # what pyiceberg's FileIO must take from the environment (moto takes any)
        monkeypatch.setenv(name, value)
    sought = plaintexts(300)
    before = read(table)
    assert table.location().startswith(f"s3://{BUCKET}/{PREFIX}/warehouse/")
    assert workspace.partitions("users_ice") == PARTITIONS
    assert len(PARTITIONS) >= 2

    workspace.enable("users_ice.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_ice.email", acknowledge_irreversible=True)
    assert protect_all(workspace) == 300

    after = read(table)
    assert after.select(UNTOUCHED).equals(before.select(UNTOUCHED))
    assert set(after.column("email").to_pylist()) <= {"****@example.com"}
    ours = [s.summary for s in table.snapshots() if s.summary and s.summary["fieldcrypt.operation"]]
    assert [s["fieldcrypt.operation"] for s in ours] == ["encrypt"] * len(DAYS)  # one overwrite per partition
    assert all(f.file_path.startswith(f"s3://{BUCKET}/") for f in (t.file for t in table.scan().plan_files()))
    assert sum(sum(workspace.verify("users_ice", p).values()) for p in PARTITIONS) == 300
    cli = ["--catalog", str(catalog)]
    assert run([*cli, "status", "users_ice"]) == 0
    assert "older versions of the iceberg table still hold plaintext of users_ice.email" in capsys.readouterr().out

    hits = scan(download(moto, BUCKET, stored(table), tmp_path / "before"), sought)
    assert any(h.file.endswith(".parquet") for h in hits)  # the replaced data files
    assert any(h.file.endswith(".avro") for h in hits)  # the old manifests' bounds, once decompressed

    assert run([*cli, "purge-history", "users_ice", "--older-than", "0h"]) == 0
    assert "data files and" in capsys.readouterr().out

    after_purge = download(moto, BUCKET, stored(table), tmp_path / "after")
    assert scan(after_purge, sought) == []
    kinds = {p.name.rpartition(".")[2] for p in after_purge.iterdir()}
    assert {"parquet", "json", "avro"} <= kinds  # data, metadata JSON, manifests and manifest lists were scanned
    purged = read(table)
    assert purged.select(UNTOUCHED).equals(before.select(UNTOUCHED))
    assert set(purged.column("email").to_pylist()) <= {"****@example.com"}
    assert not workspace.table_history("users_ice").holds_plaintext
    assert run([*cli, "status", "users_ice"]) == 0
    assert "users_ice.email: fully protected, no plaintext left" in capsys.readouterr().out
    assert sum(sum(workspace.verify("users_ice", p).values()) for p in PARTITIONS) == 300
    # No credential was written anywhere: the catalog file, the SQLite catalog, every object of the lake.
    download(moto, BUCKET, PREFIX, tmp_path / "whole-lake")
    assert scan(tmp_path, secrets.values()) == []


def test_an_append_committed_on_s3_while_fieldcrypt_commits_is_kept(
    workspace: Workspace, table: Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream pyiceberg append on S3 between fieldcrypt's plan and its commit: kept, protected by the next run."""
    workspace.enable("users_ice.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_ice.email", acknowledge_irreversible=True)
    appended = users(1000, 12, DAYS[:1])
    between_plan_and_commit(monkeypatch, lambda: table.refresh().append(appended))

    assert workspace.protect("users_ice", PARTITIONS[0]).newly_encrypted == 100  # the planned files

    after = read(table)
    assert after.num_rows == 312
    assert set(appended.column("user_id").to_pylist()) <= set(after.column("user_id").to_pylist())
    monkeypatch.undo()
    assert workspace.protect("users_ice", PARTITIONS[0]).newly_encrypted == 12
    assert read(table).num_rows == 312
    assert sum(workspace.verify("users_ice", PARTITIONS[0]).values()) == 112


def test_a_file_replaced_on_s3_before_the_commit_is_refused_by_name_and_its_new_files_deleted(
    workspace: Workspace, table: Table, moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace.enable("users_ice.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_ice.email", acknowledge_irreversible=True)
    between_plan_and_commit(monkeypatch, lambda: table.refresh().delete("user_id = 3"))  # copy-on-write

    with pytest.raises(ConcurrentUpdateError, match="is no longer in iceberg table shop.users"):
        workspace.protect("users_ice", PARTITIONS[0])

    assert not [s for s in table.refresh().snapshots() if s.summary and s.summary["fieldcrypt.operation"]]
    assert read(table).num_rows == 299
    s3: Any = boto3.client("s3", endpoint_url=moto, region_name=REGION)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/")
        for o in page.get("Contents", [])
    ]
    names = [k.rpartition("/")[2] for k in keys]
    assert not [n for n in names if n.startswith("part-fc-")], "the new files of a refused commit are deleted"
    assert not [n for n in names if ".fieldcrypt-tmp" in n], "no temporary object is left"
    monkeypatch.undo()
    assert workspace.protect("users_ice", PARTITIONS[0]).newly_encrypted == 99
