"""Observation bench (issue 20 item 4): the cost of one pass of the landed-snapshot observation
(assets/landed.py `observe_dataset`, what `<workspace>__observe_landed_snapshots` runs) over many partitions.

Local lake, local key, one users partition landed and protected, its file copied into every partition
(as bench/scale.py does). Three passes on a fresh SQLite instance: the first (every partition new: one
footer read per file, one observation each), the next with nothing changed (no footer read, nothing
recorded), and one after `encrypt-history` (every partition gets a new version, no footer read).
Usage: python bench/observe.py [--partitions 1000 10000]; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scale import SEED_DAY, fill, make_workspace  # noqa: E402
from demo.sample_data import land_sample_lake, snapshot_path  # noqa: E402


def one(count: int) -> dict[str, Any]:
    import dagster as dg
    from dagster._core.test_utils import instance_for_test

    from assets.landed import observe_dataset

    root = Path(tempfile.mkdtemp(prefix=f"fc-observe-{count}-"))
    try:
        workspace, _ = make_workspace(root, SEED_DAY)
        land_sample_lake(workspace.store, SEED_DAY, 1, users=50, events=1, ingested_shift=timedelta(days=365 * 40))
        workspace.enable("users.email", "email", acknowledge_irreversible=True)
        workspace.protect("users", SEED_DAY.isoformat())
        source = "bench-seed/users.parquet"
        workspace.store.filesystem.create_dir(workspace.store.full_path("bench-seed"), recursive=True)
        stored = snapshot_path("users", SEED_DAY.isoformat())
        workspace.store.filesystem.copy_file(workspace.store.full_path(stored), workspace.store.full_path(source))
        workspace.store.delete(stored)
        days = [date(2001, 1, 1) + timedelta(days=i) for i in range(count)]
        fill(workspace, days, source)
        keys = {day.isoformat() for day in days}
        key = dg.AssetKey(["bench", "users"])
        results: dict[str, Any] = {"partitions": count}
        with instance_for_test() as instance:
            for name in ("first", "unchanged", "after_encrypt_history"):
                if name == "after_encrypt_history":
                    workspace.encrypt_history("users.email", acknowledge_irreversible=True)
                started = time.perf_counter()
                observations = observe_dataset(workspace, instance, key, "users", keys)
                observed = time.perf_counter() - started
                for observation in observations:
                    instance.report_runless_asset_event(observation)
                recorded = time.perf_counter() - started - observed
                results[name] = {
                    "observed_s": round(observed, 2),
                    "recorded": len(observations),
                    "record_s": round(recorded, 2),
                }
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, nargs="*", default=[1000])
    args = parser.parse_args()
    measured = [one(count) for count in args.partitions]
    for m in measured:
        print(
            f"{m['partitions']} partitions: "
            + "; ".join(
                f"{n} pass {m[n]['observed_s']} s, {m[n]['recorded']} recorded in {m[n]['record_s']} s"
                for n in ("first", "unchanged", "after_encrypt_history")
            )
        )
    print(json.dumps(measured))


if __name__ == "__main__":
    main()
