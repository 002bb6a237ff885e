"""Dagster partitions from the catalog: each dataset's declared granularity, start and end.

Partition keys are the core's canonical keys (fieldcrypt.policy.layout): daily `2026-11-28`,
hourly `2026-11-28T13`, monthly `2026-11`. Datasets declared with the same partitioning
share one PartitionsDefinition, so one job (and one backfill) covers all of them.
A Delta or Iceberg table (`kind: delta` / `kind: iceberg`) has the partitions of its own log
(`date=2026-11-28`): a DynamicPartitionsDefinition of its own, `<workspace>__<dataset>_table_partitions`,
filled from the table by the workspace's `sync_table_partitions` sensor (pipelines/observation.py).
An unpartitioned table is one partition (the core's `None`): its Dagster key is `(unpartitioned)`
(fieldcrypt.policy.layout.UNPARTITIONED), which no table partition can be (a table's keys are
`column=value`) and Dagster allows in a partition key. A Hive dataset declared `partitioning: none`
has no partitions definition at all (its assets are unpartitioned, their key None). Every place the
Dagster layer passes a partition to the core or back maps it with `dataset_partition` / `partition_key`.
With no end, the newest partition is the last complete one (UTC): a day's snapshot is
complete once the day is over, and Dagster has no partition keys after now. A declared end
after now includes the period in progress (today's partition), up to that end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from fieldcrypt.policy.layout import KEY_FORMATS, UNPARTITIONED, DatasetLayout

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)  # when the catalog declares no start
TABLE = "table"  # the granularity of a table's group: its partitions are the table's own
_DEFINITIONS = {
    "daily": dg.DailyPartitionsDefinition,
    "hourly": dg.HourlyPartitionsDefinition,
    "monthly": dg.MonthlyPartitionsDefinition,
}


@dataclass
class PartitionGroup:
    """Datasets that share a partitions definition (None: unpartitioned)."""

    suffix: str  # "" for the only group, else e.g. "_hourly"
    granularity: str
    partitions_def: dg.PartitionsDefinition | None
    datasets: list[str] = field(default_factory=list)


def _signature(layout: DatasetLayout) -> tuple[str, datetime | None, datetime | None]:
    granularity = layout.partitioning.granularity
    if granularity == "none":
        return granularity, None, None
    return granularity, layout.partitions_start or DEFAULT_START, layout.partitions_end


def _definition(granularity: str, start: datetime | None, end: datetime | None) -> dg.PartitionsDefinition | None:
    if granularity == "none":
        return None
    naive: dict[str, Any] = {"start_date": start.replace(tzinfo=None) if start else None}
    if end is not None:
        naive["end_date"] = end.replace(tzinfo=None)
        # A declared end after now includes the period in progress (today's partition, say): its
        # snapshot is still landing, and protecting it now and again later is safe (done rows are skipped).
        naive["end_offset"] = 1 if end > datetime.now(UTC) else 0
    definition: dg.PartitionsDefinition = _DEFINITIONS[granularity](
        **naive, fmt=KEY_FORMATS[granularity], timezone="UTC"
    )
    return definition


def dataset_partition(key: str | None) -> str | None:
    """The core's partition of a Dagster partition key: None for an unpartitioned dataset (no key, or a table's
    `(unpartitioned)`), else the key itself."""
    return None if key is None or key == UNPARTITIONED else key


def partition_key(partition: str | None, partitioned: bool) -> str | None:
    """The Dagster partition key of the core's `partition`, for an asset with (`partitioned`) or without a
    partitions definition: without one, None; with one, `(unpartitioned)` for an unpartitioned table."""
    if not partitioned:
        if partition is not None:
            raise ValueError(f"partition {partition!r} of an asset without partitions")
        return None
    return UNPARTITIONED if partition is None else partition


def table_partitions_name(workspace: str, dataset: str) -> str:
    """The dynamic partitions of a Delta or Iceberg dataset's table partitions."""
    return f"{workspace}__{dataset}_table_partitions"


def partition_groups(datasets: Mapping[str, DatasetLayout], workspace: str = "") -> list[PartitionGroup]:
    """The catalog's datasets grouped by partitioning, in a stable order; each table dataset a group of its own."""
    by_signature: dict[tuple[str, datetime | None, datetime | None], list[str]] = {}
    tables: list[PartitionGroup] = []
    for name in sorted(datasets):
        if datasets[name].source is not None:
            definition = dg.DynamicPartitionsDefinition(name=table_partitions_name(workspace, name))
            tables.append(PartitionGroup(f"_{name}", TABLE, definition, [name]))
            continue
        by_signature.setdefault(_signature(datasets[name]), []).append(name)
    groups = []
    single = len(by_signature) == 1
    for signature, names in by_signature.items():
        granularity, start, _ = signature
        suffix = "" if single else f"_{granularity}"
        if not single and sum(s[0] == granularity for s in by_signature) > 1 and start is not None:
            suffix += f"_{start:%Y%m%d%H}"
        groups.append(PartitionGroup(suffix, granularity, _definition(*signature), names))
    return groups + tables


def partitions_of(groups: list[PartitionGroup], dataset: str) -> dg.PartitionsDefinition | None:
    for group in groups:
        if dataset in group.datasets:
            return group.partitions_def
    raise KeyError(dataset)
