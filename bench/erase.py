"""Erasure bench (issue 21): erase 1,000 keys from 1,000 small users partitions of the demo's shape.

Local lake, local key. Each partition is a users snapshot of the demo's columns (bench.common.users_batch:
user_id, email, phone, name, country, ingested_at; email and phone protected, every row ingested after
the enablement) of ROWS users; partition i holds the users [i * ROWS, (i + 1) * ROWS), as incremental
snapshots (users created or changed that day) do. The 1,000 keys are drawn at random (seeded) from all
the users, so some partitions hold several, and some none: a file whose user_id statistics (min, max per
row group, in its footer) exclude every key is skipped without reading past its footer.

  1. `Workspace.erase` (what `fieldcrypt erase` runs): the request recorded, then every partition with the
     keys in clear (statistics skip files); seconds, files rewritten, files skipped by statistics;
  2. the same again: the request is reused, nothing is rewritten (a re-run's cost);
  3. `Workspace.erase_partition` of every partition by the request's keyed tags, as a Dagster backfill of the
     erasure assets and every protection run do: no statistics skip (tags have no order), every file's
     user_id column is read and each row's key tagged; nothing left to rewrite.

Set-up (landing and protecting the partitions) is timed apart. Human-readable lines first; the last line
is one JSON object.

`--requests-on-file 0,100,2000` measures instead what the requests on file cost every protection run (issue 21,
the index of active requests): one partition of ROWS users, protected; N one-key requests recorded as a lake
that gets 3 a day with the default 90-day expiry would have them (so at most 270 active, the rest expired;
their keys in no file, so nothing is rewritten); then `protect` of that partition, median of 5, by a new
Workspace each time (a new process: nothing cached) and again by the same one (a later run of one process).
The first protect after recording (which moves expired requests out of the index) is not timed. Only
`ErasureRequests.create` and `Workspace.protect` are used, so the same script times the code before the index
(PYTHONPATH at a checkout of it).
Usage: python bench/erase.py [--partitions 1000] [--keys 1000] [--rows 100] [--keep]
       python bench/erase.py --requests-on-file 0,100,2000 [--rows 100]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from bench.common import CODEC, make_lake, users_batch
from demo.sample_data import USERS_SCHEMA, snapshot_path

FIRST_DAY = date(2026, 1, 1)  # the demo catalog's first users partition


def land_and_protect(root: Path, partitions: int, rows: int) -> tuple[Any, list[str], float]:
    lake = make_lake(root)
    workspace = lake.workspace()
    days = [(FIRST_DAY + timedelta(days=i)).isoformat() for i in range(partitions)]
    started = time.perf_counter()
    for index, day in enumerate(days):
        path = lake.lake / snapshot_path("users", day)
        path.parent.mkdir(parents=True, exist_ok=True)
        batch = users_batch(index * rows, rows, rows, seed=index)
        with pq.ParquetWriter(path, USERS_SCHEMA, compression=CODEC) as writer:
            writer.write_batch(batch)
        workspace.protect("users", day)
    return lake, days, time.perf_counter() - started


PER_DAY = 3
EXPIRY_DAYS = 90


def requests_on_file(root: Path, counts: list[int], rows: int) -> dict[str, Any]:
    """Protect cost of one partition with each count of requests on file (see the module's docstring)."""
    results: dict[str, Any] = {}
    for count in counts:
        lake, days, _ = land_and_protect(root / f"requests-{count}", 1, rows)
        workspace = lake.workspace()
        now = datetime.now(UTC)
        started = time.perf_counter()
        for i in range(count):
            made = now - timedelta(days=(count - 1 - i) / PER_DAY)
            workspace.erasures.create(
                "users", ["user_id"], [str(10**9 + i).encode()], f"BENCH-{i}", "bench", days,
                expires_in=timedelta(days=EXPIRY_DAYS), now=made,
            )  # fmt: skip
            if i % 100 == 99:
                workspace.erasures.active("users")  # as the day's protection runs would: expired ones leave the index
        recording = time.perf_counter() - started
        workspace.protect("users", days[0])  # untimed: moves the expired requests out of the index
        cold, warm = [], []
        for _ in range(5):
            fresh = lake.workspace()
            started = time.perf_counter()
            fresh.protect("users", days[0])
            cold.append(time.perf_counter() - started)
            started = time.perf_counter()
            fresh.protect("users", days[0])
            warm.append(time.perf_counter() - started)
        active = sum(1 for i in range(count) if (count - 1 - i) / PER_DAY < EXPIRY_DAYS)
        print(
            f"{count:,} requests on file ({active} active): recorded in {recording:.1f}s; protect of one partition: "
            f"new process median {statistics.median(cold) * 1000:.0f} ms, same process again median "
            f"{statistics.median(warm) * 1000:.0f} ms"
        )
        results[str(count)] = {
            "active": active,
            "protect_new_process_ms": round(statistics.median(cold) * 1000, 1),
            "protect_same_process_ms": round(statistics.median(warm) * 1000, 1),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100, help="users per partition")
    parser.add_argument("--keep", action="store_true", help="keep the lake (printed) instead of deleting it")
    parser.add_argument(
        "--requests-on-file", metavar="N,N,...", help="time protect of one partition with N requests on file instead"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fieldcrypt-erase-bench-"))
    try:
        if args.requests_on_file:
            counts = [int(n) for n in args.requests_on_file.split(",")]
            measured = requests_on_file(root, counts, args.rows)
            print(json.dumps({"rows_per_partition": args.rows, "requests_on_file": measured}))
            return
        lake, days, setup = land_and_protect(root / "bench", args.partitions, args.rows)
        print(f"set-up: {args.partitions} partitions of {args.rows} users landed and protected in {setup:.1f}s")
        keys = sorted(random.Random(21).sample(range(args.partitions * args.rows), args.keys))
        keys_file = root / "keys.txt"
        keys_file.write_text("".join(f"{key}\n" for key in keys))
        holding = len({key // args.rows for key in keys})

        workspace = lake.workspace()
        started = time.perf_counter()
        request, report = workspace.erase("users", keys_file, "BENCH-21")
        first = time.perf_counter() - started
        print(
            f"erase (keys in clear): {first:.1f}s; {report.files} files, {report.files_rewritten} rewritten, "
            f"{report.files_skipped_by_statistics} skipped by their key statistics, {report.rows_matched} rows, "
            f"{report.cells} cells erased; {holding} partitions hold a key; request {request.state()}"
        )
        started = time.perf_counter()
        _, again = workspace.erase("users", keys_file, "BENCH-21")
        rerun = time.perf_counter() - started
        print(f"re-run: {rerun:.1f}s; {again.files_rewritten} files rewritten")

        started = time.perf_counter()
        tagged = [workspace.erase_partition("users", day) for day in days]
        by_tags = time.perf_counter() - started
        print(
            f"every partition by the request's tags (a backfill): {by_tags:.1f}s; "
            f"{sum(r.files_rewritten for r in tagged)} files rewritten, "
            f"{sum(r.files_skipped_by_statistics for r in tagged)} skipped by statistics"
        )
        result = {
            "partitions": args.partitions,
            "rows_per_partition": args.rows,
            "keys": args.keys,
            "partitions_holding_a_key": holding,
            "setup_seconds": round(setup, 2),
            "erase_seconds": round(first, 2),
            "files_rewritten": report.files_rewritten,
            "files_skipped_by_statistics": report.files_skipped_by_statistics,
            "rows_matched": report.rows_matched,
            "cells_erased": report.cells,
            "rerun_seconds": round(rerun, 2),
            "rerun_files_rewritten": again.files_rewritten,
            "by_tags_seconds": round(by_tags, 2),
            "by_tags_files_rewritten": sum(r.files_rewritten for r in tagged),
        }
        if args.keep:
            print(f"lake kept at {lake.lake}")
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
