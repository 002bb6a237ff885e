"""Observing the landed snapshots, and protecting what changed: one sensor of each per workspace.

`<workspace>__observe_landed_snapshots` (running by default) records, every few minutes, the data version
of each landed partition whose files or policy changed since its last observation (assets/landed.py: one
listing per dataset, one instance query, footer reads for changed partitions only), without starting a
run. A protected partition whose landed version moved then shows as stale ("unsynced") in the UI.

`<workspace>__protect_when_landed_changes` (stopped by default: starting protection runs is the
operator's choice) requests protection of those partitions (assets/landed.py `landed_changed_condition`).
"""

from __future__ import annotations

import dagster as dg

from assets import DatasetAssets
from assets.landed import observe_dataset
from assets.protection import partition_keys

OBSERVE_INTERVAL_SECONDS = 300


def landed_observation_sensor(assets: DatasetAssets) -> dg.SensorDefinition:
    scope = assets.scope
    landed = {name: definition for name, definition in assets.landed.items()}

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
    def observe_landed(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        workspace = scope.resource(context).workspace("dagster:sensor")
        recorded = 0
        for dataset, definition in landed.items():
            key = definition.key
            for observation in observe_dataset(
                workspace, context.instance, key, dataset, partition_keys(definition.partitions_def)
            ):
                context.instance.report_runless_asset_event(observation)
                recorded += 1
        return dg.SkipReason(f"{recorded} landed partitions with a new data version recorded")

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


def build_observation_definitions(assets: DatasetAssets) -> dg.Definitions:
    return dg.Definitions(sensors=[landed_observation_sensor(assets), protect_when_landed_changes(assets)])
