"""The rotation campaign, its driver, erasure and re-index through Dagster on Delta and Iceberg datasets.

Each kind's table (delta-rs, pyiceberg on a SQLite SQL catalog) is protected, its partitions synced into
its dynamic partitions by the `sync_table_partitions` sensor (as the daemon applies its requests), then:
a rotation campaign started by its job and rotated by the `key_rotation_driver` sensor's ranged run (one
table partition appended after the sync included: the driver adds it), completed by the run the driver
requests; an erasure request recorded by its job and erased by a ranged run of `erase_rows`; a re-index
materialized per partition. After each, the table is read back by its own library, every commit is the
table's own (the log's history, the snapshots' summaries) and the asset checks passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dagster_support import (
    RANGE_END,
    RANGE_START,
    apply_partition_requests,
    catalog_fieldcrypt,
    driver_tick,
    node,
    wrapping_keys,
)
from deltalake import DeltaTable, write_deltalake
from pyiceberg.catalog.sql import SqlCatalog

from assets import build_assets
from assets.rotation import rotation_partition_key
from pipelines.erasure import record_erasure_request_job
from pipelines.observation import table_partitions_sensor
from resources import FieldcryptResource
from tests.iceberg_tables import BY_DAY, SCHEMA
from tests.table_lakes import DAYS, LATE, USERS, as_delta
from tests.table_lakes import users as iceberg_users
from tests.test_dagster_rotation import launch, start_campaign, workspace_defs

ERASED = [3, 4, 7, 150]


@dataclass
class TableLake:
    """One table kind: its dataset, how its own library reads and appends to it, fieldcrypt's commits in it."""

    dataset: str
    fieldcrypt: FieldcryptResource
    partition: Callable[[date], str]
    read: Callable[[], pa.Table]
    append: Callable[[pa.Table], None]
    operations: Callable[[], list[tuple[str, str]]]  # fieldcrypt's commits, oldest first: (operation, partition)


def delta_lake(tmp_path: Path, key: dict[str, Any]) -> TableLake:
    location = tmp_path / "lake" / "warehouse" / "users"
    write_deltalake(str(location), as_delta(iceberg_users(list(range(USERS)), DAYS)), partition_by=["date"])

    def operations() -> list[tuple[str, str]]:
        ours = [e["fieldcrypt"] for e in reversed(DeltaTable(str(location)).history()) if "fieldcrypt" in e]
        return [(e["fieldcrypt.operation"], e["fieldcrypt.partition"]) for e in ours]

    declared = {"kind": "delta", "path": "warehouse/users", "ingested_at": "ingested_at", "primary_key": "user_id"}
    return TableLake(
        "users_delta",
        catalog_fieldcrypt(tmp_path, str(tmp_path / "lake"), key, datasets={"users_delta": declared}),
        lambda day: f"date={day.isoformat()}",
        lambda: DeltaTable(str(location)).to_pyarrow_table().sort_by("user_id"),
        lambda rows: write_deltalake(str(location), as_delta(rows), mode="append", schema_mode="merge"),
        operations,
    )


def iceberg_lake(tmp_path: Path, key: dict[str, Any]) -> TableLake:
    lake = tmp_path / "lake"
    (lake / "warehouse").mkdir(parents=True)
    properties = {"type": "sql", "uri": f"sqlite:///{tmp_path}/iceberg.db", "warehouse": f"file://{lake}/warehouse"}
    catalog = SqlCatalog("default", **properties)
    catalog.create_namespace("shop")
    table = catalog.create_table("shop.users", schema=SCHEMA, partition_spec=BY_DAY)
    table.append(iceberg_users(list(range(USERS)), DAYS))

    def operations() -> list[tuple[str, str]]:
        snapshots = sorted(table.refresh().snapshots(), key=lambda s: s.sequence_number or 0)
        ours = [s.summary for s in snapshots if s.summary is not None and s.summary["fieldcrypt.operation"]]
        return [(str(s["fieldcrypt.operation"]), str(s["fieldcrypt.partition"])) for s in ours]

    declared = {
        "kind": "iceberg",
        "table": "shop.users",
        "path": "warehouse/shop/users",
        "iceberg_catalog": properties,
        "ingested_at": "ingested_at",
        "primary_key": "user_id",
    }
    return TableLake(
        "users_ice",
        catalog_fieldcrypt(tmp_path, str(lake), key, datasets={"users_ice": declared}),
        lambda day: f"event_date_day={day.isoformat()}",
        lambda: table.refresh().scan().to_arrow().sort_by("user_id"),
        lambda rows: table.refresh().append(rows),
        operations,
    )


