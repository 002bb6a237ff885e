"""Delta Lake and Iceberg tables, written by their own libraries (delta-rs, pyiceberg on a SQLite SQL catalog),
declared in a catalog: every command refuses them by name before reading or writing, their bytes stay the
same, and each library still reads its table back.

A table is declared at its root and below it (Iceberg's `data/` folder, a Delta partition folder), as a
customer might point the catalog at where the Parquet files are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest
from dagster_support import catalog_fieldcrypt
from deltalake import DeltaTable, write_deltalake
from pyiceberg.catalog.sql import SqlCatalog

from assets import build_assets
from fieldcrypt import InputError, Workspace, WorkspaceConfig
from resources import FieldcryptResource

DAY = "2026-11-01"
DAILY = {"granularity": "daily", "key": "date", "start": DAY}
DATASETS: dict[str, Any] = {
    "delta_users": {"path": "warehouse/delta_users", "partitioning": DAILY},
    "delta_day": {"path": f"warehouse/delta_users/date={DAY}", "partitioning": "none"},
    "iceberg_users": {"path": "warehouse/db/users", "partitioning": "none"},
    "iceberg_data": {"path": "warehouse/db/users/data", "partitioning": DAILY},
}
for _declaration in DATASETS.values():
    _declaration.update(ingested_at="ingested_at", primary_key="user_id")
REFUSAL = {
    "delta_users": r"delta_users is a Delta table \(_delta_log at .*warehouse/delta_users/_delta_log\)",
    "delta_day": r"delta_day is a Delta table \(_delta_log at .*warehouse/delta_users/_delta_log\)",
    "iceberg_users": r"iceberg_users is an? Iceberg table \(metadata/ at .*warehouse/db/users/metadata\)",
    "iceberg_data": r"iceberg_data is an? Iceberg table \(metadata/ at .*warehouse/db/users/metadata\)",
}
# The refusal names the declaration that protects the table through its own commits.
COMMAND_TAIL = r": it cannot be rewritten file by file .*; declare it kind: "
KIND = {"delta_users": "delta", "delta_day": "delta", "iceberg_users": "iceberg", "iceberg_data": "iceberg"}


def users() -> pa.Table:
    ids = list(range(40))
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "email": [f"user{i}@example.com" for i in ids],
            "ingested_at": pa.array([datetime(2026, 11, 1, 12, tzinfo=UTC)] * len(ids), pa.timestamp("us", tz="UTC")),
            "date": [DAY if i % 2 else "2026-11-02" for i in ids],
        }
    )


def write_tables(lake: Path, catalog_db: Path) -> None:
    """A partitioned delta-rs table at warehouse/delta_users, a partitioned pyiceberg table at warehouse/db/users."""
    write_deltalake(str(lake / "warehouse" / "delta_users"), users(), partition_by=["date"])
    iceberg = SqlCatalog("tests", uri=f"sqlite:///{catalog_db}", warehouse=f"file://{lake / 'warehouse'}")
    iceberg.create_namespace("db")
    table = iceberg.create_table("db.users", schema=users().schema)
    with table.update_spec() as spec:
        spec.add_identity("date")
    table.append(users())


def read_back(lake: Path, catalog_db: Path) -> dict[str, pa.Table]:
    iceberg = SqlCatalog("tests", uri=f"sqlite:///{catalog_db}", warehouse=f"file://{lake / 'warehouse'}")
    return {
        "delta": DeltaTable(str(lake / "warehouse" / "delta_users")).to_pyarrow_table().sort_by("user_id"),
        "iceberg": iceberg.load_table("db.users").scan().to_arrow().sort_by("user_id"),
    }


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    write_tables(lake, tmp_path / "iceberg.db")
    return lake


@pytest.fixture
def fieldcrypt(lake: Path, tmp_path: Path, keystore_path: Path) -> FieldcryptResource:
    return catalog_fieldcrypt(
        tmp_path, str(lake), {"provider": "local", "keystore": str(keystore_path)}, datasets=DATASETS
    )


def partition_of(dataset: str) -> str | None:
    return DAY if DATASETS[dataset]["partitioning"] == DAILY else None


COMMANDS: dict[str, Callable[[Workspace, str], object]] = {  # in this order: enable first
    "enable": lambda w, d: w.enable(f"{d}.email", "email", acknowledge_irreversible=True),
    "protect": lambda w, d: w.protect(d, partition_of(d)),
    "status": lambda w, d: w.status(d, partition_of(d)),
    "verify": lambda w, d: w.verify(d, partition_of(d)),
    "rotate": lambda w, d: w.rotate(d, partition_of(d)),
    "partitions": lambda w, d: w.partitions(d),
}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_every_command_refuses_a_table_by_name_and_leaves_its_bytes_and_its_library_reads(
    dataset: str, lake: Path, tmp_path: Path, fieldcrypt: FieldcryptResource, enable_at: Callable[..., Any]
) -> None:
    workspace = fieldcrypt.workspace("test")
    before, read_before = digests(lake / "warehouse"), read_back(lake, tmp_path / "iceberg.db")

    for command, call in COMMANDS.items():
        if command == "protect":  # the others need an enabled attribute: as if enabled before the table became one
            enable_at(workspace, f"{dataset}.email", "email")
        with pytest.raises(InputError, match=REFUSAL[dataset] + COMMAND_TAIL + KIND[dataset]):
            call(workspace, dataset)
        assert digests(lake / "warehouse") == before, command

    read_after = read_back(lake, tmp_path / "iceberg.db")
    assert all(read_after[name].equals(read_before[name]) for name in read_before)


@pytest.mark.parametrize("dataset", ["delta_users", "iceberg_data"])
def test_the_dagster_protection_asset_refuses_a_table_by_name(
    dataset: str, lake: Path, fieldcrypt: FieldcryptResource, enable_at: Callable[..., Any]
) -> None:
    workspace = fieldcrypt.workspace("test")
    enable_at(workspace, f"{dataset}.email", "email")
    before = digests(lake / "warehouse")

    result = dg.materialize(
        [build_assets(fieldcrypt.config()).protected[dataset]],
        partition_key=DAY,
        resources=fieldcrypt.as_resources(),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )

    assert not result.success
    failures = " ".join(repr(event.event_specific_data) for event in result.get_step_failure_events())
    assert "a Delta table" in failures or "an Iceberg table" in failures
    assert "cannot be rewritten file by file" in failures
    assert digests(lake / "warehouse") == before


def test_a_table_on_an_s3_lake_is_refused_by_name(
    lake: Path, moto: str, s3_bucket: str, keystore_path: Path, enable_at: Callable[..., Any]
) -> None:
    import boto3

    from fieldcrypt.catalog import Catalog
    from tests.catalogs import write_catalog

    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    for path in (lake / "warehouse").rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), s3_bucket, f"lake/{path.relative_to(lake)}")
    catalog = write_catalog(
        lake.parent / "s3.yaml",
        "acme",
        f"s3://{s3_bucket}/lake",
        {"provider": "local", "keystore": str(keystore_path)},
        DATASETS,
        s3_endpoint_url=moto,
        region="us-east-1",
    )
    config: WorkspaceConfig = Catalog.load(catalog, environ={}).workspace_config("acme")
    workspace = Workspace(config, actor="test")

    for dataset in sorted(DATASETS):
        enable_at(workspace, f"{dataset}.email", "email")
        with pytest.raises(InputError, match=REFUSAL[dataset] + COMMAND_TAIL + KIND[dataset]):
            workspace.status(dataset, partition_of(dataset))
