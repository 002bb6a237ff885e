"""An Apache Iceberg table (pyiceberg, SQL catalog on SQLite, warehouse inside the lake) declared `kind: iceberg`,
protected through its own snapshots.

A table partitioned by day of its event date goes through enable, protect (every partition, an append,
protect again), verify, re-index, rotate, status and purge-history; after each step pyiceberg (and polars)
read it back with every untouched column equal to the read before protection, and the manifests' metrics
hold no protected plaintext. After purge-history, a scan of every byte under the table (data files,
metadata JSON, Avro manifests and manifest lists, decompressed) finds no protected plaintext.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import LongType, NestedField, StringType, StructType, TimestamptzType

from fieldcrypt import InputError, Workspace
from fieldcrypt.catalog import Catalog
from fieldcrypt.cli import run
from fieldcrypt.errors import ConcurrentUpdateError
from tests.catalogs import write_catalog
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
from tests.plaintext_scan import scan


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    (lake / "warehouse").mkdir(parents=True)
    return lake


@pytest.fixture
def catalog_properties(tmp_path: Path, lake: Path) -> dict[str, str]:
    return {"type": "sql", "uri": f"sqlite:///{tmp_path}/iceberg.db", "warehouse": f"file://{lake}/warehouse"}


@pytest.fixture
def table(catalog_properties: dict[str, str]) -> Table:
    catalog = SqlCatalog("default", **catalog_properties)
    catalog.create_namespace("shop")
    created = catalog.create_table("shop.users", schema=SCHEMA, partition_spec=BY_DAY)
    created.append(users(0, 300, DAYS))
    return created


@pytest.fixture
def workspace(
    table: Table, lake: Path, tmp_path: Path, keystore_path: Path, catalog_properties: dict[str, str]
) -> Workspace:
    datasets = {
        "users_ice": {
            "kind": "iceberg",
            "table": "shop.users",
            "path": "warehouse/shop/users",
            "iceberg_catalog": catalog_properties,
            "ingested_at": "ingested_at",
            "primary_key": "user_id",
        }
    }
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", str(lake), {"provider": "local", "keystore": str(keystore_path)}, datasets
    )
    return Workspace(Catalog.load(catalog, environ={}).workspace_config(), actor="test")


def read(table: Table) -> pa.Table:
    return table.refresh().scan().to_arrow().sort_by("user_id")


def assert_reads_back(table: Table, before: pa.Table) -> pa.Table:
    after = read(table)
    assert after.num_rows == before.num_rows
    assert after.select(UNTOUCHED).equals(before.select(UNTOUCHED))
    polars = pl.scan_iceberg(table).collect().sort("user_id").select(UNTOUCHED).to_arrow()
    assert polars.cast(before.select(UNTOUCHED).schema).equals(before.select(UNTOUCHED))
    return after


def assert_metrics_keep_no_protected_value(table: Table) -> None:
    """The current snapshot's live files: no bound of the email, nor any statistic of a `__fc_*` column."""
    schema = table.refresh().schema()
    hidden = {schema.find_field("email").field_id} | {f.field_id for f in schema.fields if "__fc_" in f.name}
    files = [task.file for task in table.scan().plan_files()]
    assert files
    for data_file in files:
        recorded = [data_file.lower_bounds, data_file.upper_bounds, data_file.value_counts, data_file.null_value_counts]
        assert not any(hidden & set(stats or {}) for stats in recorded), data_file.file_path


def protect_all(workspace: Workspace) -> int:
    return sum(workspace.protect("users_ice", p).newly_encrypted for p in workspace.partitions("users_ice"))


