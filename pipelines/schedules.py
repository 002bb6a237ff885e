"""Schedules: protect the newest partition of each partition group once it is complete."""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.partitions import PartitionGroup
from assets.scope import WorkspaceScope

# 02:00 UTC for daily partitions (the day that just ended), 15 minutes past each hour for hourly,
# 02:00 on the 1st for monthly. Stopped by default; start them in the UI (Automation) or with
# `dagster schedule start <workspace>__protect_newest_partition`. Unpartitioned datasets have no schedule.
# When the newest partition is protected: (hour_of_day, minute_of_hour) of the schedule's tick.
_TIMING: dict[str, tuple[int | None, int | None]] = {"daily": (2, None), "hourly": (None, 15), "monthly": (2, None)}


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
                hour_of_day=_TIMING[group.granularity][0],
                minute_of_hour=_TIMING[group.granularity][1],
            )
        )
    return dg.Definitions(schedules=schedules)
