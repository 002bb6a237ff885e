"""Schedules: protect the newest partition of each partition group once it is complete."""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.partitions import PartitionGroup
from assets.scope import WorkspaceScope

# 02:00 UTC for daily partitions (the day that just ended), 15 minutes past each hour for hourly,
# 02:00 on the 1st for monthly. Stopped by default; start them in the UI (Automation) or with
# `dagster schedule start <workspace>__protect_newest_partition`. Unpartitioned datasets have no schedule.
_TIMING = {"daily": {"hour_of_day": 2}, "hourly": {"minute_of_hour": 15}, "monthly": {"hour_of_day": 2}}


def build_schedule_definitions(
    scope: WorkspaceScope, groups: list[PartitionGroup], protect_jobs: list[UnresolvedAssetJobDefinition]
) -> dg.Definitions:
    schedules = []
    for group, job in zip(groups, protect_jobs, strict=True):
        if group.partitions_def is None or group.granularity not in _TIMING:  # unpartitioned, or a table's own
            continue
        schedules.append(
            dg.build_schedule_from_partitioned_job(
                job,
                name=scope.job_name(f"protect_newest_partition{group.suffix}"),
                default_status=dg.DefaultScheduleStatus.STOPPED,
                **_TIMING[group.granularity],
            )
        )
    return dg.Definitions(schedules=schedules)
