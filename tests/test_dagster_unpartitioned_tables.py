"""An unpartitioned Delta or Iceberg table through Dagster: its one partition is the Dagster key `(unpartitioned)`.

The core has an unpartitioned table as the one partition `None`; its Dagster assets (partitioned by the table's
dynamic partitions) see it as `(unpartitioned)` (assets/partitions.py). Each kind's table (delta-rs, pyiceberg
on a SQLite SQL catalog) is synced into its dynamic partitions by the `sync_table_partitions` sensor, observed
by `observe_landed_snapshots`, protected by a real materialization (after which the observer finds nothing
changed), rotated by the run the `key_rotation_driver` sensor requests (not sent to the CLI) and completed by the
run it requests next, then re-indexed and erased. After each step the table is read back by its own library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    asset_key,
    catalog_fieldcrypt,
    driver_tick,
    node,
    wrapping_keys,
)
from deltalake import DeltaTable, write_deltalake
from pyiceberg.catalog.sql import SqlCatalog

from assets import build_assets
from assets.partitions import table_partitions_name
from assets.rotation import rotation_partition_key
from fieldcrypt.policy.layout import UNPARTITIONED
from pipelines.erasure import record_erasure_request_job
from pipelines.observation import landed_observation_sensor, table_partitions_sensor
from resources import FieldcryptResource
from tests.iceberg_tables import SCHEMA
from tests.table_lakes import DAYS, UNTOUCHED, USERS, as_delta
from tests.table_lakes import users as iceberg_users
from tests.test_dagster_rotation import launch, start_campaign, workspace_defs

ERASED = [3, 4, 7, 150]


@dataclass
class FlatTable:
    """An unpartitioned table: its dataset, the workspace's resource, and its own library's read."""

    dataset: str
    fieldcrypt: FieldcryptResource
    read: Callable[[], pa.Table]


def flat_delta(tmp_path: Path, key: dict[str, Any]) -> FlatTable:
    location = tmp_path / "lake" / "warehouse" / "flat"
    write_deltalake(str(location), as_delta(iceberg_users(list(range(USERS)), DAYS)))  # no partition_by
    declared = {"kind": "delta", "path": "warehouse/flat", "ingested_at": "ingested_at", "primary_key": "user_id"}
    return FlatTable(
        "flat_delta",
        catalog_fieldcrypt(tmp_path, str(tmp_path / "lake"), key, datasets={"flat_delta": declared}),
        lambda: DeltaTable(str(location)).to_pyarrow_table().sort_by("user_id"),
    )


def flat_iceberg(tmp_path: Path, key: dict[str, Any]) -> FlatTable:
    lake = tmp_path / "lake"
    (lake / "warehouse").mkdir(parents=True)
    properties = {"type": "sql", "uri": f"sqlite:///{tmp_path}/iceberg.db", "warehouse": f"file://{lake}/warehouse"}
    catalog = SqlCatalog("default", **properties)
    catalog.create_namespace("shop")
    table = catalog.create_table("shop.flat", schema=SCHEMA)  # no partition spec
    table.append(iceberg_users(list(range(USERS)), DAYS))
    declared = {
        "kind": "iceberg",
        "table": "shop.flat",
        "path": "warehouse/shop/flat",
        "iceberg_catalog": properties,
        "ingested_at": "ingested_at",
        "primary_key": "user_id",
    }
    return FlatTable(
        "flat_ice",
        catalog_fieldcrypt(tmp_path, str(lake), key, datasets={"flat_ice": declared}),
        lambda: table.refresh().scan().to_arrow().sort_by("user_id"),
    )


@pytest.fixture(params=["delta", "iceberg"])
def flat(request: pytest.FixtureRequest, tmp_path: Path, keystore_path: Path) -> FlatTable:
    """The unpartitioned table, its email enabled with a blind index (history included), nothing protected yet."""
    key = {"provider": "local", "keystore": str(keystore_path)}
    made = flat_delta(tmp_path, key) if request.param == "delta" else flat_iceberg(tmp_path, key)
    workspace = made.fieldcrypt.workspace("test")
    assert workspace.partitions(made.dataset) == [None]  # the core's one partition
    workspace.enable(f"{made.dataset}.email", "email", acknowledge_irreversible=True, blind_index=True)
    workspace.encrypt_history(f"{made.dataset}.email", acknowledge_irreversible=True)
    workspace.key_cache().max_cells_per_key = 40  # several data keys to rotate
    return made


def sync(flat: FlatTable, instance: dg.DagsterInstance) -> None:
    """One tick of `sync_table_partitions`, its requests applied as the daemon applies them."""
    sensor = table_partitions_sensor(build_assets(flat.fieldcrypt.config()))
    assert sensor is not None
    with dg.build_sensor_context(instance=instance, resources=flat.fieldcrypt.as_resources()) as context:
        apply_partition_requests(sensor.evaluate_tick(context), instance)


def observe(flat: FlatTable, instance: dg.DagsterInstance) -> list[dg.AssetObservation]:
    """One tick of `observe_landed_snapshots`, its observations recorded as the daemon records them."""
    sensor = landed_observation_sensor(build_assets(flat.fieldcrypt.config()))
    with dg.build_sensor_context(instance=instance, resources=flat.fieldcrypt.as_resources()) as context:
        result = sensor.evaluate_tick(context)
    observations = [e for e in result.asset_events if isinstance(e, dg.AssetObservation)]
    for observation in observations:
        instance.report_runless_asset_event(observation)
    return observations


def test_an_unpartitioned_table_is_synced_protected_rotated_by_the_driver_and_completed(
    flat: FlatTable, tmp_path: Path
) -> None:
    fieldcrypt, dataset = flat.fieldcrypt, flat.dataset
    instance = dg.DagsterInstance.ephemeral()
    defs = workspace_defs(fieldcrypt)
    assets = build_assets(fieldcrypt.config())
    landed = flat.read()

    sync(flat, instance)
    assert instance.get_dynamic_partitions(table_partitions_name("acme", dataset)) == [UNPARTITIONED]
    sync(flat, instance)  # a second tick adds nothing
    assert instance.get_dynamic_partitions(table_partitions_name("acme", dataset)) == [UNPARTITIONED]
    (observed,) = observe(flat, instance)
    assert (observed.asset_key, observed.partition) == (asset_key(dataset), UNPARTITIONED)
    assert observed.metadata["files_not_protected"].value > 0  # type: ignore[operator]

    protected = dg.materialize(
        [assets.protected[dataset]], partition_key=UNPARTITIONED, resources=fieldcrypt.as_resources(), instance=instance
    )
    assert protected.success
    (materialization,) = protected.asset_materializations_for_node(node(f"protected_{dataset}"))
    assert materialization.partition == UNPARTITIONED
    assert materialization.metadata["newly_encrypted"].value == USERS
    assert materialization.metadata["partition"].value == UNPARTITIONED
    checks = protected.get_asset_check_evaluations()
    assert checks and all(check.passed for check in checks)
    assert observe(flat, instance) == []  # the protection reported the landed version it left behind
    before = flat.read()  # by the table's own library
    assert before.num_rows == USERS and before.select(UNTOUCHED).equals(landed.select(UNTOUCHED))
    assert not set(before.column("email").to_pylist()) & set(landed.column("email").to_pylist())

    assert start_campaign(fieldcrypt, instance).success
    campaign = fieldcrypt.workspace("test").bindings.load().active_campaign  # type: ignore[union-attr]
    assert campaign is not None and wrapping_keys(before) == {campaign.old.ref}
    tick = driver_tick(defs, fieldcrypt, instance)
    apply_partition_requests(tick, instance)
    (rotation,) = tick.run_requests  # the driver's own run, not a message sending the operator to the CLI
    expected = rotation_partition_key(campaign.campaign_id, UNPARTITIONED)
    assert rotation.job_name == node(f"rotate_keys_{dataset}")
    assert (rotation.tags[RANGE_START], rotation.tags[RANGE_END]) == (expected, expected)
    rotated = launch(defs, instance, rotation)
    assert rotated.success
    assert [str(m.partition) for m in rotated.get_asset_materialization_events()] == [expected]
    (check,) = rotated.get_asset_check_evaluations()
    assert check.check_name == "no_old_wrapped_keys" and check.passed
    (completion,) = driver_tick(defs, fieldcrypt, instance).run_requests
    assert completion.job_name == node("complete_key_rotation")
    assert launch(defs, instance, completion).success

    workspace = fieldcrypt.workspace("after")
    assert workspace.bindings.load().campaigns[-1].status == "complete"  # type: ignore[union-attr]
    after = flat.read()
    assert wrapping_keys(after) == {campaign.new.ref}
    assert after.drop_columns(["email__fc_dek"]).equals(before.drop_columns(["email__fc_dek"]))
    assert workspace.verify(dataset, None) == {f"{dataset}.email": USERS}

    workspace.start_reindex(f"{dataset}.email")
    reindexed = dg.materialize(
        [assets.reindexed[dataset]], partition_key=UNPARTITIONED, resources=fieldcrypt.as_resources(), instance=instance
    )
    (materialization,) = reindexed.asset_materializations_for_node(node(f"reindexed_{dataset}_index"))
    assert materialization.metadata[f"reindexed.{dataset}.email"].value == USERS
    assert fieldcrypt.workspace("complete").complete_reindex(f"{dataset}.email") == 1
    indexed = flat.read()
    assert indexed.drop_columns(["email__fc_bidx"]).equals(after.drop_columns(["email__fc_bidx"]))
    assert indexed.column("email__fc_bidx") != after.column("email__fc_bidx")

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
    erased = dg.materialize(
        [assets.erased[dataset]], partition_key=UNPARTITIONED, resources=fieldcrypt.as_resources(), instance=instance
    )
    (materialization,) = erased.asset_materializations_for_node(node(f"erased_{dataset}"))
    assert materialization.metadata["rows_matched"].value == len(ERASED)
    (request,) = fieldcrypt.workspace("test").erasure_requests(dataset)
    assert request.state() == "done"
    chosen = pc.is_in(flat.read().column("user_id"), value_set=pa.array(ERASED, pa.int64()))
    for column in ("email", "email__fc_ct", "email__fc_dek", "email__fc_bidx"):
        assert flat.read().filter(chosen).column(column).null_count == len(ERASED), column
    assert flat.read().filter(pc.invert(chosen)).equals(indexed.filter(pc.invert(chosen)))
