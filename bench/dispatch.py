"""Dispatch bench (`make bench`): Workspace.dispatch of a 1M-user segment out of a 4M-row
protected partition (local provider, email + phone), against a plain Parquet read + filter
of the same rows and columns from the unprotected snapshot, in the same run.

Two segments: `random` (1M user ids drawn uniformly: every row group holds some, nothing
can be skipped) and `clustered` (1M consecutive ids: row groups outside are skipped by
their key statistics). Human-readable lines first; the last line is one JSON object.
Usage: python bench/dispatch.py [--rows N] [--segment N] [--reps N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT_DIR, PARTITION, ROW_GROUP_SIZE, make_lake, peak_rss_mb, summary, write_users  # noqa: E402

from fieldcrypt.reads.dispatch import DispatchReport  # noqa: E402

ATTRS = ["email", "phone"]


def baseline(source: Path, segment: pa.Array) -> int:
    """Plain Parquet: read key + attributes, keep the segment's rows."""
    table = pq.read_table(source, columns=["user_id", *ATTRS])
    return table.filter(pc.is_in(table.column("user_id"), value_set=segment)).num_rows


def pushdown(source: Path, segment: pa.Array) -> int:
    """Plain Parquet with pyarrow's own predicate pushdown (dataset filter on the key column)."""
    return pq.read_table(source, columns=["user_id", *ATTRS], filters=pc.field("user_id").isin(segment)).num_rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--segment", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep bench/out/dispatch-<pid>")
    args = parser.parse_args()
    out = OUT_DIR / f"dispatch-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        source = write_users(out / "source.parquet", args.rows)
        lake = make_lake(out / "lake")
        lake.land(source)
        started = time.perf_counter()
        protected = lake.workspace().protect("users", PARTITION)
        print(
            f"partition: {protected.rows} rows, {protected.newly_encrypted} cells protected in "
            f"{time.perf_counter() - started:.1f}s (setup), row groups of {ROW_GROUP_SIZE}, "
            f"{lake.file.stat().st_size >> 20} MiB"
        )
        rng = np.random.default_rng(7)
        segments = {
            "random": pa.array(np.sort(rng.choice(args.rows, args.segment, replace=False)).astype(np.int64)),
            "clustered": pa.array(np.arange(args.rows // 3, args.rows // 3 + args.segment, dtype=np.int64)),
        }
        result: dict[str, object] = {"rows": args.rows, "segment": args.segment}
        for name, segment in segments.items():
            dispatch_times, baseline_times, pushdown_times = [], [], []
            report = DispatchReport("users", None)
            for _ in range(args.reps):  # interleaved with the baseline
                workspace = lake.workspace(actor="bench")
                workspace.key_cache()  # keystore load: setup
                report = DispatchReport("users", None)
                started = time.perf_counter()
                sent = 0
                for batch in workspace.dispatch("users", segment, ATTRS, reason="bench", report=report):
                    sent += batch.num_rows  # a sender would deliver and forget the batch here
                dispatch_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                plain_rows = baseline(source, segment)
                baseline_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                assert pushdown(source, segment) == plain_rows
                pushdown_times.append(time.perf_counter() - started)
                assert sent == plain_rows == report.rows == args.segment, (sent, plain_rows, report.rows)
            best, base = min(dispatch_times), min(baseline_times)
            cells = sum(report.cells.values())
            print(
                f"{name} segment of {args.segment}: dispatch {summary(dispatch_times)}; baseline read + filter "
                f"{summary(baseline_times)}; ratio {best / base:.2f} (to pyarrow's pushdown read "
                f"{min(pushdown_times):.3f}s: {best / min(pushdown_times):.2f}); {args.segment / best:,.0f} rows/s, "
                f"{cells / best:,.0f} cells/s; row groups read {report.row_groups_read}, "
                f"skipped {report.row_groups_skipped}"
            )
            result[name] = {
                "dispatch_s": round(best, 3),
                "baseline_s": round(base, 3),
                "ratio": round(best / base, 2),
                "pushdown_baseline_s": round(min(pushdown_times), 3),
                "ratio_to_pushdown": round(best / min(pushdown_times), 2),
                "rows_per_s": round(args.segment / best),
                "cells": cells,
                "row_groups_read": report.row_groups_read,
                "row_groups_skipped": report.row_groups_skipped,
            }
        result["peak_rss_mb"] = round(peak_rss_mb())
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
