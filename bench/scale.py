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
     runs executed in process: runs launched with multi_run(FIELDCRYPT_MAX_PARTITIONS_PER_RUN) and wall time;
  D. (--driver N ...) a whole rotation by the `key_rotation_driver` sensor over N partitions, all under the
     old key: one driver tick in a subprocess of its own (wall time, run requests, peak RSS: VmHWM after
     loading the code location and after the tick; getrusage's ru_maxrss is reported too, but it keeps the
     peak of the bench process the subprocess was forked from), with a read budget
     (FIELDCRYPT_DRIVER_MAX_READS) of every partition so one tick sees them all, and above 2,000 partitions
     also with the default budget (2,000 read, the rest on later ticks); then the rotation:
     - end to end (N <= --driver-end-to-end, default 1,000): the tick evaluated in process, each of its ranged
       run requests executed in process (`execute_in_process` of the rotate job with the request's
       partition-range tags, as the tests do; no run launcher, no process start-up per run), the next tick,
       and the completion run it requests;
     - core only (larger N): `Workspace.rotate` per partition, FIELDCRYPT_PARTITION_THREADS at a time, a
       fresh Workspace (and data-key cache) per partition as a ranged run does; no Dagster run;
     then the completion scan (`Workspace.rotation_status`, what complete_key_rotation reads) and one more
     driver tick in a subprocess, which must request completion. Key-provider calls (the local provider's
     generate / unwrap / rewrap) are counted. Every partition is a copy of one file, so each holds the same
     one wrapped data key: a real lake has distinct keys per partition, as many rewraps per partition.

  E. (--ledger N ...) the protection ledger's cost: status and verify of each of N partitions in turn (what
     the protection assets' checks run per partition), with the ledger and with its check disabled in the bench
     process; the shards' size. Partitions are filled as above and recorded in the ledger as they are copied.

Human-readable lines first; the last line is one JSON object.
Usage: python bench/scale.py [--partitions 1000 10000] [--backfill 1000] [--driver 1000 10000] [--ledger 1000 10000]
       [--keep]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.sample_data import land_sample_lake, snapshot_path  # noqa: E402
from fieldcrypt import Workspace  # noqa: E402
from fieldcrypt.catalog import Catalog  # noqa: E402
from fieldcrypt.keys.keystore import Keystore  # noqa: E402
from fieldcrypt.policy.ledger import LEDGER_DIR, entry_of  # noqa: E402
from pipelines.rotation_driver import DEFAULT_DRIVER_MAX_READS  # noqa: E402

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
    """A copy of `source` as the users file of each day (S3: a server-side copy), recorded in the protection
    ledger as fieldcrypt would have recorded it (a copy holds the same cells, so the same entry)."""
    store = workspace.store
    policy = workspace.policy()
    spec, attributes = policy.datasets["users"], policy.for_dataset("users")
    entry = entry_of(store, source, spec, attributes)
    for day in days:
        target = snapshot_path("users", day.isoformat())
        if store.is_local:
            store.filesystem.create_dir(store.full_path(target.rpartition("/")[0]), recursive=True)
        store.filesystem.copy_file(store.full_path(source), store.full_path(target))
        workspace.ledger.record("users", day.isoformat(), {target: entry})


def ledger_bench(count: int, keep: bool) -> dict[str, Any]:
    """E: status and verify of every partition, one after another, with the protection ledger and without it
    (its check replaced by a no-op in this process: the same lake, files and caches, minus the ledger)."""
    root = Path(tempfile.mkdtemp(prefix=f"fc-ledger-{count}-"))
    try:
        workspace, _ = make_workspace(root, SEED_DAY)
        old, _ = seed(workspace)
        days = [(date(2001, 1, 1) + timedelta(days=i)).isoformat() for i in range(count)]
        _, t_fill = timed(lambda: fill(workspace, [date.fromisoformat(d) for d in days], old))
        shards = sorted((root / "lake" / LEDGER_DIR / "users").glob("*.json"))
        measured: dict[str, Any] = {
            "partitions": count,
            "ledger_shards": len(shards),
            "ledger_shard_bytes": shards[0].stat().st_size,
            "ledger_bytes": sum(p.stat().st_size for p in shards),
            "ledger_record_s": round(t_fill, 3),
        }
        with_ledger = workspace.ledger.check
        for ledger in ("without", "with"):
            workspace.ledger.check = with_ledger if ledger == "with" else (lambda *args, **kwargs: None)  # type: ignore[method-assign]
            _, t_status = timed(lambda: [workspace.status("users", d) for d in days])
            counts, t_verify = timed(lambda: [workspace.verify("users", d) for d in days])
            assert all(c["users.email"] > 0 for c in counts)
            measured[f"status_{ledger}_ledger_s"] = round(t_status, 3)
            measured[f"verify_{ledger}_ledger_s"] = round(t_verify, 3)
        return measured
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


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
        from pipelines.rotation_driver import driver_cursor

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


