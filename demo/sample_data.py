"""Generated sample snapshots (users and events) and orders for the demo, tests and benchmarks.

They land where the demo's catalog (fieldcrypt.yaml) declares them: `<lake>/<dataset>/
date=YYYY-MM-DD/part-0.parquet`, one file per daily partition, as a simple upstream job
would. Lakes written by real engines (many files, other names) are built in the tests.
Orders are a Delta table (`<lake>/orders`, kind: delta) written and appended to by delta-rs
(`write_deltalake`), partitioned by its `date` column.

Values are synthetic; ingestion times are spread over the snapshot's day (or over a
chosen spans within it, `ingested=`), so that an enablement time inside the day splits
the rows. `ingested_shift` moves every ingestion time by a fixed amount (tests use it to
straddle "now"; the demo does not: its rows are ingested within their own day, never
after now).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import write_deltalake

from fieldcrypt.lake.store import LakeStore
from fieldcrypt.lake.tables.delta import storage_options, table_uri

PART_FILE = "part-0.parquet"
ORDERS_TABLE = "orders"  # the demo's Delta table, relative to the lake

_DOMAINS = ["Example.com", "mail.test", "corp.example", "post.invalid"]
_COUNTRIES = ["FR", "DE", "US", "BR", "JP", "IN"]
_EVENT_TYPES = ["open", "click", "purchase", "signup"]

USERS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("email", pa.string()),
        ("phone", pa.string()),
        ("name", pa.string()),
        ("country", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)
EVENTS_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.int64()),
        ("event_type", pa.string()),
        ("properties", pa.struct([("email", pa.string()), ("phone", pa.string()), ("campaign", pa.string())])),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)

ORDERS_SCHEMA = pa.schema(
    [
        ("order_id", pa.string()),
        ("email", pa.string()),
        ("amount_cents", pa.int64()),
        ("country", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
        ("date", pa.string()),
    ]
)


Span = tuple[datetime, datetime]  # [from, to) of ingestion times


def _times(day: date, rows: int, rng: random.Random, ingested: Sequence[Span] | None = None) -> list[datetime]:
    """Sorted ingestion times over the snapshot's day, or split evenly over `ingested` spans within that day."""
    day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    spans = list(ingested or [(day_start, day_start + timedelta(days=1))])
    times: list[datetime] = []
    for index, (start, end) in enumerate(spans):
        if not (day_start <= start < end <= day_start + timedelta(days=1)):
            raise ValueError(f"ingestion times {start} .. {end} are not within the snapshot's day {day}")
        count = rows // len(spans) + (index < rows % len(spans))
        width = (end - start) // timedelta(microseconds=1)
        times.extend(start + timedelta(microseconds=rng.randrange(width)) for _ in range(count))
    return sorted(times)


def users_table(day: date, rows: int, seed: int = 0, ingested: Sequence[Span] | None = None) -> pa.Table:
    rng = random.Random(f"users-{day}-{seed}")
    ids = list(range(rows))
    return pa.table(
        {
            "user_id": ids,
            "email": [None if i % 17 == 3 else f"user{i}.{rng.randrange(10**6)}@{rng.choice(_DOMAINS)}" for i in ids],
            "phone": [None if i % 13 == 5 else f"+33 6 {rng.randrange(10**8):08d}" for i in ids],
            "name": [f"Name {i}" for i in ids],
            "country": [rng.choice(_COUNTRIES) for _ in ids],
            "ingested_at": _times(day, rows, rng, ingested),
        },
        schema=USERS_SCHEMA,
    )


def events_table(day: date, rows: int, seed: int = 0, ingested: Sequence[Span] | None = None) -> pa.Table:
    rng = random.Random(f"events-{day}-{seed}")
    props = [
        None
        if i % 11 == 7
        else {
            "email": f"user{rng.randrange(1000)}@{rng.choice(_DOMAINS)}",
            "phone": None if i % 5 == 0 else f"+1 555 {rng.randrange(10**7):07d}",
            "campaign": f"c{rng.randrange(20)}",
        }
        for i in range(rows)
    ]
    return pa.table(
        {
            "event_id": [f"{day:%Y%m%d}-{i:08d}" for i in range(rows)],
            "user_id": [rng.randrange(1000) for _ in range(rows)],
            "event_type": [rng.choice(_EVENT_TYPES) for _ in range(rows)],
            "properties": props,
            "ingested_at": _times(day, rows, rng, ingested),
        },
        schema=EVENTS_SCHEMA,
    )


def orders_table(day: date, rows: int, seed: int = 0, ingested: Sequence[Span] | None = None) -> pa.Table:
    rng = random.Random(f"orders-{day}-{seed}")
    return pa.table(
        {
            "order_id": [f"o-{day:%Y%m%d}-{seed}-{i:06d}" for i in range(rows)],
            "email": [
                None if i % 19 == 4 else f"buyer{rng.randrange(10**6)}@{rng.choice(_DOMAINS)}" for i in range(rows)
            ],
            "amount_cents": [rng.randrange(100, 50_000) for _ in range(rows)],
            "country": [rng.choice(_COUNTRIES) for _ in range(rows)],
            "ingested_at": _times(day, rows, rng, ingested),
            "date": [day.isoformat()] * rows,
        },
        schema=ORDERS_SCHEMA,
    )


def write_orders(store: LakeStore, table: pa.Table) -> None:
    """Commit orders to the Delta table as an upstream delta-rs job would: the first write creates it
    (partitioned by `date`), later ones append, merging the columns fieldcrypt added since."""
    uri = table_uri(store, ORDERS_TABLE)
    options = storage_options(store)
    if store.exists(f"{ORDERS_TABLE}/_delta_log/00000000000000000000.json"):
        write_deltalake(uri, table, mode="append", schema_mode="merge", storage_options=options)
    else:
        write_deltalake(uri, table, partition_by=["date"], storage_options=options)


def land_orders(store: LakeStore, first_day: date, days: int, rows: int = 1_000) -> None:
    """The orders of `days` complete days from `first_day`, in one Delta commit."""
    write_orders(store, pa.concat_tables(orders_table(first_day + timedelta(days=d), rows) for d in range(days)))


def snapshot_path(dataset: str, day: date | str) -> str:
    """Where the demo lands one daily snapshot of a dataset, relative to the lake."""
    return f"{dataset}/date={day if isinstance(day, str) else day.isoformat()}/{PART_FILE}"


def write_snapshot(store: LakeStore, dataset: str, day: date, table: pa.Table, row_group_size: int = 64_000) -> str:
    """Land a snapshot file as an upstream job would (atomic, zstd)."""
    rel = snapshot_path(dataset, day)
    temp = store.temp_path(rel)
    with store.open_output(temp) as sink:
        pq.write_table(table, sink, row_group_size=row_group_size, compression="zstd")
    store.replace(temp, rel)
    return rel


def land_sample_lake(
    store: LakeStore,
    first_day: date,
    days: int,
    users: int = 1_000,
    events: int = 3_000,
    ingested_shift: timedelta = timedelta(0),
) -> list[str]:
    """Write `days` daily snapshots of both datasets; returns their relative paths."""
    written = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        written.append(write_snapshot(store, "users", day, _shifted(users_table(day, users), ingested_shift)))
        written.append(write_snapshot(store, "events", day, _shifted(events_table(day, events), ingested_shift)))
    return written


def _shifted(table: pa.Table, shift: timedelta) -> pa.Table:
    if not shift:
        return table
    index = table.schema.get_field_index("ingested_at")
    moved = pc.add(table.column(index), pa.scalar(shift, pa.duration("us")))
    return table.set_column(index, table.schema.field(index), moved)
