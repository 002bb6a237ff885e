"""The generated Dagster assets of an Iceberg table (`kind: iceberg`): partitions from the table's manifests,
filled by the workspace's `sync_table_partitions` sensor, and one real materialization of `protected_<dataset>`
for a table partition, committed as a pyiceberg overwrite snapshot."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster_support import catalog_fieldcrypt
from pyiceberg.catalog.sql import SqlCatalog

from assets import build_assets
from assets.partitions import table_partitions_name
from pipelines.definitions import workspace_definitions
from pipelines.observation import table_partitions_sensor
from tests.iceberg_tables import BY_DAY, DAYS, PARTITIONS, SCHEMA, users


def test_an_iceberg_partition_is_materialized_from_the_partitions_of_its_table(
    tmp_path: Path, keystore_path: Path
) -> None:
    lake = tmp_path / "lake"
    (lake / "warehouse").mkdir(parents=True)
    properties = {"type": "sql", "uri": f"sqlite:///{tmp_path}/iceberg.db", "warehouse": f"file://{lake}/warehouse"}
    catalog = SqlCatalog("default", **properties)
    catalog.create_namespace("shop")
    table = catalog.create_table("shop.users", schema=SCHEMA, partition_spec=BY_DAY)
    table.append(users(0, 60, DAYS))
    datasets = {
        "users_ice": {
            "kind": "iceberg",
            "table": "shop.users",
            "path": "warehouse/shop/users",
            "iceberg_catalog": properties,
            "ingested_at": "ingested_at",
            "primary_key": "user_id",
        }
    }
    fieldcrypt = catalog_fieldcrypt(
        tmp_path, str(lake), {"provider": "local", "keystore": str(keystore_path)}, datasets=datasets
    )
    workspace = fieldcrypt.workspace("test")
    workspace.enable("users_ice.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_ice.email", acknowledge_irreversible=True)
    config = fieldcrypt.config()
    assets = build_assets(config)
    dg.Definitions.merge(
        workspace_definitions(config), dg.Definitions(resources=fieldcrypt.as_resources())
    ).resolve_all_job_defs()
    instance = dg.DagsterInstance.ephemeral()

    sensor = table_partitions_sensor(assets)
    assert sensor is not None
    with dg.build_sensor_context(instance=instance, resources=fieldcrypt.as_resources()) as context:
        tick = sensor.evaluate_tick(context)  # as the daemon evaluates it
    assert tick.dynamic_partitions_requests
    for request in tick.dynamic_partitions_requests:
        assert isinstance(request, dg.AddDynamicPartitionsRequest)
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    assert instance.get_dynamic_partitions(table_partitions_name("acme", "users_ice")) == PARTITIONS

    materialized = dg.materialize(
        [assets.protected["users_ice"]],
        partition_key=PARTITIONS[0],
        resources=fieldcrypt.as_resources(),
        instance=instance,
    )

    assert materialized.success
    (event,) = materialized.get_asset_materialization_events()
    assert event.materialization.metadata["newly_encrypted"].value == 20
    table.refresh()
    summary = table.current_snapshot().summary
    assert (summary["fieldcrypt.operation"], summary["fieldcrypt.partition"]) == ("encrypt", PARTITIONS[0])
    read = table.scan().to_arrow()
    assert read.num_rows == 60
    protected = read.filter(read.column("event_date").to_numpy(zero_copy_only=False) == DAYS[0])
    assert set(protected.column("email").to_pylist()) == {"****@example.com"}