def test_an_iceberg_table_is_protected_through_its_own_snapshots_and_purged(
    workspace: Workspace, table: Table, lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sought = plaintexts(340)
    before = read(table)
    assert workspace.partitions("users_ice") == PARTITIONS

    workspace.enable("users_ice.email", "email", acknowledge_irreversible=True, blind_index=True)
    workspace.encrypt_history("users_ice.email", acknowledge_irreversible=True)
    assert protect_all(workspace) == 300
    protected = assert_reads_back(table, before)
    assert set(protected.column("email").to_pylist()) <= {"****@example.com"}
    assert protected.column("email__fc_ct").null_count == 0
    ours = [s.summary for s in table.snapshots() if s.summary and s.summary["fieldcrypt.operation"]]
    assert [s["fieldcrypt.operation"] for s in ours] == ["encrypt"] * len(DAYS)  # one snapshot per partition
    assert {s.operation.value for s in ours} == {"overwrite"}
    assert_metrics_keep_no_protected_value(table)

    # An append after protection (pyiceberg, as an upstream writer would), then protect again.
    table.refresh().append(users(300, 40, DAYS[:2]))
    before = read(table)
    assert protect_all(workspace) == 40
    assert_reads_back(table, before)
    assert_metrics_keep_no_protected_value(table)
    assert sum(sum(workspace.verify("users_ice", p).values()) for p in PARTITIONS) == 340

    status = workspace.table_history("users_ice")
    assert status.holds_plaintext and status.attributes == ("users_ice.email",)

    workspace.start_reindex("users_ice.email")
    for partition in PARTITIONS:
        assert workspace.reindex("users_ice", partition).reindexed["users_ice.email"] > 0
    assert workspace.complete_reindex("users_ice.email") == len(DAYS)
    assert_reads_back(table, before)

    workspace.start_rotation()
    for partition in PARTITIONS:
        assert workspace.rotate("users_ice", partition).rewrapped > 0
    workspace.complete_rotation()
    assert_reads_back(table, before)
    assert_metrics_keep_no_protected_value(table)

    cli = ["--catalog", str(tmp_path / "fieldcrypt.yaml")]
    assert run([*cli, "status", "users_ice"]) == 0
    said = capsys.readouterr().out
    assert "older versions of the iceberg table still hold plaintext of users_ice.email" in said
    assert "fully protected, no plaintext left" not in said

    location = Path(table.location().removeprefix("file://"))
    hits = scan(location, sought)
    assert any(h.file.endswith(".avro") for h in hits)  # old manifests' bounds, found once decompressed
    assert any(h.file.endswith(".parquet") for h in hits)  # the replaced data files
    assert run([*cli, "purge-history", "users_ice", "--older-than", "0h"]) == 0
    assert "data files and" in capsys.readouterr().out
    assert scan(location, sought) == []
    after = assert_reads_back(table, before)
    assert set(after.column("email").to_pylist()) <= {"****@example.com"}
    assert not workspace.table_history("users_ice").holds_plaintext
    assert run([*cli, "status", "users_ice"]) == 0
    assert "users_ice.email: fully protected, no plaintext left" in capsys.readouterr().out
    audited = {event["operation"] for event in workspace.audit.events()}
    assert {"purge_history_intent", "history_purged", "table_commit"} <= audited
    assert sum(sum(workspace.verify("users_ice", p).values()) for p in PARTITIONS) == 340


def test_an_append_between_plan_and_commit_is_kept(
    workspace: Workspace, table: Table, monkeypatch: pytest.MonkeyPatch
) -> None:
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


def test_a_file_replaced_by_another_writer_before_the_commit_is_refused_by_name_and_nothing_committed(
    workspace: Workspace, table: Table, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace.enable("users_ice.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_ice.email", acknowledge_irreversible=True)
    between_plan_and_commit(monkeypatch, lambda: table.refresh().delete("user_id = 3"))  # copy-on-write

    with pytest.raises(ConcurrentUpdateError, match="is no longer in iceberg table shop.users"):
        workspace.protect("users_ice", PARTITIONS[0])

    assert not [s for s in table.refresh().snapshots() if s.summary and s.summary["fieldcrypt.operation"]]
    assert read(table).num_rows == 299
    assert not list(lake.rglob("part-fc-*")), "the new files of a refused commit are deleted"
    assert not [p for p in lake.rglob(".*") if p.is_file()], "no temporary file is left"
    monkeypatch.undo()
    assert workspace.protect("users_ice", PARTITIONS[0]).newly_encrypted == 99


def test_a_table_with_delete_files_is_refused_by_every_command_and_left_as_it_was(
    workspace: Workspace, table: Table, lake: Path, enable_at: Callable[..., Any]
) -> None:
    # pyiceberg 0.12 cannot write merge-on-read deletes: a positional delete file as Spark would commit it.
    target = next(task.file for task in table.scan().plan_files())
    path = target.file_path.rpartition("/")[0] + "/deletes-0.parquet"
    pq.write_table(pa.table({"file_path": [target.file_path], "pos": pa.array([0], pa.int64())}), path[7:])
    deletes = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=path,
        file_format=FileFormat.PARQUET,
        partition=target.partition,
        record_count=1,
        file_size_in_bytes=os.path.getsize(path[7:]),
        spec_id=target.spec_id,
    )
    with table.transaction() as tx, tx.update_snapshot().fast_append() as append:
        append.append_data_file(deletes)
    warehouse = lake / "warehouse"
    stored = {p: p.read_bytes() for p in warehouse.rglob("*") if p.is_file()}
    refused = r"users_ice: iceberg table shop.users has merge-on-read delete files \(1 positional, 0 equality\)"

    with pytest.raises(InputError, match=refused):
        workspace.enable("users_ice.email", "email", acknowledge_irreversible=True)
    enable_at(workspace, "users_ice.email", "email")
    for command in ("protect", "status", "rotate"):
        with pytest.raises(InputError, match=refused):
            getattr(workspace, command)("users_ice", PARTITIONS[0])
    assert {p: p.read_bytes() for p in warehouse.rglob("*") if p.is_file()} == stored


def test_a_table_whose_files_are_outside_the_lake_is_refused_by_name(
    tmp_path: Path, keystore_path: Path, table: Table
) -> None:
    other_lake = tmp_path / "elsewhere"
    other_lake.mkdir()
    datasets = {
        "users_ice": {
            "kind": "iceberg",
            "table": "shop.users",
            "iceberg_catalog": {"type": "sql", "uri": f"sqlite:///{tmp_path}/iceberg.db"},
            "ingested_at": "ingested_at",
        }
    }
    catalog = write_catalog(
        tmp_path / "other.yaml",
        "acme",
        str(other_lake),
        {"provider": "local", "keystore": str(keystore_path)},
        datasets,
    )
    workspace = Workspace(Catalog.load(catalog, environ={}).workspace_config(), actor="test")
    with pytest.raises(InputError, match="is outside the lake"):
        workspace.partitions("users_ice")


def test_a_path_that_is_not_the_tables_location_is_refused_naming_the_right_one(
    tmp_path: Path, lake: Path, keystore_path: Path, table: Table, catalog_properties: dict[str, str]
) -> None:
    datasets = {
        "users_ice": {
            "kind": "iceberg",
            "table": "shop.users",
            "path": "users",
            "iceberg_catalog": catalog_properties,
            "ingested_at": "ingested_at",
        }
    }
    catalog = write_catalog(
        tmp_path / "other.yaml", "acme", str(lake), {"provider": "local", "keystore": str(keystore_path)}, datasets
    )
    workspace = Workspace(Catalog.load(catalog, environ={}).workspace_config(), actor="test")
    with pytest.raises(InputError, match="not at the declared path 'users'; declare `path: warehouse/shop/users`"):
        workspace.partitions("users_ice")


def test_an_unpartitioned_iceberg_table_is_one_partition(
    tmp_path: Path, lake: Path, keystore_path: Path, catalog_properties: dict[str, str]
) -> None:
    catalog = SqlCatalog("default", **catalog_properties)
    catalog.create_namespace("shop")
    flat = catalog.create_table("shop.flat", schema=SCHEMA)
    flat.append(users(0, 30, DAYS))
    datasets = {
        "flat": {
            "kind": "iceberg",
            "table": "shop.flat",
            "path": "warehouse/shop/flat",
            "iceberg_catalog": catalog_properties,
            "ingested_at": "ingested_at",
            "primary_key": "user_id",
        }
    }
    config = write_catalog(
        tmp_path / "flat.yaml", "acme", str(lake), {"provider": "local", "keystore": str(keystore_path)}, datasets
    )
    workspace = Workspace(Catalog.load(config, environ={}).workspace_config(), actor="test")
    assert workspace.partitions("flat") == [None]
    workspace.enable("flat.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("flat.email", acknowledge_irreversible=True)
    assert workspace.protect("flat", None).newly_encrypted == 30
    assert set(read(flat).column("email").to_pylist()) == {"****@example.com"}
    assert sum(workspace.verify("flat", None).values()) == 30


def test_a_dead_runs_temporary_file_beside_an_iceberg_data_file_is_swept(workspace: Workspace, table: Table) -> None:
    data_file = next(task.file for task in table.scan().plan_files() if "2026-11-01" in task.file.file_path)
    folder = Path(data_file.file_path.removeprefix("file://")).parent
    dead = folder / f".{Path(data_file.file_path).name}.fieldcrypt-tmp-dead"  # a killed run's plaintext copy
    dead.write_bytes(b"plaintext copy")
    os.utime(dead, (0, 0))
    files, left = workspace.swept_files("users_ice", PARTITIONS[0])
    assert not dead.exists() and left == 0
    assert len(files) == 1


def test_a_struct_field_attribute_keeps_every_nested_field_id(
    tmp_path: Path, lake: Path, keystore_path: Path, catalog_properties: dict[str, str]
) -> None:
    schema = Schema(
        NestedField(1, "event_id", LongType(), required=False),
        NestedField(2, "ingested_at", TimestamptzType(), required=False),
        NestedField(
            3,
            "properties",
            StructType(
                NestedField(4, "email", StringType(), required=False),
                NestedField(5, "plan", StringType(), required=False),
            ),
            required=False,
        ),
    )
    catalog = SqlCatalog("default", **catalog_properties)
    catalog.create_namespace("shop")
    events = catalog.create_table("shop.events", schema=schema)
    ids = list(range(40))
    events.append(
        pa.table(
            {
                "event_id": pa.array(ids, pa.int64()),
                "ingested_at": pa.array([datetime(2026, 11, 1, tzinfo=UTC)] * 40, pa.timestamp("us", tz="UTC")),
                "properties": [{"email": f"event{i:03d}.secret@example.com", "plan": "pro"} for i in ids],
            }
        )
    )
    datasets = {
        "events": {
            "kind": "iceberg",
            "table": "shop.events",
            "path": "warehouse/shop/events",
            "iceberg_catalog": catalog_properties,
            "ingested_at": "ingested_at",
            "primary_key": "event_id",
        }
    }
    config = write_catalog(
        tmp_path / "events.yaml", "acme", str(lake), {"provider": "local", "keystore": str(keystore_path)}, datasets
    )
    workspace = Workspace(Catalog.load(config, environ={}).workspace_config(), actor="test")
    workspace.enable("events.properties.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("events.properties.email", acknowledge_irreversible=True)
    assert workspace.protect("events", None).newly_encrypted == 40

    events.refresh()
    assert events.properties["write.metadata.metrics.column.properties.email"] == "none"
    read = events.scan().to_arrow().sort_by("event_id")
    assert read.column("properties").combine_chunks().field("plan").to_pylist() == ["pro"] * 40
    assert set(read.column("properties").combine_chunks().field("email").to_pylist()) == {"****@example.com"}
    (task,) = list(events.scan().plan_files())
    written = pq.read_schema(task.file.file_path.removeprefix("file://"))
    nested = written.field("properties").type
    assert [nested.field(i).metadata[b"PARQUET:field_id"] for i in range(nested.num_fields)] == [b"4", b"5"]
    assert 4 not in (task.file.lower_bounds or {})
    assert sum(workspace.verify("events", None).values()) == 40