# -- D. a rotation by the driver sensor ---------------------------------------------------------------


class ProviderCalls:
    """Counts the local key provider's calls (each one a KMS request with aws-kms: GenerateDataKey, Decrypt,
    ReEncrypt), in this process. A call made inside another (the local rewrap unwraps) is not counted again."""

    NAMES = ("generate_data_key", "unwrap", "rewrap")

    def __init__(self) -> None:
        from fieldcrypt.keys.providers.local import LocalKeyProvider

        self.counts = dict.fromkeys(self.NAMES, 0)
        self._lock = threading.Lock()
        self._inside = threading.local()
        self._originals = {name: getattr(LocalKeyProvider, name) for name in self.NAMES}
        for name, original in self._originals.items():
            setattr(LocalKeyProvider, name, self._counted(name, original))

    def _counted(self, name: str, original: Any) -> Any:
        def counted(provider: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(self._inside, "depth", 0) == 0:
                with self._lock:
                    self.counts[name] += 1
            self._inside.depth = getattr(self._inside, "depth", 0) + 1
            try:
                return original(provider, *args, **kwargs)
            finally:
                self._inside.depth -= 1

        return counted

    def reset(self) -> None:
        self.counts = dict.fromkeys(self.NAMES, 0)

    def close(self) -> None:
        from fieldcrypt.keys.providers.local import LocalKeyProvider

        for name, original in self._originals.items():
            setattr(LocalKeyProvider, name, original)


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # runs executed in process log warnings only


def driver_definitions(catalog: Path) -> tuple[Any, Any]:
    """The bench workspace's definitions as the code location builds them, bound to its resource."""
    import dagster as dg

    from pipelines.definitions import workspace_definitions
    from resources import FieldcryptResource

    fieldcrypt = FieldcryptResource(catalog_path=str(catalog), workspace_name=WORKSPACE)
    defs = dg.Definitions.merge(
        workspace_definitions(fieldcrypt.config()), dg.Definitions(resources=fieldcrypt.as_resources())
    )
    return defs, fieldcrypt


def driver_tick(defs: Any, fieldcrypt: Any, instance: Any) -> tuple[list[Any], str | None]:
    """One evaluation of the driver sensor as the daemon makes it: its run requests (and skip message)."""
    import dagster as dg

    sensor = defs.resolve_sensor_def(f"{WORKSPACE}__key_rotation_driver")
    with (
        dg.build_sensor_context(instance=instance, resources=fieldcrypt.as_resources(), definitions=defs) as context,
        dg.partition_loading_context(dynamic_partitions_store=instance),
    ):
        data = sensor.evaluate_tick(context)
    for request in data.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return list(data.run_requests or []), data.skip_message


def tick_in_subprocess(catalog: Path, max_reads: int | None = None) -> dict[str, Any]:
    """One driver tick in a fresh process: its wall time, requests and peak RSS (before and after the tick).
    `max_reads`: FIELDCRYPT_DRIVER_MAX_READS for the tick (None: the default budget, 2,000 partitions)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FIELDCRYPT_DRIVER_MAX_READS", None)
    if max_reads is not None:
        env["FIELDCRYPT_DRIVER_MAX_READS"] = str(max_reads)
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--tick", str(catalog)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def tick_once(catalog: Path) -> None:
    """--tick: the subprocess side of tick_in_subprocess (prints one JSON object)."""
    import dagster as dg

    defs, fieldcrypt = driver_definitions(catalog)
    defs.resolve_sensor_def(f"{WORKSPACE}__key_rotation_driver")
    loaded = memory_mb()
    with dg.DagsterInstance.ephemeral() as instance:
        (run_requests, skip_message), tick_s = timed(lambda: driver_tick(defs, fieldcrypt, instance))
    ticked = memory_mb()
    jobs = sorted({request.job_name for request in run_requests})
    print(
        json.dumps(
            {
                "tick_s": round(tick_s, 3),
                "run_requests": len(run_requests),
                "jobs": jobs,
                "skip": skip_message,
                # VmHWM: this process's peak RSS (reset by exec, unlike ru_maxrss, which keeps the peak of the
                # process it was forked from); VmRSS: resident now.
                "rss_peak_loaded_mb": loaded["VmHWM"],
                "rss_peak_mb": ticked["VmHWM"],
                "rss_before_tick_mb": loaded["VmRSS"],
                "rss_after_tick_mb": ticked["VmRSS"],
                "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


def memory_mb() -> dict[str, float]:
    """VmHWM (peak resident set) and VmRSS (resident now) of this process, from /proc (Linux), in MB."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            found[name] = round(int(value.split()[0]) / 1024, 1)  # kB
    return found


def rotate_end_to_end(catalog: Path) -> dict[str, Any]:
    """Tick, execute its ranged requests in process, tick again, execute the completion it requests."""
    import dagster as dg
    from dagster._core.test_utils import instance_for_test

    defs, fieldcrypt = driver_definitions(catalog)
    with instance_for_test() as instance:
        started = time.perf_counter()
        requests, _ = driver_tick(defs, fieldcrypt, instance)
        tick_s = time.perf_counter() - started
        partitions_per_run = []
        kms_calls = 0
        for request in requests:
            job = defs.resolve_job_def(request.job_name)
            result = job.execute_in_process(
                run_config=QUIET,
                tags=request.tags,
                asset_selection=request.asset_selection,
                instance=instance,
                raise_on_error=False,
            )
            assert result.success, request.run_key
            done = result.asset_materializations_for_node(f"{WORKSPACE}__rotated_users_keys")
            partitions_per_run.append(len(done))
            kms_calls += sum(int(m.metadata["kms_calls"].value) for m in done)
        rotated_s = time.perf_counter() - started
        after, _ = driver_tick(defs, fieldcrypt, instance)
        (completion,) = after
        assert completion.job_name == f"{WORKSPACE}__complete_key_rotation", completion.job_name
        result = defs.resolve_job_def(completion.job_name).execute_in_process(
            run_config=QUIET, tags=completion.tags, instance=instance, raise_on_error=False
        )
        assert result.success
        wall = time.perf_counter() - started
        materialized = instance.get_materialized_partitions(dg.AssetKey([WORKSPACE, "rotated_users_keys"]))
    return {
        "mode": "end to end (ranged runs executed in process)",
        "runs_launched": len(requests) + 1,
        "rotate_runs": len(requests),
        "max_partitions_in_a_run": max(partitions_per_run, default=0),
        "partitions_materialized": len(materialized),
        "kms_calls_reported": kms_calls,
        "first_tick_in_process_s": round(tick_s, 2),
        "rotation_wall_s": round(rotated_s, 1),
        "wall_s": round(wall, 1),
    }


def rotate_core(config: Any, days: list[date]) -> dict[str, Any]:
    """`Workspace.rotate` per partition, a few at once, a fresh Workspace per partition (as a ranged run)."""
    from assets.ranged import partition_threads

    def rotate(day: date) -> tuple[int, int]:
        report = Workspace(config, actor="bench").rotate("users", day.isoformat())
        return report.rewrapped, report.kms_calls

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=partition_threads()) as pool:
        reports = list(pool.map(rotate, days))
    return {
        "mode": "core only (Workspace.rotate per partition, no Dagster run)",
        "rewrapped": sum(rewrapped for rewrapped, _ in reports),
        "kms_calls_reported": sum(calls for _, calls in reports),
        "rotation_wall_s": round(time.perf_counter() - started, 1),
    }


