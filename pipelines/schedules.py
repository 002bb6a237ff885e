"""Schedules: protect the newest daily partition once its day is over."""

from __future__ import annotations

import dagster as dg

from pipelines.jobs import protect_snapshots

# 02:00 UTC: the partition of the day that just ended (the newest one) is protected once its
# snapshot has landed. Stopped by default; start it in the UI (Automation) or with
# `dagster schedule start protect_newest_partition`.
protect_newest_partition = dg.build_schedule_from_partitioned_job(
    protect_snapshots,
    name="protect_newest_partition",
    hour_of_day=2,
    minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.STOPPED,
)

defs = dg.Definitions(schedules=[protect_newest_partition])
