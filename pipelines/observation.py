"""Observing the landed snapshots, and protecting what changed: one sensor of each per workspace.

`<workspace>__observe_landed_snapshots` (running by default) records, every few minutes, the data version
of each landed partition whose files or policy changed since its last observation (assets/landed.py: one
listing per dataset, a few instance queries, footer reads for changed partitions only), up to
OBSERVATIONS_PER_TICK per tick, without starting a run. A protected partition whose landed version
moved then shows as stale ("unsynced") in the UI.

`<workspace>__protect_when_landed_changes` (stopped by default: starting protection runs is the
operator's choice) requests protection of those partitions (assets/landed.py `landed_changed_condition`).

`<workspace>__sync_table_partitions` (running by default; only in a workspace with a Delta or Iceberg
dataset) adds each table's partitions, read from its log, to the table's dynamic partitions
(assets/partitions.py; an unpartitioned table's one partition as `(unpartitioned)`), so new partitions of
the table can be protected, rotated and re-indexed.
"""

from __future__ import annotations

import dagster as dg

from assets import DatasetAssets
from assets.landed import observe_dataset
from assets.partitions import TABLE, partition_key
from assets.protection import partition_keys

OBSERVE_INTERVAL_SECONDS = 300
# Recording an observation costs the instance ~20 ms (SQLite, bench/observe.py): a tick records at most
# this many (newest partitions first); the rest are found again by the next ticks.
OBSERVATIONS_PER_TICK = 1000


def landed_observation_sensor(assets: DatasetAssets) -> dg.SensorDefinition:
    scope = assets.scope
    landed = dict(assets.landed)

    @dg.sensor(
        name=scope.job_name("observe_landed_snapshots"),
        minimum_interval_seconds=OBSERVE_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={scope.resource_key},
        description=(
            f"Records the data version of workspace {scope.name}'s landed partitions that changed (a file landed "
            "or was replaced, the policy changed), so their protection shows as stale. Starts no run."
        ),
    )
    def observe_landed(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        workspace = scope.resource(context).workspace("dagster:sensor")
        observations: list[dg.AssetObservation] = []
        for dataset, definition in landed.items():
            observations += observe_dataset(
                workspace,
                context.instance,
                definition.key,
                dataset,
                partition_keys(definition.partitions_def, context.instance),
                budget=OBSERVATIONS_PER_TICK - len(observations),
            )
        # Recorded by the daemon, not in this evaluation (a tick of the code server times out after 60 s).
        if not observations:
            return dg.SkipReason("no landed partition changed since it was last observed")
        return dg.SensorResult(asset_events=observations)

    return observe_landed


def protect_when_landed_changes(assets: DatasetAssets) -> dg.AutomationConditionSensorDefinition:
    scope = assets.scope
    return dg.AutomationConditionSensorDefinition(
        scope.job_name("protect_when_landed_changes"),
        target=dg.AssetSelection.assets(*assets.protected.values()),
        run_tags=scope.tags("protect"),
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=(
            f"Protects the partitions of workspace {scope.name} whose landed snapshot changed since they were "
            "protected (as observed by its observe_landed_snapshots sensor)."
        ),
    )


def table_partitions_sensor(assets: DatasetAssets) -> dg.SensorDefinition | None:
    """Adds the partitions a Delta or Iceberg table's log holds to its dynamic partitions; None without tables."""
    scope = assets.scope
    tables = {
        group.datasets[0]: group.partitions_def
        for group in assets.groups
        if group.granularity == TABLE and isinstance(group.partitions_def, dg.DynamicPartitionsDefinition)
    }
    if not tables:
        return None

    @dg.sensor(
        name=scope.job_name("sync_table_partitions"),
        minimum_interval_seconds=OBSERVE_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={scope.resource_key},
        description=(
            f"Adds the partitions of workspace {scope.name}'s Delta and Iceberg tables, read from each table's log, "
            "to their dynamic partitions. Starts no run."
        ),
    )
    def sync_table_partitions(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        workspace = scope.resource(context).workspace("dagster:sensor")
        requests = []
        for dataset, definition in tables.items():
            assert definition.name is not None  # a table's definition is named (assets/partitions.py)
            known = set(context.instance.get_dynamic_partitions(definition.name))
            keys = [partition_key(p, True) for p in workspace.partitions(dataset)]
            new = [key for key in keys if key is not None and key not in known]
            if new:
                requests.append(definition.build_add_request(new))
        if not requests:
            return dg.SkipReason("every table partition is known")
        return dg.SensorResult(dynamic_partitions_requests=requests)

    return sync_table_partitions


def build_observation_definitions(assets: DatasetAssets) -> dg.Definitions:
    tables = table_partitions_sensor(assets)
    sensors = [landed_observation_sensor(assets), protect_when_landed_changes(assets)]
    return dg.Definitions(sensors=[*sensors, *([tables] if tables is not None else [])])