def driver_bench(count: int, end_to_end: bool, keep: bool) -> dict[str, Any]:
    from assets.ranged import max_partitions_per_run

    root = Path(tempfile.mkdtemp(prefix=f"fc-driver-{count}-"))
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=count - i) for i in range(count)]  # up to yesterday
    calls = ProviderCalls()
    try:
        workspace, catalog = make_workspace(root, days[0])  # the driver's blocks of N start at days[0]
        old, _ = seed(workspace)
        fill(workspace, days, old)
        os.environ.update(
            {
                "FIELDCRYPT_CATALOG": str(catalog),
                "FIELDCRYPT_WORKSPACE": WORKSPACE,
                "FIELDCRYPT_DAGSTER_EXECUTOR": "in_process",
            }
        )
        # A tick reads at most FIELDCRYPT_DRIVER_MAX_READS partitions (default 2,000; the rest on the next ticks):
        # measured with a budget of every partition (one tick sees them all) and with the default.
        first_tick = tick_in_subprocess(catalog, max_reads=count)
        first_tick_default_budget = tick_in_subprocess(catalog) if count > DEFAULT_DRIVER_MAX_READS else None
        os.environ["FIELDCRYPT_DRIVER_MAX_READS"] = str(count)  # the in-process ticks of the end-to-end run
        calls.reset()
        if end_to_end:
            rotation = rotate_end_to_end(catalog)
        else:
            rotation = rotate_core(workspace.config, days)
        provider_calls = dict(calls.counts)
        scan, scan_s = timed(lambda: workspace.rotation_status())
        assert not scan.remaining and scan.scanned == count, (len(scan.remaining), scan.scanned)
        last_tick = tick_in_subprocess(catalog, max_reads=count) if not end_to_end else None
        if last_tick is not None:
            assert last_tick["jobs"] == [f"{WORKSPACE}__complete_key_rotation"], last_tick
        size = max_partitions_per_run()
        return {
            "partitions": count,
            "max_partitions_per_run": size,
            "expected_rotate_runs": -(-count // size),
            "first_tick": first_tick,
            **({"first_tick_default_budget": first_tick_default_budget} if first_tick_default_budget else {}),
            **rotation,
            "provider_calls": provider_calls,
            "completion_scan_s": round(scan_s, 2),
            **({"completion_tick": last_tick} if last_tick else {}),
        }
    finally:
        calls.close()
        os.environ.pop("FIELDCRYPT_DRIVER_MAX_READS", None)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, nargs="*", default=[1000])
    parser.add_argument("--s3-partitions", type=int, nargs="*", default=[1000], help="the scan on moto S3 too")
    parser.add_argument("--backfill", type=int, default=0, help="partitions of a GraphQL rotation backfill (0: none)")
    parser.add_argument("--driver", type=int, nargs="*", default=[], help="partitions of a driver rotation (D)")
    parser.add_argument(
        "--driver-end-to-end", type=int, default=1000, help="largest driver rotation executed end to end (D)"
    )
    parser.add_argument(
        "--ledger", type=int, nargs="*", default=[], help="partitions of status/verify with and without the ledger (E)"
    )
    parser.add_argument("--tick", type=Path, help=argparse.SUPPRESS)  # the subprocess of one driver tick (D)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.tick:
        tick_once(args.tick)
        return
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
    results["driver"] = []
    for count in args.driver:
        measured = driver_bench(count, count <= args.driver_end_to_end, args.keep)
        results["driver"].append(measured)
        tick = measured["first_tick"]
        print(
            f"driver rotation of {count} partitions ({measured['mode']}): first tick {tick['tick_s']} s, "
            f"{tick['run_requests']} run requests (ceil({count}/{measured['max_partitions_per_run']}) = "
            f"{measured['expected_rotate_runs']}), tick process peak RSS {tick['rss_peak_loaded_mb']} MB after loading "
            f"the code location -> {tick['rss_peak_mb']} MB after the tick (resident {tick['rss_before_tick_mb']} -> "
            f"{tick['rss_after_tick_mb']} MB); rotation {measured['rotation_wall_s']} s"
            + (
                f" (default read budget: {measured['first_tick_default_budget']['tick_s']} s, "
                f"{measured['first_tick_default_budget']['run_requests']} run requests)"
                if "first_tick_default_budget" in measured
                else ""
            )
            + (f", end to end {measured['wall_s']} s, {measured['runs_launched']} runs" if "wall_s" in measured else "")
            + f"; provider calls {measured['provider_calls']} (reported kms_calls {measured['kms_calls_reported']})"
            + f"; completion scan {measured['completion_scan_s']} s"
            + (
                f"; completion tick {measured['completion_tick']['tick_s']} s, "
                f"RSS {measured['completion_tick']['rss_peak_mb']} MB"
                if "completion_tick" in measured
                else ""
            )
        )
    results["ledger"] = []
    for count in args.ledger:
        measured = ledger_bench(count, args.keep)
        results["ledger"].append(measured)
        print(
            f"protection ledger, {count} partitions (one file each, {measured['ledger_shard_bytes']} bytes a shard, "
            f"{measured['ledger_bytes']} bytes in all, recorded in {measured['ledger_record_s']} s): "
            f"status {measured['status_without_ledger_s']} s without -> {measured['status_with_ledger_s']} s with; "
            f"verify {measured['verify_without_ledger_s']} s without -> {measured['verify_with_ledger_s']} s with"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
