"""Backfill latency bench (issue 20 item 5): a protection backfill launched through GraphQL against a
`dagster dev`-like instance (a `dagster-daemon run` process: backfill daemon, queued run coordinator,
runs launched as subprocesses), on an instance file of choice.

Local lake, local key, one daily dataset (users, 50 rows per partition, every row ingested after
enablement, so each partition has cells to encrypt). The backfill selects `bench/protected_users`, so
each run has one step. Measured from the instance (run records' create, start and end times):

- first run: from the GraphQL launch to the first run of the backfill existing (the backfill daemon's
  next iteration: every 30 s, hard-coded in Dagster 1.13) and to it starting (the run queue's dequeue);
- tail: from the end of the last run to the backfill showing Succeeded (the daemon's next iteration);
- each run's queue wait (start - create) and duration (end - start);
- wall: launch to Succeeded.

Usage: python bench/backfill_latency.py --partitions 30 --instance dagster_home/dagster.yaml \
           [--executor multiprocess] [--per-run 25] [--label before]
Human-readable lines first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.sample_data import land_sample_lake  # noqa: E402
from fieldcrypt import Workspace  # noqa: E402
from fieldcrypt.catalog import Catalog  # noqa: E402
from fieldcrypt.keys.keystore import Keystore  # noqa: E402

WORKSPACE = "bench"
ASSET = [WORKSPACE, "protected_users"]


def make_lake(root: Path, count: int) -> tuple[Path, list[str]]:
    """`count` daily users partitions up to yesterday, users.email enabled; the catalog's path."""
    import yaml

    today = datetime.now(UTC).date()
    days = [today - timedelta(days=count - i) for i in range(count)]
    keystore = root / "keys" / "keystore.json"
    Keystore.create(keystore, WORKSPACE)
    users = {
        "path": "users",
        "partitioning": {"granularity": "daily", "key": "date", "start": days[0].isoformat()},
        "ingested_at": "ingested_at",
        "primary_key": "user_id",
    }
    entry = {
        "lake": str(root / "lake"),
        "key": {"provider": "local", "keystore": str(keystore)},
        "datasets": {"users": users},
    }
    catalog = root / "fieldcrypt.yaml"
    catalog.write_text(yaml.safe_dump({"default_workspace": WORKSPACE, "workspaces": {WORKSPACE: entry}}))
    workspace = Workspace(Catalog.load(catalog, environ={}).workspace_config(WORKSPACE), actor="bench")
    # Ingested far after enablement: every email is encrypted by the backfill.
    land_sample_lake(workspace.store, days[0], count, users=50, events=1, ingested_shift=timedelta(days=365 * 40))
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    return catalog, [day.isoformat() for day in days]