@pytest.fixture(params=["delta", "iceberg"])
def table_lake(request: pytest.FixtureRequest, tmp_path: Path, keystore_path: Path) -> TableLake:
    """The table, its email enabled (with a blind index) and every row protected, several data keys a partition."""
    key = {"provider": "local", "keystore": str(keystore_path)}
    made = delta_lake(tmp_path, key) if request.param == "delta" else iceberg_lake(tmp_path, key)
    workspace = made.fieldcrypt.workspace("test")
    workspace.enable(f"{made.dataset}.email", "email", acknowledge_irreversible=True, blind_index=True)
    workspace.encrypt_history(f"{made.dataset}.email", acknowledge_irreversible=True)
    workspace.key_cache().max_cells_per_key = 40
    for day in DAYS:
        assert workspace.protect(made.dataset, made.partition(day)).newly_encrypted > 0
    return made


def sync_table_partitions(lake: TableLake, instance: dg.DagsterInstance) -> None:
    sensor = table_partitions_sensor(build_assets(lake.fieldcrypt.config()))
    assert sensor is not None
    with dg.build_sensor_context(instance=instance, resources=lake.fieldcrypt.as_resources()) as context:
        apply_partition_requests(sensor.evaluate_tick(context), instance)


def test_the_rotation_driver_rotates_every_table_partition_through_table_commits_then_completes(
    table_lake: TableLake,
) -> None:
    fieldcrypt, dataset = table_lake.fieldcrypt, table_lake.dataset
    instance = dg.DagsterInstance.ephemeral()
    defs = workspace_defs(fieldcrypt)
    sync_table_partitions(table_lake, instance)
    # A partition appended and protected after the sync sensor's last tick: the driver must cover it too.
    table_lake.append(iceberg_users([USERS + 1, USERS + 3], [LATE]))
    assert fieldcrypt.workspace("test").protect(dataset, table_lake.partition(LATE)).newly_encrypted == 2
    partitions = [table_lake.partition(day) for day in [*DAYS, LATE]]
    before = table_lake.read()
    assert start_campaign(fieldcrypt, instance).success
    campaign = fieldcrypt.workspace("test").bindings.load().active_campaign  # type: ignore[union-attr]
    assert campaign is not None and wrapping_keys(before) == {campaign.old.ref}

    tick = driver_tick(defs, fieldcrypt, instance)
    apply_partition_requests(tick, instance)  # the daemon applies them before it launches the runs
    (rotation,) = tick.run_requests
    assert rotation.job_name == node(f"rotate_keys_{dataset}")
    assert (rotation.tags[RANGE_START], rotation.tags[RANGE_END]) == (
        rotation_partition_key(campaign.campaign_id, partitions[0]),
        rotation_partition_key(campaign.campaign_id, partitions[-1]),
    )
    rotated = launch(defs, instance, rotation)
    assert rotated.success
    assert sorted(str(m.partition) for m in rotated.get_asset_materialization_events()) == sorted(
        rotation_partition_key(campaign.campaign_id, p) for p in partitions
    )
    checks = rotated.get_asset_check_evaluations()
    assert [c.check_name for c in checks] == ["no_old_wrapped_keys"] and all(c.passed for c in checks)
    (completion,) = driver_tick(defs, fieldcrypt, instance).run_requests
    assert completion.job_name == node("complete_key_rotation")
    assert launch(defs, instance, completion).success

    workspace = fieldcrypt.workspace("after")
    assert workspace.bindings.load().campaigns[-1].status == "complete"  # type: ignore[union-attr]
    after = table_lake.read()  # by the table's own library
    assert after.num_rows == before.num_rows == USERS + 2
    assert wrapping_keys(after) == {campaign.new.ref}
    assert after.drop_columns(["email__fc_dek"]).equals(before.drop_columns(["email__fc_dek"]))
    assert sorted(p for op, p in table_lake.operations() if op == "rotate_partition") == partitions  # one commit each
    assert all(sum(workspace.verify(dataset, p).values()) > 0 for p in partitions)


