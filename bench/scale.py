"""Scale bench (issue 10 §2): the completion scan and the rotation driver over many small partitions, and
the runs a rotation backfill launches with ranged runs.

Local lake, local key. One users partition is landed, protected and (for the "clean" copies) rotated;
its file is then copied into every partition directory, so setting up 10,000 partitions takes seconds
instead of 10,000 protections. A copy holds the same wrapped keys as its source, which is all the scan
reads (wrapped-key columns only, no KMS call).

  A. completion scan (`Workspace.rotation_status`, what `rotate status`, `complete_key_rotation` and the
     `key_rotation_driver` sensor run): sequential (threads=1) vs concurrent (default 8 threads), with
     every partition still under the old key;
  B. the driver's tick mid-campaign (90% of partitions rotated): first tick (no cursor, every partition
     read) vs the next one (cursor of partitions found clean: only the rest are read), and the cursor size;
  C. (--backfill N) a rotation backfill of N partitions launched through GraphQL as the UI launches it,
     runs executed in process: runs launched with multi_run(FIELDCRYPT_MAX_PARTITIONS_PER_RUN) and wall time.

Human-readable lines first; the last line is one JSON object.
Usage: python bench/scale.py [--partitions 1000 10000] [--backfill 1000] [--keep]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.sample_data import land_sample_lake, snapshot_path  # noqa: E402
from fieldcrypt import Workspace  # noqa: E402
from fieldcrypt.catalog import Catalog  # noqa: E402
from fieldcrypt.keystore import Keystore  # noqa: E402

WORKSPACE = "bench"
SEED_DAY = date(2000, 1, 1)  # the seed partition, outside every range measured


def start_moto() -> str:
    """moto's S3 on loopback, with dummy credentials (as tests/conftest.py)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return f"http://{host}:{port}"


def make_workspace(root: Path, start: date, s3: str | None = None) -> tuple[Workspace, Path]:
    """A workspace on a local lake under `root`, or (s3: moto's endpoint) on a fresh bucket there."""
    keystore = root / "keys" / "keystore.json"
    Keystore.create(keystore, WORKSPACE)
    catalog = root / "fieldcrypt.yaml"
    users = {
        "path": "users",
        "partitioning": {"granularity": "daily", "key": "date", "start": start.isoformat()},
        "ingested_at": "ingested_at",
        "primary_key": "user_id",
    }
    entry: dict[str, Any] = {
        "lake": str(root / "lake"),
        "key": {"provider": "local", "keystore": str(keystore)},
        "datasets": {"users": users},
    }
    if s3:
        import boto3

        bucket = f"fc-scale-{root.name.lower().replace('_', '-')}"[:63]
        boto3.client("s3", endpoint_url=s3, region_name="us-east-1").create_bucket(Bucket=bucket)
        entry |= {"lake": f"s3://{bucket}/lake", "s3_endpoint_url": s3, "region": "us-east-1"}
    document = {"default_workspace": WORKSPACE, "workspaces": {WORKSPACE: entry}}
    catalog.write_text(yaml.safe_dump(document))
    config = Catalog.load(catalog, environ={}).workspace_config(WORKSPACE)
    return Workspace(config, actor="bench"), catalog


def seed(workspace: Workspace) -> tuple[str, str]:
    """A protected users partition (old key) and the same partition rotated (new key), kept outside the
    dataset's path; the campaign is started."""
    # Ingested far after enablement: every row is encrypted.
    land_sample_lake(workspace.store, SEED_DAY, 1, users=20, events=1, ingested_shift=timedelta(days=365 * 40))
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    seed = SEED_DAY.isoformat()
    workspace.protect("users", seed)
    store, stored = workspace.store, snapshot_path("users", seed)
    old, new = "bench-seed/old.parquet", "bench-seed/new.parquet"
    if store.is_local:
        store.filesystem.create_dir(store.full_path("bench-seed"), recursive=True)
    store.filesystem.copy_file(store.full_path(stored), store.full_path(old))
    workspace.start_rotation()
    workspace.rotate("users", seed)
    store.filesystem.copy_file(store.full_path(stored), store.full_path(new))
    store.delete(stored)
    return old, new


def fill(workspace: Workspace, days: list[date], source: str) -> None:
    """A copy of `source` as the users file of each day (S3: a server-side copy)."""
    store = workspace.store
    for day in days:
        target = snapshot_path("users", day.isoformat())
        if store.is_local:
            store.filesystem.create_dir(store.full_path(target.rpartition("/")[0]), recursive=True)
        store.filesystem.copy_file(store.full_path(source), store.full_path(target))


def timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def scan_bench(count: int, keep: bool, s3: str | None = None) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"fc-scale-{count}-"))
    try:
        workspace, _ = make_workspace(root, SEED_DAY, s3)
        old, new = seed(workspace)
        days = [date(2001, 1, 1) + timedelta(days=i) for i in range(count)]
        fill(workspace, days, old)
        sequential, t_seq = timed(lambda: workspace.rotation_status(threads=1))
        concurrent, t_conc = timed(lambda: workspace.rotation_status())
        assert len(sequential.remaining) == len(concurrent.remaining) == count
        fill(workspace, days[: count * 9 // 10], new)  # 90% rotated
        first, t_first = timed(lambda: workspace.rotation_status())
        clean = first.clean
        second, t_second = timed(lambda: workspace.rotation_status(known_clean=clean))
        assert second.remaining == first.remaining and len(second.remaining) == count - count * 9 // 10
        from pipelines.rotation import driver_cursor

        cursor = driver_cursor("rot-bench", clean)
        return {
            "lake": "s3 (moto)" if s3 else "local",
            "partitions": count,
            "scan_sequential_s": round(t_seq, 3),
            "scan_concurrent_s": round(t_conc, 3),
            "tick_first_s": round(t_first, 3),
            "tick_incremental_s": round(t_second, 3),
            "tick_incremental_read": second.read,
            "cursor_bytes": len(cursor),
        }
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def backfill_bench(count: int, keep: bool) -> dict[str, Any]:
    """A rotation backfill of `count` partitions through GraphQL; runs launched and executed in process."""
    from dagster import AssetKey, DagsterRunStatus
    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._core.storage.dagster_run import RunsFilter
    from dagster._core.test_utils import instance_for_test
    from dagster._daemon.backfill import execute_backfill_iteration
    from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    root = Path(tempfile.mkdtemp(prefix=f"fc-backfill-{count}-"))
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=count - i) for i in range(count)]  # up to yesterday
    try:
        workspace, catalog = make_workspace(root, days[0])
        old, _ = seed(workspace)
        fill(workspace, days, old)
        campaign = workspace.bindings.load().active_campaign  # type: ignore[union-attr]
        assert campaign is not None
        os.environ.update(
            {
                "FIELDCRYPT_CATALOG": str(catalog),
                "FIELDCRYPT_WORKSPACE": WORKSPACE,
                "FIELDCRYPT_DAGSTER_EXECUTOR": "in_process",
            }
        )
        workspace_file = root / "workspace.yaml"
        workspace_file.write_text(
            "load_from:\n  - python_module:\n      module_name: pipelines.definitions\n      attribute: defs\n"
            f"      working_directory: {ROOT}\n      location_name: bench\n"
        )
        with (
            instance_for_test(synchronous_run_coordinator=True, synchronous_run_launcher=True) as instance,
            define_out_of_process_context(str(workspace_file), None, instance) as context,
        ):
            instance.add_dynamic_partitions(f"{WORKSPACE}__rotation_campaign", [campaign.campaign_id])
            started = time.perf_counter()
            launched = execute_dagster_graphql(
                context,
                LAUNCH_PARTITION_BACKFILL_MUTATION,
                variables={
                    "backfillParams": {
                        "assetSelection": [{"path": [WORKSPACE, "rotated_users_keys"]}],
                        "partitionNames": [f"{campaign.campaign_id}|{day.isoformat()}" for day in days],
                    }
                },
            )
            backfill_id = launched.data["launchPartitionBackfill"]["backfillId"]
            logger = logging.getLogger("bench")
            while True:
                list(execute_backfill_iteration(context.process_context, logger))
                backfill = instance.get_backfill(backfill_id)
                assert backfill is not None
                if backfill.status != BulkActionStatus.REQUESTED:
                    break
            wall = time.perf_counter() - started
            runs = instance.get_runs(filters=RunsFilter.for_backfill(backfill_id))
            materialized = instance.get_materialized_partitions(AssetKey([WORKSPACE, "rotated_users_keys"]))
        assert {run.status for run in runs} == {DagsterRunStatus.SUCCESS}, backfill.status
        status = workspace.rotation_status()
        return {
            "backfill_partitions": count,
            "max_partitions_per_run": int(os.environ.get("FIELDCRYPT_MAX_PARTITIONS_PER_RUN", "25")),
            "runs_launched": len(runs),
            "partitions_materialized": len(materialized),
            "backfill_wall_s": round(wall, 1),
            "remaining_after": len(status.remaining),
        }
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, nargs="+", default=[1000])
    parser.add_argument("--s3-partitions", type=int, nargs="*", default=[1000], help="the scan on moto S3 too")
    parser.add_argument("--backfill", type=int, default=0, help="partitions of a GraphQL rotation backfill (0: none)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "scan": []}
    moto = start_moto() if args.s3_partitions else None
    runs = [(count, None) for count in args.partitions] + [(count, moto) for count in args.s3_partitions]
    for count, s3 in runs:
        measured = scan_bench(count, args.keep, s3)
        results["scan"].append(measured)
        print(
            f"{measured['lake']:>9} {count:>6} partitions: completion scan {measured['scan_sequential_s']} s "
            f"sequential, {measured['scan_concurrent_s']} s concurrent; driver tick (90% rotated) "
            f"{measured['tick_first_s']} s first, {measured['tick_incremental_s']} s incremental "
            f"({measured['tick_incremental_read']} read); cursor {measured['cursor_bytes']} bytes"
        )
    if args.backfill:
        measured = backfill_bench(args.backfill, args.keep)
        results["backfill"] = measured
        print(
            f"rotation backfill of {measured['backfill_partitions']} partitions: {measured['runs_launched']} runs "
            f"(multi_run({measured['max_partitions_per_run']})), {measured['backfill_wall_s']} s, "
            f"{measured['partitions_materialized']} partitions materialized, {measured['remaining_after']} remaining"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
