"""An Iceberg users table partitioned by day (pyiceberg) for the table tests: its schema, partition spec, rows, and a
hook that runs another writer's commit between fieldcrypt's plan and its commit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform
from pyiceberg.types import DateType, LongType, NestedField, StringType, TimestamptzType

from fieldcrypt.lake.tables.iceberg import IcebergTableFormat

DAYS = [date(2026, 11, 1) + timedelta(days=d) for d in range(3)]
PARTITIONS = [f"event_date_day={day.isoformat()}" for day in DAYS]
UNTOUCHED = ["user_id", "plan", "ingested_at", "event_date"]
SCHEMA = Schema(
    NestedField(1, "user_id", LongType(), required=False),
    NestedField(2, "email", StringType(), required=False),
    NestedField(3, "plan", StringType(), required=False),
    NestedField(4, "ingested_at", TimestamptzType(), required=False),
    NestedField(5, "event_date", DateType(), required=False),
)
BY_DAY = PartitionSpec(PartitionField(source_id=5, field_id=1000, transform=DayTransform(), name="event_date_day"))


def users(first: int, count: int, days: list[date]) -> pa.Table:
    ids = list(range(first, first + count))
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "email": [f"person{i:04d}.secret@example.com" for i in ids],
            "plan": [("free", "pro", "team")[i % 3] for i in ids],
            "ingested_at": pa.array([datetime(2026, 11, 1, 12, tzinfo=UTC)] * len(ids), pa.timestamp("us", tz="UTC")),
            "event_date": [days[i % len(days)] for i in ids],
        }
    )


def plaintexts(count: int) -> list[str]:
    """Every email, and its first 16 characters: what Iceberg's default metrics (`truncate(16)`) keep."""
    values = [str(v) for v in users(0, count, DAYS).column("email").to_pylist()]
    return values + [v[:16] for v in values]


def between_plan_and_commit(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run `action` (a real pyiceberg commit by another writer) at the one moment a test cannot reach otherwise:
    after fieldcrypt planned the partition from its snapshot and wrote its files, right before its commit."""
    original = IcebergTableFormat.prepare_columns

    def prepare(self: IcebergTableFormat, fields: Any, protected: Any) -> None:
        action()
        original(self, fields, protected)

    monkeypatch.setattr(IcebergTableFormat, "prepare_columns", prepare)