def test_an_erasure_request_and_a_reindex_run_through_dagster_on_a_table(table_lake: TableLake, tmp_path: Path) -> None:
    fieldcrypt, dataset = table_lake.fieldcrypt, table_lake.dataset
    instance = dg.DagsterInstance.ephemeral()
    assets = build_assets(fieldcrypt.config())
    sync_table_partitions(table_lake, instance)
    partitions = [table_lake.partition(day) for day in DAYS]
    before = table_lake.read()
    keys = tmp_path / "keys.txt"
    keys.write_text("".join(f"{key}\n" for key in ERASED))

    recorded = record_erasure_request_job(assets.scope).execute_in_process(
        run_config={
            "ops": {node("record_erasure"): {"config": {"dataset": dataset, "keys_file": str(keys), "reason": "G-1"}}}
        },
        resources=fieldcrypt.as_resources(),
        instance=instance,
    )
    assert recorded.success
    erased = (
        workspace_defs(fieldcrypt)
        .resolve_job_def(node(f"erase_rows_{dataset}"))
        .execute_in_process(tags={RANGE_START: partitions[0], RANGE_END: partitions[-1]}, instance=instance)
    )

    assert erased.success
    materialized = erased.asset_materializations_for_node(node(f"erased_{dataset}"))
    assert sorted(str(m.partition) for m in materialized) == partitions
    assert sum(m.metadata["rows_matched"].value for m in materialized) == len(ERASED)  # type: ignore[misc]
    (request,) = fieldcrypt.workspace("test").erasure_requests(dataset)
    assert request.state() == "done"
    after = table_lake.read()
    chosen = pc.is_in(after.column("user_id"), value_set=pa.array(ERASED, pa.int64()))
    for column in ("email", "email__fc_ct", "email__fc_dek", "email__fc_bidx"):
        assert after.filter(chosen).column(column).null_count == len(ERASED), column
    assert after.filter(pc.invert(chosen)).equals(before.filter(pc.invert(chosen)))
    touched = sorted({p for op, p in table_lake.operations() if op == "erase"})
    assert touched and set(touched) <= set(partitions)

    workspace = fieldcrypt.workspace("test")
    workspace.start_reindex(f"{dataset}.email")
    reindexed = 0
    for partition in partitions:
        result = dg.materialize(
            [assets.reindexed[dataset]], partition_key=partition, resources=fieldcrypt.as_resources(), instance=instance
        )
        (materialization,) = result.asset_materializations_for_node(node(f"reindexed_{dataset}_index"))
        reindexed += int(materialization.metadata[f"reindexed.{dataset}.email"].value)  # type: ignore[arg-type]
    assert reindexed == USERS - len(ERASED)
    assert fieldcrypt.workspace("complete").complete_reindex(f"{dataset}.email") == len(partitions)
    indexed = table_lake.read()
    assert indexed.num_rows == USERS
    assert indexed.drop_columns(["email__fc_bidx"]).equals(after.drop_columns(["email__fc_bidx"]))
    assert indexed.column("email__fc_bidx").null_count == len(ERASED)
    assert indexed.column("email__fc_bidx") != after.column("email__fc_bidx")
    assert sorted(p for op, p in table_lake.operations() if op == "reindex") == partitions
