"""`make demo`: a week of sample snapshots protected through Dagster, on a local key, no cloud.

1. fresh state under --dir (refuses a non-empty folder it did not create);
2. a local master key (0600 keystore) and a week of users and events snapshots whose
   ingestion times are shifted so that "now" falls in the middle of the week, where the
   catalog (fieldcrypt.yaml, workspace `demo`) declares them;
3. the attributes the catalog lists (`users.email`, `users.phone`, `events.properties.email`)
   enabled through the `enable_attribute` job: enablement is now, so the week's older rows
   stay historical plaintext and the newer ones get encrypted;
4. every partition protected by the `protect_snapshots` job, one Dagster run per partition, on
   a persistent instance under --dir/dagster_home (what `make ui` opens afterwards);
5. a report (counts, never values) and what an analyst sees: masked columns via polars.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

DAYS = 7
WORKSPACE = "demo"
MARKER = ".fieldcrypt-demo"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
KMS_POOL_LIMIT = 4
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # the runs' events stay in the instance


@dataclass
class DatasetTotals:
    rows: int = 0
    kms_calls: int = 0
    seconds: float = 0.0
    rewritten: int = 0
    cells: Counter[str] = field(default_factory=Counter)  # "newly_encrypted.email" -> cells, over all partitions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=Path("demo-workspace"))
    parser.add_argument("--users", type=int, default=5_000, help="users per daily snapshot")
    parser.add_argument("--events", type=int, default=20_000, help="events per daily snapshot")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    _fresh(root)

    today = datetime.now(UTC).date()
    first_day = today - timedelta(days=DAYS)
    partitions = [(first_day + timedelta(days=i)).isoformat() for i in range(DAYS)]
    settings = _configure(root, first_day, today)

    # Imported only now: the code location reads its settings from the environment at import.
    import dagster as dg

    from demo.sample_data import land_sample_lake
    from fieldcrypt.keystore import Keystore
    from fieldcrypt.store import LakeStore
    from pipelines.definitions import defs
    from resources.settings import WORKSPACE as CONFIG

    keystore = Keystore.create(Path(CONFIG.key.keystore_path or ""), WORKSPACE)
    # Snapshot day D holds rows ingested over [D, D+1) + shift: the week's midpoint lands on now.
    week_start = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC)
    shift = datetime.now(UTC) - (week_start + timedelta(days=DAYS / 2))
    lake = LakeStore.from_uri(CONFIG.lake_uri)
    land_sample_lake(lake, first_day, DAYS, args.users, args.events, ingested_shift=shift)
    print(f"fieldcrypt demo in {root}")
    mode = stat.S_IMODE(keystore.path.stat().st_mode)
    print(f"  local master key {keystore.key_id} v{keystore.current} in {keystore.path} (mode {mode:04o})")
    print(
        f"  landed {DAYS} daily snapshots {partitions[0]} .. {partitions[-1]}: "
        f"{args.users} users + {args.events} events each, ingestion times spanning now"
    )

    with dg.DagsterInstance.get() as instance:
        instance.event_log_storage.set_concurrency_slots("kms", KMS_POOL_LIMIT)
        enable_job = defs.resolve_job_def("enable_attribute")
        declared = [(name, path, mask) for name, ds in CONFIG.datasets.items() for path, mask in ds.attributes.items()]
        for dataset, attribute, mask in declared:
            config = {"dataset": dataset, "attribute": attribute, "mask": mask, "acknowledge_irreversible": True}
            result = enable_job.execute_in_process(
                run_config={**QUIET, "ops": {"record_enablement": {"config": config}}}, instance=instance
            )
            print(f"  enabled {dataset}.{attribute} (mask {mask}) in Dagster run {result.run_id[:8]}")

        protect_job = defs.resolve_job_def("protect_snapshots")
        totals: dict[str, DatasetTotals] = {}
        checks_passed = checks_total = 0
        started = time.perf_counter()
        for partition in partitions:
            result = protect_job.execute_in_process(
                partition_key=partition, instance=instance, run_config=QUIET, raise_on_error=False
            )
            if not result.success:
                print(f"  protect {partition}: run {result.run_id} FAILED; see `make ui`", file=sys.stderr)
                return 1
            for dataset, metadata in _materializations(result, CONFIG.datasets):
                _add(totals.setdefault(dataset, DatasetTotals()), metadata)
            evaluations = result.get_asset_check_evaluations()
            checks_total += len(evaluations)
            checks_passed += sum(e.passed for e in evaluations)
        wall = time.perf_counter() - started

        rerun = protect_job.execute_in_process(partition_key=partitions[-1], instance=instance, run_config=QUIET)
        rerun = [m for _, m in _materializations(rerun, CONFIG.datasets)]

    _report(totals, wall, len(partitions), checks_passed, checks_total)
    print(
        f"  re-run of partition {partitions[-1]}: {sum(int(m['newly_encrypted']) for m in rerun)} cells encrypted, "
        f"{sum(bool(m['rewritten']) for m in rerun)} files rewritten"
    )
    _analyst_view(Path(CONFIG.lake_uri), CONFIG)
    print(f"\nNext: `make ui` opens this instance ({settings['DAGSTER_HOME']}) at http://127.0.0.1:3000")
    return 0


def _fresh(root: Path) -> None:
    if root.exists():
        if any(root.iterdir()) and not (root / MARKER).exists():
            raise SystemExit(f"{root} exists and was not made by the demo; refusing to delete it")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).write_text("made by `make demo`; deleted by the next one\n")


def _configure(root: Path, first_day: date, end: date) -> dict[str, str]:
    """Point the code location at the demo, here and for `make ui` (demo-workspace/dagster.env).

    The catalog declares the demo's lake and keystore under demo-workspace/; another --dir
    overrides them, as the environment overrides any catalog setting.
    """
    settings = {
        "FIELDCRYPT_CATALOG": str(PROJECT_ROOT / "fieldcrypt.yaml"),
        "FIELDCRYPT_WORKSPACE": WORKSPACE,
        "FIELDCRYPT_PARTITIONS_START": first_day.isoformat(),
        "FIELDCRYPT_PARTITIONS_END": end.isoformat(),
        "DAGSTER_HOME": str(root / "dagster_home"),
    }
    if root != (PROJECT_ROOT / "demo-workspace").resolve():
        settings |= {"FIELDCRYPT_LAKE": str(root / "lake"), "FIELDCRYPT_KEYSTORE": str(root / "keys" / "keystore.json")}
    os.environ.update(settings)
    home = Path(settings["DAGSTER_HOME"])
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    (root / "dagster.env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return settings


def _materializations(result: Any, datasets: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(dataset, metadata values) of each protected snapshot materialized by a run."""
    for dataset in datasets:
        for materialization in result.asset_materializations_for_node(f"protected_{dataset}"):
            yield dataset, {key: value.value for key, value in materialization.metadata.items()}


