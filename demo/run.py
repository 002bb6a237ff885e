"""`make demo`: a week of sample snapshots protected through Dagster, on a local key, no cloud.

The story is the one a real pipeline produces, on the real clock:

1. fresh state under --dir (refuses a non-empty folder it did not create);
2. a local master key (0600 keystore) and the week's history landed where the catalog
   (fieldcrypt.yaml, workspace `demo`) declares it: the seven complete days before today,
   each snapshot holding rows ingested within its own day; and `orders`, a Delta table
   (`kind: delta`, written by delta-rs, partitioned by `date`) holding the two complete days
   before today;
3. the attributes the catalog lists (`users.email`, `users.phone`, `events.properties.email`,
   `orders.email`) enabled through the Dagster `enable_attribute` job: enablement is now, so
   every row ingested before it stays historical plaintext;
4. today's snapshot landed after the enablement, and today's orders appended to the Delta
   table (a new table version): rows ingested earlier today (before it) and rows ingested
   since (after it, never after now);
5. every partition protected by the `protect_snapshots` job, one Dagster run per partition on
   a persistent instance under --dir/dagster_home (what `make ui` opens): the seven complete
   days (all historical: their rows predate the enablement) and today's, which the demo's
   partitions include (its declared end is tomorrow), where the rows ingested since the
   enablement get encrypted. The Delta table's partitions are its own (`date=...`, from its
   log): the `sync_table_partitions` sensor's tick adds them to the table's dynamic
   partitions, then `protect_snapshots_orders` runs once per table partition, each a Delta
   commit;
6. a report (counts, never values), the Delta table's older versions that still hold
   plaintext until `fieldcrypt purge-history`, and what an analyst gets through the analyst
   view (`fieldcrypt.analyst.scan_dataset`, Hive datasets): masks, `<column>_is_protected`,
   no `__fc_*` columns.
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
ORDER_DAYS = 2  # complete days the Delta table holds before today's orders are appended
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
    parser.add_argument("--orders", type=int, default=2_000, help="orders per day of the Delta table")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    _fresh(root)

    today = datetime.now(UTC).date()
    first_day = today - timedelta(days=DAYS)
    history = [(first_day + timedelta(days=i)).isoformat() for i in range(DAYS)]  # the complete days
    partitions = [*history, today.isoformat()]
    settings = _configure(root, first_day, today + timedelta(days=1))  # the partitions include today's

    # Imported only now: the code location reads its settings from the environment at import.
    import dagster as dg

    from assets.scope import WorkspaceScope
    from demo.sample_data import land_orders, land_sample_lake
    from fieldcrypt import Workspace
    from fieldcrypt.keys.keystore import Keystore
    from fieldcrypt.lake.store import LakeStore
    from pipelines.definitions import defs
    from resources.settings import CATALOG

    CONFIG = CATALOG.workspace_config(WORKSPACE)
    scope = WorkspaceScope.of(CONFIG)

    keystore = Keystore.create(Path(CONFIG.key.keystore_path or ""), WORKSPACE)
    lake = LakeStore.from_uri(CONFIG.lake_uri)
    land_sample_lake(lake, first_day, DAYS, args.users, args.events)
    land_orders(lake, today - timedelta(days=ORDER_DAYS), ORDER_DAYS, args.orders)
    print(f"fieldcrypt demo in {root}")
    mode = stat.S_IMODE(keystore.path.stat().st_mode)
    print(f"  local master key {keystore.key_id} v{keystore.current} in {keystore.path} (mode {mode:04o})")
    print(
        f"  landed {DAYS} daily snapshots {history[0]} .. {history[-1]} (rows ingested within their day): "
        f"{args.users} users + {args.events} events each"
    )
    print(
        f"  landed orders, a Delta table (delta-rs, partitioned by date): {ORDER_DAYS} days "
        f"{history[-ORDER_DAYS]} .. {history[-1]}, {args.orders} orders each, in its version 0"
    )

    with dg.DagsterInstance.get() as instance:
        instance.event_log_storage.set_concurrency_slots(scope.pool, KMS_POOL_LIMIT)
        enable_job = defs.resolve_job_def(scope.job_name("enable_attribute"))
        declared = [(name, path, mask) for name, ds in CONFIG.datasets.items() for path, mask in ds.attributes.items()]
        for dataset, attribute, mask in declared:
            config = {"dataset": dataset, "attribute": attribute, "mask": mask, "acknowledge_irreversible": True}
            result = enable_job.execute_in_process(
                run_config={**QUIET, "ops": {scope.job_name("record_enablement"): {"config": config}}},
                instance=instance,
            )
            print(f"  enabled {dataset}.{attribute} (mask {mask}) in Dagster run {result.run_id[:8]}")

        workspace = Workspace(CONFIG, actor="demo")
        enabled_at = max(entry.enabled_at for entry in workspace.policy().attributes.values())
        landed = land_today(lake, enabled_at, args.users, args.events, args.orders)
        print(
            f"  landed today's snapshot {enabled_at.date()} and appended today's orders to the Delta table: half "
            f"their rows ingested before the enablement ({enabled_at:%H:%M:%S} UTC), half after it, up to "
            f"{landed:%H:%M:%S.%f} UTC"
        )
        tables = _sync_table_partitions(dg, defs, scope, instance)
        for dataset, keys in tables.items():
            print(f"  sync_table_partitions sensor tick: {dataset} partitions {', '.join(keys)} (from the Delta log)")

        runs = [(scope.job_name("protect_snapshots"), partition) for partition in partitions]
        runs += [(scope.job_name(f"protect_snapshots_{name}"), key) for name, keys in tables.items() for key in keys]
        totals: dict[str, DatasetTotals] = {}
        checks_passed = checks_total = 0
        started = time.perf_counter()
        for job_name, partition in runs:
            result = defs.resolve_job_def(job_name).execute_in_process(
                partition_key=partition, instance=instance, run_config=QUIET, raise_on_error=False
            )
            if not result.success:
                print(f"  {job_name} {partition}: run {result.run_id} FAILED; see `make ui`", file=sys.stderr)
                return 1
            for dataset, metadata in _materializations(result, scope):
                _add(totals.setdefault(dataset, DatasetTotals()), metadata)
            evaluations = result.get_asset_check_evaluations()
            checks_total += len(evaluations)
            checks_passed += sum(e.passed for e in evaluations)
        wall = time.perf_counter() - started

        protect_job = defs.resolve_job_def(scope.job_name("protect_snapshots"))
        rerun_result = protect_job.execute_in_process(partition_key=partitions[-1], instance=instance, run_config=QUIET)
        rerun = [m for _, m in _materializations(rerun_result, scope)]

        from demo.campaign import campaign_dispatch_asset

        users = defs.resolve_assets_def(scope.asset_key("protected_users"))
        campaign = campaign_dispatch_asset(scope, users.partitions_def)
        assert defs.resources is not None  # the code location's definitions carry each workspace's resource
        resources = {scope.resource_key: defs.resources[scope.resource_key]}
        sent = dg.materialize(
            [campaign], partition_key=partitions[-1], instance=instance, resources=resources, run_config=QUIET
        )
        (dispatched,) = sent.asset_materializations_for_node(scope.job_name("campaign_dispatch"))
        dispatch = {key: value.value for key, value in dispatched.metadata.items()}

    _report(totals, wall, len(runs), checks_passed, checks_total)
    print(
        f"  re-run of partition {partitions[-1]}: {sum(int(m['newly_encrypted']) for m in rerun)} cells encrypted, "
        f"{sum(bool(m['rewritten']) for m in rerun)} files rewritten"
    )
    print(
        f"  campaign_dispatch (Dagster, today's partition): {dispatch['rows_sent']:,} of "
        f"{dispatch['segment_keys']:,} segment users sent, {dispatch['cells_decrypted']:,} cells decrypted in memory "
        f"(audited), {dispatch['row_groups_skipped']} row groups skipped by statistics"
    )
    for dataset in tables:
        _table_report(workspace, dataset)
    today_key = partitions[-1]
    _analyst_view(CONFIG, today_key)
    print(f"\nNext: `make ui` opens this instance ({settings['DAGSTER_HOME']}) at http://127.0.0.1:3000")
    return 0


def land_today(lake: Any, enabled_at: datetime, users: int, events: int, orders: int = 0) -> datetime:
    """Today's snapshot so far: half its rows ingested before `enabled_at`, half since, none after now; with
    `orders`, today's orders appended to the Delta table alike."""
    from demo.sample_data import events_table, orders_table, users_table, write_orders, write_snapshot

    day = enabled_at.date()
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    landed = min(datetime.now(UTC), midnight + timedelta(days=1))
    spans = [(midnight, enabled_at), (enabled_at, landed)] if enabled_at > midnight else [(enabled_at, landed)]
    write_snapshot(lake, "users", day, users_table(day, users, ingested=spans))
    write_snapshot(lake, "events", day, events_table(day, events, ingested=spans))
    if orders:
        write_orders(lake, orders_table(day, orders, ingested=spans))
    return landed


