"""A partitioned Delta Lake users table (delta-rs) for the table tests: its declaration, rows, and a hook that runs
another writer's commit between fieldcrypt's plan and its commit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from fieldcrypt.lake.tables.delta import DeltaTableFormat

TABLE = "warehouse/users"
DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
UNTOUCHED = ["user_id", "plan", "ingested_at", "date"]
DATASETS = {"users_delta": {"kind": "delta", "path": TABLE, "ingested_at": "ingested_at", "primary_key": "user_id"}}


def users(first: int, count: int, days: list[str]) -> pa.Table:
    ids = list(range(first, first + count))
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "email": [f"person{i}.secret@example.com" for i in ids],
            "plan": [("free", "pro", "team")[i % 3] for i in ids],
            "ingested_at": pa.array([datetime(2026, 11, 1, 12, tzinfo=UTC)] * len(ids), pa.timestamp("us", tz="UTC")),
            "date": [days[i % len(days)] for i in ids],
        }
    )


def emails(table: pa.Table) -> list[str]:
    return [str(value) for value in table.column("email").to_pylist()]


def between_plan_and_commit(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run `action` (a real delta-rs write by another writer) at the one moment a test cannot reach otherwise:
    after fieldcrypt planned the partition from its snapshot and wrote its files, right before its commit."""
    original = DeltaTableFormat.prepare_columns

    def prepare(self: DeltaTableFormat, fields: Any, protected: Any) -> None:
        action()
        original(self, fields, protected)

    monkeypatch.setattr(DeltaTableFormat, "prepare_columns", prepare)