def start_daemon(root: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    workspace_file = root / "workspace.yaml"
    workspace_file.write_text(
        "load_from:\n  - python_module:\n      module_name: pipelines.definitions\n      attribute: defs\n"
        f"      working_directory: {ROOT}\n      location_name: bench\n"
    )
    daemon = Path(sys.executable).parent / "dagster-daemon"
    log = (root / "daemon.log").open("wb")
    # A session of its own: stopping it stops its code server and run workers too, and nothing else.
    return subprocess.Popen(
        [str(daemon), "run", "-w", str(workspace_file)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def measure(count: int, instance_file: Path, executor: str | None, per_run: int | None, keep: bool) -> dict[str, Any]:
    from dagster import DagsterInstance
    from dagster._core.events import DagsterEventType
    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._core.storage.dagster_run import RunsFilter
    from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    root = Path(tempfile.mkdtemp(prefix=f"fc-latency-{count}-"))
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(instance_file, home / "dagster.yaml")
    catalog, partitions = make_lake(root, count)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "FIELDCRYPT_CATALOG": str(catalog),
        "FIELDCRYPT_WORKSPACE": WORKSPACE,
    }
    for name, value in (("FIELDCRYPT_DAGSTER_EXECUTOR", executor), ("FIELDCRYPT_MAX_PARTITIONS_PER_RUN", per_run)):
        env.pop(name, None)
        if value is not None:
            env[name] = str(value)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("FIELDCRYPT_", "DAGSTER_HOME"))})
    for name in ("FIELDCRYPT_DAGSTER_EXECUTOR", "FIELDCRYPT_MAX_PARTITIONS_PER_RUN"):
        if name not in env:
            os.environ.pop(name, None)
    daemon = start_daemon(root, env)
    try:
        instance = DagsterInstance.get()
        with define_out_of_process_context(str(root / "workspace.yaml"), None, instance) as context:
            time.sleep(5)  # the daemon's loops are up (its first backfill iteration has run)
            launched_at = time.time()
            launched = execute_dagster_graphql(
                context,
                LAUNCH_PARTITION_BACKFILL_MUTATION,
                variables={"backfillParams": {"assetSelection": [{"path": ASSET}], "partitionNames": partitions}},
            )
            result = launched.data["launchPartitionBackfill"]
            assert result["__typename"] == "LaunchBackfillSuccess", result
            backfill_id = result["backfillId"]
            first_seen = None
            deadline = time.monotonic() + 1800
            while time.monotonic() < deadline:
                if first_seen is None and instance.get_runs_count(RunsFilter.for_backfill(backfill_id)):
                    first_seen = time.time()
                backfill = instance.get_backfill(backfill_id)
                assert backfill is not None
                if backfill.status not in (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING):
                    break
                time.sleep(0.2)
            done_at = time.time()
            records = instance.get_run_records(RunsFilter.for_backfill(backfill_id))
            status = backfill.status.value
            dequeue_waits, launch_times = [], []
            for record in records:
                times = {
                    kind: min(
                        (e.timestamp for e in instance.all_logs(record.dagster_run.run_id, of_type=kind)), default=None
                    )
                    for kind in (DagsterEventType.RUN_STARTING, DagsterEventType.RUN_START)
                }
                dequeued, run_start = times[DagsterEventType.RUN_STARTING], times[DagsterEventType.RUN_START]
                if dequeued is not None and run_start is not None:
                    dequeue_waits.append(dequeued - record.create_timestamp.timestamp())
                    launch_times.append(run_start - dequeued)
        runs = [(r.create_timestamp.timestamp(), r.start_time, r.end_time, r.dagster_run.status.value) for r in records]
    finally:
        stop(daemon)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    created = [c for c, _, _, _ in runs]
    started = [s for _, s, _, _ in runs if s]
    ended = [e for _, _, e, _ in runs if e]
    return {
        "partitions": count,
        "instance": str(instance_file),
        "executor": executor or "(code location default)",
        "max_partitions_per_run": per_run or "(code location default)",
        "backfill_status": status,
        "runs": len(runs),
        "run_statuses": sorted({r[3] for r in runs}),
        "first_run_created_s": round(min(created) - launched_at, 1),
        "first_run_started_s": round(min(started) - launched_at, 1),
        "queue_wait_mean_s": round(statistics.mean(s - c for c, s, _, _ in runs if s), 1),
        # of which: in the queue until launched (dequeue interval, free slots), then the run worker's start-up
        "dequeue_wait_mean_s": round(statistics.mean(dequeue_waits), 1) if dequeue_waits else None,
        "launch_to_run_start_mean_s": round(statistics.mean(launch_times), 1) if launch_times else None,
        "run_duration_mean_s": round(statistics.mean(e - s for _, s, e, _ in runs if s and e), 1),
        "last_run_end_to_succeeded_s": round(done_at - max(ended), 1),
        "wall_s": round(done_at - launched_at, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=30)
    parser.add_argument("--instance", type=Path, default=ROOT / "dagster_home" / "dagster.yaml")
    parser.add_argument("--executor", help="FIELDCRYPT_DAGSTER_EXECUTOR (default: the code location's)")
    parser.add_argument("--per-run", type=int, help="FIELDCRYPT_MAX_PARTITIONS_PER_RUN (default: the code location's)")
    parser.add_argument("--label", default="")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    measured = measure(args.partitions, args.instance.resolve(), args.executor, args.per_run, args.keep)
    measured["label"] = args.label
    print(
        f"{args.label or 'backfill'}: {measured['partitions']} partitions in {measured['runs']} runs "
        f"({measured['backfill_status']}), wall {measured['wall_s']} s; first run created after "
        f"{measured['first_run_created_s']} s, started after {measured['first_run_started_s']} s; queue wait "
        f"{measured['queue_wait_mean_s']} s (launched after {measured['dequeue_wait_mean_s']} s, worker start-up "
        f"{measured['launch_to_run_start_mean_s']} s) and run {measured['run_duration_mean_s']} s on average; "
        "last run end "
        f"to Succeeded {measured['last_run_end_to_succeeded_s']} s"
    )
    print(json.dumps(measured))


if __name__ == "__main__":
    main()