def _sync_table_partitions(dg: Any, defs: Any, scope: Any, instance: Any) -> dict[str, list[str]]:
    """One tick of the workspace's `sync_table_partitions` sensor, its requests applied as the daemon applies
    them: each Delta table dataset -> its partitions (from the table's log), now its dynamic partitions."""
    from assets.partitions import table_partitions_name

    sensor = defs.resolve_sensor_def(scope.job_name("sync_table_partitions"))
    resources = {scope.resource_key: defs.resources[scope.resource_key]}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        tick = sensor.evaluate_tick(context)
    for request in tick.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return {
        name: instance.get_dynamic_partitions(table_partitions_name(scope.name, name))
        for name, layout in scope.datasets.items()
        if layout.source is not None
    }


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


def _materializations(result: Any, scope: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(dataset, metadata values) of each protected snapshot materialized by a run."""
    for dataset in scope.datasets:
        for materialization in result.asset_materializations_for_node(scope.job_name(f"protected_{dataset}")):
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


def _table_report(workspace: Any, dataset: str) -> None:
    """A Delta table as delta-rs reads it now (counts only), and what its older versions still hold."""
    from deltalake import DeltaTable

    from fieldcrypt.cli_output import history_line
    from fieldcrypt.lake.tables.delta import storage_options, table_uri

    layout = workspace.layout(dataset)
    table = DeltaTable(table_uri(workspace.store, layout.path), storage_options=storage_options(workspace.store))
    columns = table.schema().to_arrow().names
    protected = [name for name in columns if name.endswith("__fc_ct")]
    read = table.to_pyarrow_table(columns=protected)
    cells = sum(len(read.column(name)) - read.column(name).null_count for name in protected)
    fieldcrypt_commits = sum(1 for entry in table.history() if "fieldcrypt" in entry)
    print(
        f"\n{dataset} (Delta table, read back by delta-rs): version {table.version()}, {read.num_rows:,} rows in "
        f"{len(table.file_uris())} live files, {cells:,} protected cells; {fieldcrypt_commits} commits by fieldcrypt"
    )
    history = workspace.table_history(dataset)
    if history.holds_plaintext:
        print(f"  {history_line(dataset, layout.kind, history)}")


def _analyst_view(config: Any, today: str) -> None:
    """What an analyst reading the lake gets through the analyst view (no master key): per day, the
    distinct real values and the masked rows of each protected column (counts only), then today's
    protected rows as they read them. Unprotected (historical) rows are counted, never printed."""
    import polars as pl

    from fieldcrypt.analyst import scan_dataset

    pl.Config.set_tbl_hide_dataframe_shape(True)
    pl.Config.set_fmt_str_lengths(40)
    pl.Config.set_tbl_cols(-1)
    pl.Config.set_tbl_width_chars(160)
    for dataset in [name for name, layout in config.datasets.items() if layout.kind == "hive"]:
        frame = scan_dataset(dataset, lake=config.lake_uri)
        flags = [name for name in frame.collect_schema().names() if name.endswith("_is_protected")]
        print(f"\nAnalyst view of {dataset} (scan_dataset: {', '.join(flags)}; no __fc_* columns):")
        per_day = frame.group_by("date").agg(pl.len().alias("rows"), *[pl.col(flag).sum() for flag in flags])
        print(per_day.sort("date").collect())
        protected = frame.filter(pl.col("date") == today, pl.all_horizontal(flags)).head(3).collect()
        if not protected.select(pl.all_horizontal(flags).all()).item():  # belt and braces: never print a value
            raise SystemExit(f"{dataset}: a row chosen to show is not protected; not printing it")
        print("  today's rows ingested after enablement, as an analyst reads them (masks where *_is_protected):")
        print(protected.select(_shown_columns(config.datasets[dataset], flags)))


def _shown_columns(layout: Any, flags: list[str]) -> list[Any]:
    """The primary key, each protected attribute (a struct's field alone, not its unprotected siblings,
    e.g. `properties.email` without `properties.phone`) and the flags: nothing else an analyst reads."""
    import polars as pl

    columns: list[Any] = [pl.col(name) for name in layout.spec.primary_key]
    for path in layout.attributes:
        top, *fields = path.split(".")
        column = pl.col(top)
        for name in fields:
            column = column.struct.field(name)
        columns.append(column.alias(path))
    return [*columns, *(pl.col(flag) for flag in flags)]


if __name__ == "__main__":
    sys.exit(main())
