"""Column-chunk passthrough bench (issue 18 item 3), run by bench/encrypt.py and bench/rotate.py.

Users snapshots widened with filler columns (ints, floats, low-cardinality strings, timestamps) to 20
and 60 columns, the same two protected attributes (email, phone) and so the same protected cells at
every width. Reported, best of the repetitions, with the machine's 1-minute load average:

- protect_vs_copy_wide: Workspace.protect of the 20-column file over a pyarrow read_table + write_table
  copy of it (goal <= 0.8: protecting a wide partition costs less than copying it);
- protect_s_w6 / _w20 / _w60 (and copy_s_w*): protect and copy time at each width;
- rotate_vs_copy_wide: Workspace.rotate of the protected 20-column file over a copy of it (goal <= 0.3);
- pme_s, protect_vs_pme: Parquet Modular Encryption of the same two columns (pyarrow, an in-memory KMS
  client), timed as read_table + write_table with encryption properties, against protect of the same file;
- protect_w60_minus_w6_s: what 54 more untouched columns add to a protection (same protected cells);
- goal_<ratio>_met: each of issue 18's goals (GOALS) against its ratio, printed with the load;
- *_cpu keys: the same as medians of CPU seconds (the process's, every thread), which a shared machine's
  load inflates far less than wall time.

Run by bench/encrypt.py (widths, PME) and bench/rotate.py (rotation), or alone:
`PYTHONPATH=. python bench/passthrough.py [--rows N] [--reps N] [--only widths|pme|rotate]`.
"""

from __future__ import annotations

import base64
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
from common import CODEC, PARTITION, ROW_GROUP_SIZE, BenchLake, make_lake, read_write, summary, timed, users_batch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

WIDTHS = (6, 20, 60)
WIDE = 20
# Issue 18's goals: ratio key -> the most it may be.
GOALS = {"protect_vs_copy": 1.3, "protect_vs_copy_wide": 0.8, "rotate_vs_copy_wide": 0.3}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def report_goals(result: dict[str, Any]) -> None:
    """Print each of issue 18's goals found in `result` with the load it was measured under, and add
    `goal_<key>_met` (the ratios are best-of-repetitions, measured side by side in this run)."""
    for key, goal in GOALS.items():
        if key in result:
            met = result[key] <= goal
            result[f"goal_{key}_met"] = met
            print(
                f"goal {key} <= {goal}: {result[key]:.2f} ({'met' if met else 'not met'}; 1-minute load "
                f"{result.get('load_avg_1m', '?')} at the start, {load()} now, on {os.cpu_count()} cores)"
            )


def _filler(batch: pa.RecordBatch, width: int, start: int) -> pa.RecordBatch:
    """`batch` (the 6 users columns) with width - 6 filler columns, cheap to generate, realistic to encode."""
    rng = np.random.default_rng([7, start])
    rows = batch.num_rows
    ids = batch.column(0)
    arrays, names = list(batch.columns), list(batch.schema.names)
    for index in range(width - len(names)):
        kind = index % 4
        if kind == 0:
            column: pa.Array = pa.array(rng.integers(0, 10**9, rows), pa.int64())
        elif kind == 1:
            column = pa.array(rng.random(rows), pa.float64())
        elif kind == 2:
            column = pc.binary_join_element_wise("segment-", pc.cast(pc.bit_wise_and(ids, 1023), pa.string()), "")
        else:
            column = batch.column(5)
        arrays.append(column)
        names.append(f"filler_{index}")
    return pa.RecordBatch.from_arrays(arrays, names=names)


