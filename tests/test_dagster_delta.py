"""The generated Dagster assets of a Delta table (`kind: delta`): partitions from the table's log, filled by
the workspace's `sync_table_partitions` sensor, and one real materialization of `protected_<dataset>` for a
table partition, committed through delta-rs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster_support import catalog_fieldcrypt
from deltalake import DeltaTable, write_deltalake

from assets import build_assets
from assets.partitions import table_partitions_name
from pipelines.definitions import workspace_definitions
from pipelines.observation import table_partitions_sensor
from tests.delta_tables import DATASETS, DAYS, TABLE, emails, users

PARTITION = f"date={DAYS[0]}"


def test_a_delta_partition_is_materialized_from_the_partitions_of_its_table(
    tmp_path: Path, keystore_path: Path
) -> None:
    lake = tmp_path / "lake"
    write_deltalake(str(lake / TABLE), users(0, 60, DAYS), partition_by=["date"])
    fieldcrypt = catalog_fieldcrypt(
        tmp_path, str(lake), {"provider": "local", "keystore": str(keystore_path)}, datasets=DATASETS
    )
    workspace = fieldcrypt.workspace("test")
    workspace.enable("users_delta.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_delta.email", acknowledge_irreversible=True)
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
    assert instance.get_dynamic_partitions(table_partitions_name("acme", "users_delta")) == [
        f"date={day}" for day in DAYS
    ]

    materialized = dg.materialize(
        [assets.protected["users_delta"]],
        partition_key=PARTITION,
        resources=fieldcrypt.as_resources(),
        instance=instance,
    )

    assert materialized.success
    (event,) = materialized.get_asset_materialization_events()
    assert event.materialization.metadata["newly_encrypted"].value == 20
    table = DeltaTable(str(lake / TABLE))
    assert any(entry.get("fieldcrypt", {}).get("fieldcrypt.partition") == PARTITION for entry in table.history())
    read = table.to_pyarrow_table()
    protected = read.filter(read.column("date").to_numpy(zero_copy_only=False) == DAYS[0])
    assert not set(emails(protected)) & set(emails(users(0, 60, DAYS)))
    assert read.num_rows == 60
