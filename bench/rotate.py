"""Rotation bench (`make bench`): rewrap a 1M-row protected partition (local provider,
Workspace.start_rotation + Workspace.rotate) against a plain Parquet read + write of the
same file, in the same run; KMS calls against distinct data keys; ciphertext bytes changed.

Human-readable lines first; the last line is one JSON object (see issue 4, item 8; issue 18:
rotate_vs_copy_wide, a 20-column protected file rotated against a copy of it, and load_avg_*).
Usage: python bench/rotate.py [--rows N] [--reps N] [--cells-per-key N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ATTRIBUTES, CODEC, OUT_DIR, PARTITION, ROW_GROUP_SIZE, make_lake, read_write, summary, write_users  # noqa: E402
from passthrough import bench_rotate_wide, load, report_goals  # noqa: E402

from fieldcrypt.format.wrapped_key import WrappedKey  # noqa: E402

CIPHERTEXT = [f"{a}__fc_ct" for a, _ in ATTRIBUTES]
WRAPPED = [f"{a}__fc_dek" for a, _ in ATTRIBUTES]


def distinct_wrapped_keys(path: Path) -> set[bytes]:
    table = pq.read_table(path, columns=WRAPPED)
    found: set[bytes] = set()
    for name in WRAPPED:
        for chunk in table.column(name).chunks:
            found.update(v for v in chunk.dictionary_decode().unique().to_pylist() if v is not None)
    return found


def ciphertext_bytes_changed(before: Path, after: Path) -> int:
    """Bytes that differ between the ciphertext columns of two files (validity changes count whole cells)."""
    old, new = pq.read_table(before, columns=CIPHERTEXT), pq.read_table(after, columns=CIPHERTEXT)
    changed = 0
    for name in CIPHERTEXT:
        a, b = old.column(name).combine_chunks(), new.column(name).combine_chunks()
        if a.equals(b):
            continue
        if len(a) != len(b):
            return -1
        for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True):
            if x != y:
                x, y = x or b"", y or b""
                n = min(len(x), len(y))
                diff = np.frombuffer(x[:n], np.uint8) != np.frombuffer(y[:n], np.uint8)
                changed += int(diff.sum()) + abs(len(x) - len(y))
    return changed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--cells-per-key",
        type=int,
        default=100_000,
        help="data-key cell budget while protecting, so the partition holds many distinct data keys",
    )
    parser.add_argument("--keep", action="store_true", help="keep bench/out/rotate-<pid>")
    args = parser.parse_args()
    out = OUT_DIR / f"rotate-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        load_before = load()
        source = write_users(out / "source.parquet", args.rows)
        lake = make_lake(out / "lake")
        lake.land(source)
        workspace = lake.workspace()
        workspace.key_cache().max_cells_per_key = args.cells_per_key
        protected = workspace.protect("users", PARTITION)
        protected_v1 = out / "protected-v1.parquet"
        shutil.copyfile(lake.file, protected_v1)
        keys_before = distinct_wrapped_keys(protected_v1)
        print(
            f"protected partition: {protected.rows} rows, {protected.newly_encrypted} cells, "
            f"{len(keys_before)} distinct data keys ({args.cells_per_key} cells per key), "
            f"{protected_v1.stat().st_size >> 20} MiB, row groups of {ROW_GROUP_SIZE}"
        )

        campaign = lake.workspace().start_rotation()
        print(f"rotation campaign {campaign.campaign_id}: {campaign.old.ref} -> {campaign.new.ref}")
        # Each repetition starts from this state, keys, campaign and protection ledger included: the ledger
        # refuses a file put back by hand (fieldcrypt.policy.ledger).
        snapshot = out / "lake-snapshot"
        shutil.copytree(lake.root, snapshot)
        rotate_times, baseline_times = [], []
        report = None
        calls = None
        rotated = out / "rotated.parquet"
        target = out / "baseline.parquet"
        for _ in range(args.reps):  # interleaved with the baseline, each rotation on a fresh copy
            shutil.rmtree(lake.root)
            shutil.copytree(snapshot, lake.root)
            workspace = lake.workspace()
            cache = workspace.key_cache()  # keystore load and key description: setup
            before = (cache.calls.rewrap, cache.calls.unwrap, cache.calls.generate)
            started = time.perf_counter()
            report = workspace.rotate("users", PARTITION)
            rotate_times.append(time.perf_counter() - started)
            calls = (
                cache.calls.rewrap - before[0],
                cache.calls.unwrap - before[1],
                cache.calls.generate - before[2],
            )
            assert report.rewritten
            baseline_times.append(time.perf_counter())
            read_write(protected_v1, target)
            baseline_times[-1] = time.perf_counter() - baseline_times[-1]
            os.remove(target)
        assert report is not None and calls is not None
        shutil.copyfile(lake.file, rotated)
        keys_after = distinct_wrapped_keys(rotated)
        refs_after = {WrappedKey.from_bytes(v).master_key_ref for v in keys_after}
        assert refs_after == {campaign.new.ref}, refs_after
        changed = ciphertext_bytes_changed(protected_v1, rotated)
        again = lake.workspace().rotate("users", PARTITION)
        assert not again.rewritten and again.kms_calls == 0

        strict = []
        for _ in range(min(3, args.reps)):  # the stricter baseline: fieldcrypt's own writer settings
            started = time.perf_counter()
            table = pq.read_table(protected_v1)
            plain = [c for c in table.column_names if c not in CIPHERTEXT]
            pq.write_table(
                table,
                target,
                row_group_size=ROW_GROUP_SIZE,
                compression={c: ("none" if c in CIPHERTEXT else CODEC) for c in table.column_names},
                use_dictionary=plain,
            )
            strict.append(time.perf_counter() - started)
            os.remove(target)

        rotate_s, baseline_s = min(rotate_times), min(baseline_times)
        print(f"rotate: {summary(rotate_times)}")
        print(f"baseline Parquet read + write ({CODEC}, pyarrow defaults): {summary(baseline_times)}")
        print(
            f"rotate ratio {rotate_s / baseline_s:.2f} (best of each; median-based "
            f"{statistics.median(rotate_times) / statistics.median(baseline_times):.2f}); against a read + write with "
            f"fieldcrypt's writer settings (ciphertext plain, uncompressed; best {min(strict):.3f}s): "
            f"{rotate_s / min(strict):.2f}"
        )
        print(
            f"KMS calls: {calls[0]} rewraps for {report.distinct_data_keys} distinct data keys; "
            f"{calls[1]} verification unwraps (each new wrapped key decrypts a sample of its cells); "
            f"{calls[2]} generates; report.kms_calls {report.kms_calls}"
        )
        print(f"ciphertext bytes changed: {changed}; re-run skipped the partition with 0 KMS calls")
        result = {
            "rotate_s": round(rotate_s, 3),
            "baseline_s": round(baseline_s, 3),
            "rotate_ratio": round(rotate_s / baseline_s, 3),
            "kms_calls": calls[0],
            "distinct_data_keys": report.distinct_data_keys,
            "verification_unwraps": calls[1],
            "cells_under_rewrapped_keys": report.cells_under_rewrapped_keys,
            "ciphertext_bytes_changed": changed,
        }
        assert report.distinct_data_keys == len(keys_before)
        result["load_avg_1m"] = load_before
        result.update(bench_rotate_wide(out / "wide", args.rows, min(3, args.reps)))  # issue 18
        report_goals(result)
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
