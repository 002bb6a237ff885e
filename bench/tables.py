"""Table-format bench (`make bench-tables`, issue 19): the same users rows as a Hive folder, a Delta table
(delta-rs) and an Iceberg table (pyiceberg, SQL catalog on SQLite, local warehouse), each protected, verified,
rotated and (tables) purged through fieldcrypt, in one process, in one run, so their ratios compare like for like.

Data: --rows users-like rows (bench/common.users_batch) over --days daily partitions, two protected attributes
(email, phone). Hive: one `date=` folder per day. Delta: write_deltalake partitioned by a `date` string column.
Iceberg: a table partitioned by day of an `event_date` date column, one pyiceberg append. Each kind has its own
lake, local keystore and catalog file; datasets are declared as the catalog would (`kind: hive|delta|iceberg`).

Operations, each timed as a whole (wall seconds, and CPU seconds of the process):
- protect: Workspace.enable of both attributes, encrypt_history of both, protect of every partition;
- verify: Workspace.verify of every partition (decrypt every cell, check its mask);
- rotate: start_rotation, rotate of every partition, complete_rotation (a new local master key version);
- purge: Workspace.purge_history(older_than_hours=0) (tables only: the table's VACUUM / expire-snapshots).

For each: the table/hive ratio, of wall and of CPU seconds (a shared machine's load inflates wall time far more);
the table commits fieldcrypt made (calls of the format's commit) and how far the table's version moved (Delta: log
versions, which also counts the schema and property commits of prepare_columns and VACUUM's own commits; Iceberg:
snapshots, by sequence number); files written under the dataset's root (new or replaced paths: data `.parquet`, and
log, checkpoint or metadata files; fieldcrypt's own ledger and audit, outside it, are not counted), and files
deleted; the time inside fieldcrypt.engine.table_commit.TableCommit.finish (the whole partition commit:
prepare_columns, the format's commit, the ledger's update) and in the format's `commit` alone; schema_s, the time
in the format's `prepare_columns` and `file_schema` (the `__fc_*` columns added to the table's schema: Delta inside
finish, Iceberg before the first file is written, outside finish); snapshot_s and snapshots_read, the time in and
calls of the format's `snapshot` (reading the table's current state: the Delta log, the Iceberg metadata and
manifests); load_s and loads, in its `_load` (opening the table: delta-rs's log replay, the Iceberg catalog and
metadata JSON; within snapshot_s, commit_s and schema_s, and also outside them); manifest_s and manifests_read,
in and calls of pyiceberg's ManifestFile.fetch_manifest_entry (each Iceberg manifest decoded, by fieldcrypt or by
pyiceberg's commit planning); all measured by wrapping those methods in this process; and commit_share, finish
time over the operation's time.

Human-readable lines first (with the 1-minute load average at start and end); the last line is one JSON object.
Usage: python bench/tables.py [--rows N] [--days N] [--keep]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ATTRIBUTES, CODEC, DAY, OUT_DIR, ROW_GROUP_SIZE, peak_rss_mb, users_batch  # noqa: E402
from passthrough import load  # noqa: E402
from pyiceberg.manifest import ManifestFile  # noqa: E402

from demo.sample_data import snapshot_path  # noqa: E402
from fieldcrypt import Workspace  # noqa: E402
from fieldcrypt.catalog import Catalog  # noqa: E402
from fieldcrypt.engine.table_commit import TableCommit  # noqa: E402
from fieldcrypt.keys.keystore import Keystore  # noqa: E402
from fieldcrypt.lake.tables.delta import DeltaTableFormat  # noqa: E402
from fieldcrypt.lake.tables.iceberg import IcebergSnapshot, IcebergTableFormat  # noqa: E402

KINDS = ("hive", "delta", "iceberg")
OPERATIONS = ("protect", "verify", "rotate", "purge")
DATASET = "users"
WORKSPACE = "bench"


class Timings:
    """Seconds and calls inside the wrapped commit methods, per wrapped name, since the last `take`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner: type, method: str, name: str) -> None:
        original = getattr(owner, method)

        @functools.wraps(original)
        def timed_method(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                with self._lock:
                    self.seconds[name] = self.seconds.get(name, 0.0) + spent
                    self.calls[name] = self.calls.get(name, 0) + 1

        setattr(owner, method, timed_method)

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        with self._lock:
            taken = dict(self.seconds), dict(self.calls)
            self.seconds.clear()
            self.calls.clear()
        return taken


TIMINGS = Timings()
TIMINGS.wrap(TableCommit, "finish", "finish")
for _format in (DeltaTableFormat, IcebergTableFormat):
    TIMINGS.wrap(_format, "commit", "commit")
    TIMINGS.wrap(_format, "prepare_columns", "schema")
    TIMINGS.wrap(_format, "file_schema", "schema")  # Iceberg evolves its schema here (field ids before writing)
    TIMINGS.wrap(_format, "snapshot", "snapshot")  # reading the table's state: the Delta log, Iceberg manifests
    TIMINGS.wrap(_format, "_load", "load")  # opening the table: Delta log replay, Iceberg catalog + metadata JSON
# Every Iceberg manifest decoded (its Avro schema and entries), by fieldcrypt or by pyiceberg's own commit planning.
TIMINGS.wrap(ManifestFile, "fetch_manifest_entry", "manifest")


def days(count: int) -> list[date]:
    return [DAY + timedelta(days=d) for d in range(count)]


def day_rows(rows: int, count: int) -> Iterator[tuple[date, pa.Table]]:
    """Each day's users rows: a contiguous block of user ids, generated row group by row group."""
    per_day = rows // count
    for index, day in enumerate(days(count)):
        first = index * per_day
        batches = [
            users_batch(start, min(ROW_GROUP_SIZE, first + per_day - start), rows)
            for start in range(first, first + per_day, ROW_GROUP_SIZE)
        ]
        yield day, pa.Table.from_batches(batches)


def write_hive(lake: Path, rows: int, count: int) -> dict[str, Any]:
    for day, table in day_rows(rows, count):
        path = lake / snapshot_path(DATASET, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression=CODEC, row_group_size=ROW_GROUP_SIZE)
    return {"path": DATASET, "partitioning": {"granularity": "daily", "key": "date", "start": "2026-01-01"}}


def write_delta(lake: Path, rows: int, count: int) -> dict[str, Any]:
    from deltalake import write_deltalake

    root = lake / "warehouse" / DATASET
    tables = [t.append_column("date", pa.array([d.isoformat()] * t.num_rows)) for d, t in day_rows(rows, count)]
    write_deltalake(str(root), pa.concat_tables(tables), partition_by=["date"])
    return {"kind": "delta", "path": f"warehouse/{DATASET}"}


def write_iceberg(lake: Path, rows: int, count: int, root: Path) -> dict[str, Any]:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.transforms import DayTransform

    (lake / "warehouse").mkdir(parents=True, exist_ok=True)
    properties = {"type": "sql", "uri": f"sqlite:///{root}/iceberg.db", "warehouse": f"file://{lake}/warehouse"}
    catalog = SqlCatalog("default", **properties)
    catalog.create_namespace("shop")
    tables = [t.append_column("event_date", pa.array([d] * t.num_rows, pa.date32())) for d, t in day_rows(rows, count)]
    data = pa.concat_tables(tables)
    table = catalog.create_table(f"shop.{DATASET}", schema=data.schema)
    with table.update_spec() as spec:
        spec.add_field("event_date", DayTransform(), "event_date_day")
    table.append(data)
    location = Path(table.location().removeprefix("file://")).relative_to(lake)
    return {"kind": "iceberg", "table": f"shop.{DATASET}", "path": str(location), "iceberg_catalog": properties}


def make_workspace(root: Path, kind: str, rows: int, count: int) -> tuple[Workspace, Path]:
    """A fresh lake holding the rows as `kind`, its keystore and catalog file; the workspace and the dataset's root."""
    if root.exists():
        shutil.rmtree(root)
    lake = root / "lake"
    lake.mkdir(parents=True)
    keystore = root / "keys" / "keystore.json"
    Keystore.create(keystore, WORKSPACE)
    if kind == "hive":
        declaration = write_hive(lake, rows, count)
    elif kind == "delta":
        declaration = write_delta(lake, rows, count)
    else:
        declaration = write_iceberg(lake, rows, count, root)
    declaration.update({"ingested_at": "ingested_at", "primary_key": "user_id"})
    entry = {
        "lake": str(lake),
        "key": {"provider": "local", "keystore": str(keystore)},
        "datasets": {DATASET: declaration},
    }
    catalog = root / "fieldcrypt.yaml"
    catalog.write_text(yaml.safe_dump({"default_workspace": WORKSPACE, "workspaces": {WORKSPACE: entry}}))
    workspace = Workspace(Catalog.load(catalog, environ={}).workspace_config(), actor="bench")
    return workspace, lake / declaration["path"]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: (inode, mtime_ns), to tell the files an operation wrote or deleted."""
    found: dict[str, tuple[int, int]] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with_stat = os.stat(path)
            found[path] = (with_stat.st_ino, with_stat.st_mtime_ns)
    return found


def table_version(workspace: Workspace, kind: str) -> int | None:
    """The table's version: the Delta log's, or the Iceberg table's last sequence number (snapshot ids are random)."""
    if kind == "hive":
        return None
    snapshot = workspace._table(DATASET).snapshot()  # noqa: SLF001 (the bench reads what a commit moved)
    if isinstance(snapshot, IcebergSnapshot):
        return int(snapshot.table.table.metadata.last_sequence_number)
    return snapshot.version


def is_data(path: str) -> bool:
    """A data file (not a Delta checkpoint, which is Parquet too)."""
    return path.endswith(".parquet") and "_delta_log" not in path


def run_operation(workspace: Workspace, kind: str, root: Path, fn: Callable[[], object]) -> dict[str, Any]:
    before, version = tree(root), table_version(workspace, kind)
    TIMINGS.take()
    cpu = time.process_time()
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    spent, calls = TIMINGS.take()
    after = tree(root)
    written = [p for p, key in after.items() if before.get(p) != key]
    moved = None if version is None else table_version(workspace, kind)
    return {
        "s": round(seconds, 3),
        "cpu_s": round(cpu, 3),
        "commits": calls.get("commit", 0),
        "versions": None if version is None or moved is None else moved - version,
        "data_files_written": sum(is_data(p) for p in written),
        "other_files_written": sum(not is_data(p) for p in written),
        "files_deleted": len(set(before) - set(after)),
        "finish_s": round(spent.get("finish", 0.0), 3),
        "commit_s": round(spent.get("commit", 0.0), 3),
        "schema_s": round(spent.get("schema", 0.0), 3),
        "snapshot_s": round(spent.get("snapshot", 0.0), 3),
        "snapshots_read": calls.get("snapshot", 0),
        "load_s": round(spent.get("load", 0.0), 3),
        "loads": calls.get("load", 0),
        "manifest_s": round(spent.get("manifest", 0.0), 3),
        "manifests_read": calls.get("manifest", 0),
        "commit_share": round(spent.get("finish", 0.0) / seconds, 3) if seconds else 0.0,
    }


def bench_kind(out: Path, kind: str, rows: int, count: int) -> dict[str, dict[str, Any]]:
    workspace, root = make_workspace(out / kind, kind, rows, count)
    partitions = workspace.partitions(DATASET)
    assert len(partitions) == count, partitions
    workspace.key_cache()  # keystore load: setup, not protection

    def protect() -> None:
        for attribute, mask in ATTRIBUTES:
            workspace.enable(f"{DATASET}.{attribute}", mask, acknowledge_irreversible=True)
            workspace.encrypt_history(f"{DATASET}.{attribute}", acknowledge_irreversible=True)
        cells = sum(workspace.protect(DATASET, p).newly_encrypted for p in partitions)
        assert cells > 0.9 * rows, cells

    def verify() -> None:
        cells = sum(sum(workspace.verify(DATASET, p).values()) for p in partitions)
        assert cells > 0.9 * rows, cells

    def rotate() -> None:
        workspace.start_rotation()
        assert all(workspace.rotate(DATASET, p).rewrapped > 0 for p in partitions)
        workspace.complete_rotation()

    def purge() -> None:
        workspace.purge_history(DATASET, older_than_hours=0)
        assert not workspace.table_history(DATASET).holds_plaintext

    steps: dict[str, Callable[[], None]] = {"protect": protect, "verify": verify, "rotate": rotate}
    if kind != "hive":
        steps["purge"] = purge
    return {name: run_operation(workspace, kind, root, fn) for name, fn in steps.items()}


def report(measured: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for operation in OPERATIONS:
        hive = measured["hive"].get(operation)
        for kind in KINDS:
            numbers = measured[kind].get(operation)
            if numbers is None:
                continue
            ratio = (
                f", {numbers['s'] / hive['s']:.2f}x hive (CPU {numbers['cpu_s'] / hive['cpu_s']:.2f}x)"
                if hive and kind != "hive"
                else ""
            )
            commit = (
                f"; {numbers['commits']} commits (version +{numbers['versions']}), finish {numbers['finish_s']:.3f}s "
                f"= {numbers['commit_share']:.0%} (format commit {numbers['commit_s']:.3f}s); schema "
                f"{numbers['schema_s']:.3f}s; {numbers['snapshots_read']} table reads {numbers['snapshot_s']:.3f}s; "
                f"{numbers['loads']} table opens {numbers['load_s']:.3f}s; {numbers['manifests_read']} manifest reads "
                f"{numbers['manifest_s']:.3f}s"
                if kind != "hive"
                else ""
            )
            print(
                f"{operation:8s}{kind:8s}{numbers['s']:7.3f}s (CPU {numbers['cpu_s']:.2f}s){ratio}; files written "
                f"{numbers['data_files_written']} data + {numbers['other_files_written']} other, "
                f"{numbers['files_deleted']} deleted{commit}"
            )
            for key, value in numbers.items():
                result[f"{kind}_{operation}_{key}"] = value
            if hive and kind != "hive":
                result[f"{kind}_vs_hive_{operation}"] = round(numbers["s"] / hive["s"], 3)
                result[f"{kind}_vs_hive_{operation}_cpu"] = round(numbers["cpu_s"] / hive["cpu_s"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="users rows in all (default 200000)")
    parser.add_argument("--days", type=int, default=4, help="daily partitions (default 4)")
    parser.add_argument("--keep", action="store_true", help="keep bench/out/tables-<pid>")
    args = parser.parse_args()
    out = OUT_DIR / f"tables-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        result: dict[str, Any] = {"load_avg_1m": load(), "load_avg_5m": round(os.getloadavg()[1], 2)}
        result.update({"rows": args.rows, "partitions": args.days, "attributes": len(ATTRIBUTES)})
        print(
            f"users: {args.rows} rows over {args.days} daily partitions, {len(ATTRIBUTES)} protected attributes "
            f"({', '.join(a for a, _ in ATTRIBUTES)}); 1-minute load {result['load_avg_1m']} on {os.cpu_count()} cores"
        )
        measured = {kind: bench_kind(out, kind, args.rows, args.days) for kind in KINDS}
        result.update(report(measured))
        result["load_avg_1m_end"] = load()
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        print(f"1-minute load at the end {result['load_avg_1m_end']}; peak RSS {result['peak_rss_mb']:.0f} MiB")
        print(f"bench/tables.py took {time.perf_counter() - started:.0f}s")
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