def _add(totals: DatasetTotals, metadata: dict[str, Any]) -> None:
    totals.rows += int(metadata["rows"])
    totals.kms_calls += int(metadata["kms_calls"])
    totals.seconds += float(metadata["duration_s"])
    totals.rewritten += bool(metadata["rewritten"])
    for key, value in metadata.items():
        if key.startswith(("newly_encrypted.", "historical_plaintext.")):
            totals.cells[key] += int(value)


def _report(totals: dict[str, DatasetTotals], wall: float, runs: int, checks_passed: int, checks_total: int) -> None:
    rows = sum(t.rows for t in totals.values())
    print(f"\nProtection: {runs} Dagster runs (one per partition), {wall:.1f} s wall, {rows / wall:,.0f} rows/s")
    for dataset, t in totals.items():
        print(
            f"  {dataset:<7} {t.rows:>8,} rows in {t.rewritten} rewritten files, {t.kms_calls} KMS calls, "
            f"{t.rows / t.seconds if t.seconds else 0:,.0f} rows/s inside the core"
        )
        for path in sorted(k.partition(".")[2] for k in t.cells if k.startswith("newly_encrypted.")):
            encrypted, historical = t.cells[f"newly_encrypted.{path}"], t.cells[f"historical_plaintext.{path}"]
            print(
                f"    {dataset}.{path:<18} newly encrypted {encrypted:>7,}"
                f"   historical plaintext (ingested before enablement) {historical:>7,}"
            )
    print(f"  asset checks: {checks_passed}/{checks_total} passed")


def _analyst_view(lake: Path, config: Any) -> None:
    """What an analyst reading the lake sees. Only rows ingested after enablement are shown:
    older rows are historical plaintext by design, so they are counted, never printed."""
    import polars as pl

    from fieldcrypt import Workspace

    # The policy is authenticated under the master key: read it through a workspace.
    policy = Workspace(config, actor="demo").policy()
    pl.Config.set_tbl_hide_dataframe_shape(True)
    pl.Config.set_fmt_str_lengths(40)
    shown = {
        "users": [pl.col("user_id"), pl.col("email"), pl.col("phone"), pl.col("country")],
        "events": [pl.col("event_id"), pl.col("event_type"), pl.col("properties").struct.field("email", "campaign")],
    }
    for dataset, columns in shown.items():
        attributes = policy.for_dataset(dataset)
        since = max(a.enabled_at for a in attributes)
        # Files with nothing to encrypt keep their original schema; read the columns every file has.
        frame = pl.scan_parquet(
            f"{lake}/{dataset}/**/*.parquet", hive_partitioning=True, missing_columns="insert", extra_columns="ignore"
        )
        protected = frame.filter(pl.col("ingested_at") >= since).select(pl.col("date"), *columns).head(4).collect()
        for attribute in attributes:
            column = protected.get_column(attribute.path.split(".")[-1])
            if not column.drop_nulls().str.starts_with("****").all():  # belt and braces: never print a value
                raise SystemExit(f"{attribute.name}: a row after enablement is not masked; not printing it")
        print(f"\nAnalyst view of {dataset} (polars, rows ingested after enablement):")
        print(protected)
        for attribute in attributes:
            top = attribute.path.split(".")
            value = pl.col(top[0]).struct.field(top[1]) if len(top) == 2 else pl.col(top[0])
            before = frame.filter(pl.col("ingested_at") < attribute.enabled_at, value.is_not_null())
            count = before.select(pl.len()).collect().item()
            print(f"  {attribute.name}: {count:,} rows ingested before enablement stay plaintext (not shown)")


if __name__ == "__main__":
    sys.exit(main())
