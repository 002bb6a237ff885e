"""A Delta (delta-rs) and an Iceberg (pyiceberg, SQLite SQL catalog) users table for the table tests, each in a
workspace of its own; its users ingested either side of an enablement backdated to ENABLED_AT (even ids before:
historical plaintext; odd ids after)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from pyiceberg.catalog.sql import SqlCatalog

from fieldcrypt import Workspace
from fieldcrypt.catalog import Catalog
from tests.catalogs import write_catalog
from tests.iceberg_tables import BY_DAY, SCHEMA

DAYS = [date(2026, 11, 1) + timedelta(days=d) for d in range(3)]
LATE = DAYS[-1] + timedelta(days=1)
ENABLED_AT = datetime(2026, 11, 2, 12, tzinfo=UTC)  # even ids ingested before it (historical), odd ids after
USERS = 300
UNTOUCHED = ["user_id", "plan", "ingested_at"]


def users(ids: list[int], days: list[date]) -> pa.Table:
    before, after = datetime(2026, 11, 1, 12, tzinfo=UTC), datetime(2026, 11, 3, 12, tzinfo=UTC)
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "email": [f"person{i:04d}.secret@example.com" for i in ids],
            "plan": [("free", "pro", "team")[i % 3] for i in ids],
            "ingested_at": pa.array([after if i % 2 else before for i in ids], pa.timestamp("us", tz="UTC")),
            "event_date": [days[i % len(days)] for i in ids],
        }
    )


def emails(ids: list[int]) -> list[str]:
    """Each email, and its first 16 characters (what Iceberg's default metrics keep as a bound)."""
    values = [f"person{i:04d}.secret@example.com" for i in ids]
    return values + [v[:16] for v in values]


def as_delta(table: pa.Table) -> pa.Table:
    """Rows of `users` as the Delta table holds them: the event date as a `date` string partition column."""
    days = pc.strftime(table.column("event_date"), format="%Y-%m-%d")
    return table.drop_columns(["event_date"]).append_column("date", days)


@dataclass
class Lake:
    """One table kind: its dataset, how its own library reads it, appends to it and lists fieldcrypt's commits."""

    dataset: str
    location: Path
    partition: Callable[[date], str]
    read: Callable[[], pa.Table]
    append: Callable[[pa.Table], None]
    operations: Callable[[], list[tuple[str, str]]]  # fieldcrypt's commits, oldest first: (operation, partition)
    workspace: Workspace


def workspace(tmp_path: Path, lake: Path, keystore: Path, datasets: dict[str, object]) -> Workspace:
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", str(lake), {"provider": "local", "keystore": str(keystore)}, datasets
    )
    return Workspace(Catalog.load(catalog, environ={}).workspace_config(), actor="test")


def delta_lake(tmp_path: Path, keystore: Path) -> Lake:
    lake = tmp_path / "lake"
    location = lake / "warehouse" / "users"

    def operations() -> list[tuple[str, str]]:
        history = reversed(DeltaTable(str(location)).history())
        ours = [e["fieldcrypt"] for e in history if "fieldcrypt" in e]
        return [(e["fieldcrypt.operation"], e["fieldcrypt.partition"]) for e in ours]

    write_deltalake(str(location), as_delta(users(list(range(USERS)), DAYS)), partition_by=["date"])
    declared = {"kind": "delta", "path": "warehouse/users", "ingested_at": "ingested_at", "primary_key": "user_id"}
    return Lake(
        "users_delta",
        location,
        lambda day: f"date={day.isoformat()}",
        lambda: DeltaTable(str(location)).to_pyarrow_table().sort_by("user_id"),
        lambda table: write_deltalake(str(location), as_delta(table), mode="append", schema_mode="merge"),
        operations,
        workspace(tmp_path, lake, keystore, {"users_delta": declared}),
    )


def iceberg_lake(tmp_path: Path, keystore: Path) -> Lake:
    lake = tmp_path / "lake"
    (lake / "warehouse").mkdir(parents=True)
    properties = {"type": "sql", "uri": f"sqlite:///{tmp_path}/iceberg.db", "warehouse": f"file://{lake}/warehouse"}
    catalog = SqlCatalog("default", **properties)
    catalog.create_namespace("shop")
    table = catalog.create_table("shop.users", schema=SCHEMA, partition_spec=BY_DAY)
    table.append(users(list(range(USERS)), DAYS))

    def operations() -> list[tuple[str, str]]:
        snapshots = sorted(table.refresh().snapshots(), key=lambda s: s.sequence_number or 0)
        ours = [s.summary for s in snapshots if s.summary is not None and s.summary["fieldcrypt.operation"]]
        return [(str(s["fieldcrypt.operation"]), str(s["fieldcrypt.partition"])) for s in ours]

    declared = {
        "kind": "iceberg",
        "table": "shop.users",
        "path": "warehouse/shop/users",
        "iceberg_catalog": properties,
        "ingested_at": "ingested_at",
        "primary_key": "user_id",
    }
    return Lake(
        "users_ice",
        lake / "warehouse" / "shop" / "users",
        lambda day: f"event_date_day={day.isoformat()}",
        lambda: table.refresh().scan().to_arrow().sort_by("user_id"),
        lambda rows: table.refresh().append(rows),
        operations,
        workspace(tmp_path, lake, keystore, {"users_ice": declared}),
    )