def write_wide(path: Path, rows: int, width: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for start in range(0, rows, ROW_GROUP_SIZE):
            batch = _filler(users_batch(start, min(ROW_GROUP_SIZE, rows - start), rows), width, start)
            if writer is None:
                writer = pq.ParquetWriter(path, batch.schema, compression=CODEC)
            writer.write_batch(batch, row_group_size=ROW_GROUP_SIZE)
    finally:
        if writer is not None:
            writer.close()
    return path


def timed_cpu(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds (this process, every thread) of fn(): on a shared machine the CPU time is
    what the load does not inflate."""
    cpu, started = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - started, time.process_time() - cpu


def _protect_once(source: Path, root: Path, cpu: list[float] | None = None) -> tuple[float, Any]:
    lake = make_lake(root)
    lake.land(source)
    workspace = lake.workspace()
    workspace.key_cache()  # keystore load and key description: setup
    reports: list[Any] = []
    seconds, cpu_seconds = timed_cpu(lambda: reports.append(workspace.protect("users", PARTITION)))
    if cpu is not None:
        cpu.append(cpu_seconds)
    return seconds, reports[0]


def bench_widths(out: Path, rows: int, reps: int) -> dict[str, Any]:
    result: dict[str, Any] = {"load_avg_1m_before_widths": load()}
    for width in WIDTHS:
        source = write_wide(out / f"wide-{width}.parquet", rows, width)
        target = out / "copy.parquet"
        protect_times, copy_times, protect_cpu, copy_cpu, path = [], [], [], [], ""
        for _ in range(reps):
            seconds, report = _protect_once(source, out / f"lake-{width}", protect_cpu)
            protect_times.append(seconds)
            path = report.rewrite_path
            wall, cpu = timed_cpu(lambda source=source, target=target: read_write(source, target))
            copy_times.append(wall)
            copy_cpu.append(cpu)
            os.remove(target)
        cpu_ratio = statistics.median(protect_cpu) / statistics.median(copy_cpu)
        print(
            f"{width} columns ({source.stat().st_size >> 20} MiB): protect [{path}] {summary(protect_times)}; "
            f"copy {summary(copy_times)}; ratio {min(protect_times) / min(copy_times):.2f}; CPU seconds (median) "
            f"protect {statistics.median(protect_cpu):.2f}, copy {statistics.median(copy_cpu):.2f}, "
            f"ratio {cpu_ratio:.2f}"
        )
        result[f"protect_s_w{width}"] = round(min(protect_times), 3)
        result[f"copy_s_w{width}"] = round(min(copy_times), 3)
        result[f"protect_cpu_s_w{width}"] = round(statistics.median(protect_cpu), 3)
        result[f"copy_cpu_s_w{width}"] = round(statistics.median(copy_cpu), 3)
        if width == WIDE:
            result["protect_vs_copy_wide"] = round(min(protect_times) / min(copy_times), 3)
            result["protect_vs_copy_wide_cpu"] = round(cpu_ratio, 3)
            result["rewrite_path_wide"] = path
        shutil.rmtree(out / f"lake-{width}", ignore_errors=True)
    narrow, wide = result[f"protect_s_w{WIDTHS[0]}"], result[f"protect_s_w{WIDTHS[-1]}"]
    copies = result[f"copy_s_w{WIDTHS[-1]}"] - result[f"copy_s_w{WIDTHS[0]}"]
    result["protect_w60_minus_w6_s"] = round(wide - narrow, 3)
    print(
        f"protect at {WIDTHS[-1]} columns costs {wide - narrow:+.2f}s over {WIDTHS[0]} columns (same protected cells; "
        f"the copy costs {copies:+.2f}s more): the untouched columns are copied as bytes"
    )
    result["load_avg_1m_after_widths"] = load()
    return result


class _InMemoryKms(pe.KmsClient):  # type: ignore[misc]
    """Master keys held in memory; data keys wrapped with AES-GCM (a KMS's job, without the network)."""

    def __init__(self, master_keys: dict[str, bytes]) -> None:
        super().__init__()
        self.master_keys = master_keys

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        nonce = os.urandom(12)
        wrapped = AESGCM(self.master_keys[master_key_identifier]).encrypt(nonce, key_bytes, None)
        return base64.b64encode(nonce + wrapped).decode()

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        raw = base64.b64decode(wrapped_key)
        return AESGCM(self.master_keys[master_key_identifier]).decrypt(raw[:12], raw[12:], None)  # type: ignore[no-any-return]


def pme_write(source: Path, target: Path, columns: list[str]) -> None:
    """read_table + write_table with Parquet Modular Encryption of `columns` (footer encrypted too)."""
    keys = {"footer": os.urandom(16), "pii": os.urandom(16)}
    factory = pe.CryptoFactory(lambda _config: _InMemoryKms(keys))
    config = pe.EncryptionConfiguration(footer_key="footer", column_keys={"pii": columns}, data_key_length_bits=128)
    properties = factory.file_encryption_properties(pe.KmsConnectionConfig(), config)
    table = pq.read_table(source)
    pq.write_table(table, target, compression=CODEC, row_group_size=ROW_GROUP_SIZE, encryption_properties=properties)


def bench_pme(source: Path, out: Path, reps: int) -> dict[str, Any]:
    """Protect vs PME of email and phone on the same file, interleaved."""
    target = out / "pme.parquet"
    protect_times, pme_times = [], []
    for _ in range(reps):
        protect_times.append(_protect_once(source, out / "lake-pme")[0])
        pme_times.append(timed(lambda: pme_write(source, target, ["email", "phone"])))
        os.remove(target)
    shutil.rmtree(out / "lake-pme", ignore_errors=True)
    print(f"PME of email, phone (read + write): {summary(pme_times)}; protect {summary(protect_times)}")
    return {
        "pme_s": round(min(pme_times), 3),
        "protect_s_vs_pme": round(min(protect_times), 3),
        "protect_vs_pme": round(min(protect_times) / min(pme_times), 3),
        "load_avg_1m_after_pme": load(),
    }


def bench_rotate_wide(out: Path, rows: int, reps: int) -> dict[str, Any]:
    """Rotate the protected 20-column file (each repetition on a freshly protected lake) vs a copy of it."""
    source = write_wide(out / f"wide-{WIDE}.parquet", rows, WIDE)
    target = out / "copy.parquet"
    rotate_times, copy_times, rotate_cpu, copy_cpu, path = [], [], [], [], ""
    root = out / "lake-rotate"
    for _ in range(reps):
        _protect_once(source, root)
        lake = BenchLake(root, root / "keys" / "keystore.json", root / "lake")
        lake.workspace().start_rotation()
        workspace = lake.workspace()
        workspace.key_cache()  # keystore load and key description: setup
        reports: list[Any] = []
        wall, cpu = timed_cpu(
            lambda workspace=workspace, reports=reports: reports.append(workspace.rotate("users", PARTITION))
        )
        rotate_times.append(wall)
        rotate_cpu.append(cpu)
        assert reports[0].rewritten
        path = reports[0].rewrite_path
        wall, cpu = timed_cpu(lambda lake=lake: read_write(lake.file, target))
        copy_times.append(wall)
        copy_cpu.append(cpu)
        os.remove(target)
    shutil.rmtree(out / "lake-rotate", ignore_errors=True)
    cpu_ratio = statistics.median(rotate_cpu) / statistics.median(copy_cpu)
    print(
        f"rotate {WIDE} columns [{path}]: {summary(rotate_times)}; copy of the protected file {summary(copy_times)}; "
        f"ratio {min(rotate_times) / min(copy_times):.2f}; CPU seconds (median) rotate "
        f"{statistics.median(rotate_cpu):.2f}, copy {statistics.median(copy_cpu):.2f}, ratio {cpu_ratio:.2f}"
    )
    return {
        "rotate_s_wide": round(min(rotate_times), 3),
        "copy_s_wide_protected": round(min(copy_times), 3),
        "rotate_vs_copy_wide": round(min(rotate_times) / min(copy_times), 3),
        "rotate_vs_copy_wide_cpu": round(cpu_ratio, 3),
        "rewrite_path_rotate_wide": path,
        "load_avg_1m_after_rotate_wide": load(),
    }


def main() -> None:
    """Run alone: `python bench/passthrough.py [--rows N] [--reps N] [--only widths|pme|rotate] [--keep]`; the last
    line is one JSON object with the keys above and the load before and after."""
    import argparse
    import json

    from common import OUT_DIR, write_users

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", choices=["widths", "pme", "rotate"])
    parser.add_argument("--keep", action="store_true", help="keep bench/out/passthrough-<pid>")
    args = parser.parse_args()
    out = OUT_DIR / f"passthrough-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        result: dict[str, Any] = {"load_avg_1m": load(), "load_avg_5m": round(os.getloadavg()[1], 2)}
        if args.only in (None, "widths"):
            result.update(bench_widths(out, args.rows, args.reps))
        if args.only in (None, "pme"):
            result.update(bench_pme(write_users(out / "source.parquet", args.rows), out, args.reps))
        if args.only in (None, "rotate"):
            result.update(bench_rotate_wide(out, args.rows, args.reps))
        result["load_avg_1m_end"] = load()
        report_goals(result)
        print(json.dumps(result), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":  # PYTHONPATH=. (as `make bench` sets it)
    main()
