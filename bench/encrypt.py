"""Encryption bench (`make bench`): kernel vs a plain AES-GCM loop, end-to-end protect vs
Parquet read + write, peak RSS at 1M and 4M rows, ciphertext overhead.

Human-readable lines first; the last line is one JSON object (see issue 2, item 10, and
issue 9 for the native kernel keys: native_kernel_*, native_decrypt_*, *threads_2_vs_1,
protect_vs_copy, verify_cells_per_s, reveal_cells_per_s, cell_kernel; issue 18, bench/passthrough.py:
protect_s_w6/_w20/_w60 and copy_s_w*, protect_vs_copy_wide, pme_s, protect_vs_pme, load_avg_*).
Usage: python bench/encrypt.py [--rows N] [--reps N] [--protect-reps N] [--only PART] [--keep]
(PART: kernel, protect, rss or wide).

The kernel is fieldcrypt.engine.encrypt.encrypt_values on the email column of a 1M-row users
snapshot (Arrow strings, with the primary key as row keys), as protect calls it; the
reference loop is AESGCM.encrypt(os.urandom(12), value, None) over the same values,
pre-encoded. Protect is Workspace.protect of the whole file with email and phone
enabled before every row's ingestion time. Best of the repetitions is reported, with
medians printed beside it.

The kernel part also times fieldcrypt.format.kernel directly on the same cells: the native kernel
on 1 and 2 threads (FIELDCRYPT_THREADS) for encryption and decryption, the pure-Python
reference kernel, and a plain AESGCM.decrypt loop, all in one interleaved loop.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ATTRIBUTES,
    CODEC,
    OUT_DIR,
    PARTITION,
    ROW_GROUP_SIZE,
    make_lake,
    peak_rss_mb,
    read_write,
    summary,
    timed,
    write_users,
)
from passthrough import bench_pme, bench_widths, load, report_goals  # noqa: E402

from fieldcrypt.engine.encrypt import encrypt_values  # noqa: E402
from fieldcrypt.format import kernel  # noqa: E402
from fieldcrypt.format.cell import DataKey, ad_prefix  # noqa: E402
from fieldcrypt.format.columns import row_key_text  # noqa: E402

DICTIONARY_ENCODINGS = {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}


def plain_loop(values: list[bytes]) -> list[bytes]:
    """The reference: AESGCM.encrypt with a fresh os.urandom nonce per cell, no associated data."""
    encrypt = AESGCM(AESGCM.generate_key(256)).encrypt
    urandom = os.urandom
    return [encrypt(urandom(12), value, None) for value in values]


def plain_decrypt_loop(cells: list[bytes], aead: AESGCM) -> list[bytes]:
    """The reference for decryption: AESGCM.decrypt of `nonce || ciphertext || tag` cells, no associated data."""
    decrypt = aead.decrypt
    return [decrypt(cell[:12], cell[12:], None) for cell in cells]


def with_env(settings: dict[str, str], fn: Callable[[], object]) -> Callable[[], object]:
    """fn run with environment settings (FIELDCRYPT_KERNEL, FIELDCRYPT_THREADS), restored after."""

    def run() -> object:
        saved = {name: os.environ.get(name) for name in settings}
        os.environ.update(settings)
        try:
            return fn()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    return run


def bench_kernel(source: Path, lake_root: Path, reps: int) -> dict[str, float | str]:
    """encrypt_values vs the plain loop, same values, interleaved repetitions; then the kernels
    themselves (fieldcrypt.format.kernel) on 1 and 2 threads, both directions, against the plain loops."""
    table = pq.read_table(source, columns=["user_id", "email"])
    batch = table.combine_chunks().to_batches()[0]
    valid = pc.is_valid(batch.column(1))
    values = pc.filter(batch.column(1), valid)
    row_keys = pc.filter(row_key_text(batch, "user_id", "bench"), valid)
    encoded = values.cast(pa.binary()).to_pylist()
    cache = make_lake(lake_root).workspace().key_cache()
    encrypt_values(values.slice(0, 1000), row_keys.slice(0, 1000), cache, "users", "email")  # warm: key generated
    key = DataKey(os.urandom(32))
    prefix = ad_prefix("users", "email", has_row_key=True)
    cells_native = kernel.encrypt_column(key, prefix, values, row_keys) if kernel.NATIVE else None
    aead = AESGCM(AESGCM.generate_key(256))
    plain_cells = [nonce + aead.encrypt(nonce, value, None) for value in encoded for nonce in (os.urandom(12),)]
    native = {
        "native_encrypt_1": lambda: kernel.encrypt_column(key, prefix, values, row_keys),
        "native_decrypt_1": lambda: kernel.decrypt_column(key, prefix, cells_native, row_keys, str),
    }
    extra: dict[str, Callable[[], object]] = {
        "python_encrypt": lambda: kernel.encrypt_column(key, prefix, values, row_keys)
    }
    settings = {"python_encrypt": {"FIELDCRYPT_KERNEL": "python"}}
    if kernel.NATIVE is not None:
        for name, fn in native.items():
            extra[name] = fn
            settings[name] = {"FIELDCRYPT_KERNEL": "native", "FIELDCRYPT_THREADS": "1"}
            extra[name.replace("_1", "_2")] = fn
            settings[name.replace("_1", "_2")] = {"FIELDCRYPT_KERNEL": "native", "FIELDCRYPT_THREADS": "2"}
    extra_times: dict[str, list[float]] = {name: [] for name in extra}
    kernel_times, loop_times, decrypt_loop_times = [], [], []
    for _ in range(reps):  # interleaved so all see the same machine state
        kernel_times.append(timed(lambda: encrypt_values(values, row_keys, cache, "users", "email")))
        loop_times.append(timed(lambda: plain_loop(encoded)))
        decrypt_loop_times.append(timed(lambda: plain_decrypt_loop(plain_cells, aead)))
        for name, fn in extra.items():
            extra_times[name].append(timed(with_env(settings[name], fn)))
    cells = len(values)
    kernel_rate = cells / min(kernel_times)
    loop = cells / min(loop_times)
    decrypt_loop = cells / min(decrypt_loop_times)
    print(
        f"encrypt_values ({kernel.describe()}): {cells} cells, {summary(kernel_times)} -> "
        f"{kernel_rate:,.0f} cells/s ({1e9 / kernel_rate:.0f} ns/cell)"
    )
    print(f"plain AESGCM loop: {summary(loop_times)} -> {loop:,.0f} cells/s ({1e9 / loop:.0f} ns/cell)")
    print(f"plain AESGCM decrypt loop: {summary(decrypt_loop_times)} -> {decrypt_loop:,.0f} cells/s")
    print(f"kernel ratio (median-based: {statistics.median(loop_times) / statistics.median(kernel_times):.2f})")
    result: dict[str, float | str] = {
        "kernel_cells_per_s": round(kernel_rate),
        "aesgcm_loop_cells_per_s": round(loop),
        "kernel_ratio": round(kernel_rate / loop, 3),
        "cell_kernel": kernel.active_kernel(),
        "aesgcm_decrypt_loop_cells_per_s": round(decrypt_loop),
    }
    rate = {name: cells / min(times) for name, times in extra_times.items()}
    for name, times in extra_times.items():
        print(f"  {name.replace('_', ' ')} thread(s): {summary(times)} -> {rate[name]:,.0f} cells/s")
    result["python_kernel_cells_per_s"] = round(rate["python_encrypt"])
    if kernel.NATIVE is not None:
        result.update(
            {
                "native_kernel_cells_per_s": round(rate["native_encrypt_1"]),
                "native_kernel_ratio": round(rate["native_encrypt_1"] / loop, 3),
                "native_kernel_2_threads_cells_per_s": round(rate["native_encrypt_2"]),
                "threads_2_vs_1": round(rate["native_encrypt_2"] / rate["native_encrypt_1"], 3),
                "native_decrypt_cells_per_s": round(rate["native_decrypt_1"]),
                "native_decrypt_ratio": round(rate["native_decrypt_1"] / decrypt_loop, 3),
                "native_decrypt_2_threads_cells_per_s": round(rate["native_decrypt_2"]),
                "decrypt_threads_2_vs_1": round(rate["native_decrypt_2"] / rate["native_decrypt_1"], 3),
            }
        )
        print(
            f"native kernel vs plain loop: encrypt {result['native_kernel_ratio']:.2f}x, decrypt "
            f"{result['native_decrypt_ratio']:.2f}x (1 thread); 2 threads vs 1: encrypt "
            f"{result['threads_2_vs_1']:.2f}x, decrypt {result['decrypt_threads_2_vs_1']:.2f}x"
        )
    return result


def bench_protect(source: Path, lake_root: Path, reps: int) -> tuple[dict[str, float], Path]:
    """End-to-end Workspace.protect of the whole file (scan, encrypt, mask, write, verify, replace)
    against a plain Parquet read + write of it plus the plain loop over the same cells.

    Repetitions interleave protect and baseline, so both see the same machine state."""
    lake = make_lake(lake_root)
    plain = pq.read_table(source, columns=[a for a, _ in ATTRIBUTES])
    cells = [v for a, _ in ATTRIBUTES for v in plain.column(a).drop_null().cast(pa.binary()).to_pylist()]
    del plain
    target = lake_root / "baseline.parquet"
    kept = lake_root / "protected.parquet"
    protect_times, protect_cpu, rw_times, loop_times, baseline_cpu, copy_cpu = [], [], [], [], [], []
    report = None
    for rep in range(reps):
        if rep:  # a fresh lake: the protection ledger refuses a protected file replaced by its plaintext
            lake = make_lake(lake_root)
        lake.land(source)
        workspace = lake.workspace()
        workspace.key_cache()  # keystore load and key description: setup, not protection
        cpu = time.process_time()
        started = time.perf_counter()
        report = workspace.protect("users", PARTITION)
        protect_times.append(time.perf_counter() - started)
        protect_cpu.append(time.process_time() - cpu)
        assert report.rewritten
        cpu = time.process_time()
        rw_times.append(timed(lambda: read_write(source, target)))
        copy_cpu.append(time.process_time() - cpu)
        loop_times.append(timed(lambda: plain_loop(cells)))
        baseline_cpu.append(time.process_time() - cpu)
        os.remove(target)
    assert report is not None
    shutil.copyfile(lake.file, kept)
    print(
        f"protect {report.rows} rows ({', '.join(a for a, _ in ATTRIBUTES)}): {summary(protect_times)}; "
        f"CPU {min(protect_cpu):.2f}s; {report.newly_encrypted} cells, {report.kms_calls} KMS calls"
    )
    print(f"baseline Parquet read + write ({CODEC}): {summary(rw_times)}")
    print(f"baseline plain loop over the same {len(cells)} cells: {summary(loop_times)}; CPU {min(baseline_cpu):.2f}s")
    baseline = min(rw_times) + min(loop_times)
    protect = min(protect_times)
    per_rep = [p / (r + q) for p, r, q in zip(protect_times, rw_times, loop_times, strict=True)]
    print(
        f"protect ratio {protect / baseline:.2f} (wall, best of each); median of per-repetition ratios "
        f"{statistics.median(per_rep):.2f}; CPU-time ratio {min(protect_cpu) / min(baseline_cpu):.2f} "
        f"(protect runs reading, masking and Parquet encoding on helper threads, beside the encryption loop)"
    )
    copy = min(rw_times)
    print(
        f"protect vs Parquet read + write alone: {protect / copy:.2f} (median of per-repetition ratios "
        f"{statistics.median(p / r for p, r in zip(protect_times, rw_times, strict=True)):.2f}); CPU seconds "
        f"(median) protect {statistics.median(protect_cpu):.2f}, copy {statistics.median(copy_cpu):.2f}"
    )
    return {
        "protect_s": round(protect, 3),
        "baseline_s": round(baseline, 3),
        "protect_ratio": round(protect / baseline, 3),
        "copy_s": round(copy, 3),
        "protect_vs_copy": round(protect / copy, 3),
        "protect_cpu_s": round(statistics.median(protect_cpu), 3),
        "copy_cpu_s": round(statistics.median(copy_cpu), 3),
        "protect_vs_copy_cpu": round(statistics.median(protect_cpu) / statistics.median(copy_cpu), 3),
    }, kept


def bench_read(lake_root: Path, reps: int) -> dict[str, float]:
    """Workspace.verify (decrypt every cell, check its mask) and Workspace.reveal of the file
    bench_protect left protected in its lake."""
    from common import BenchLake

    workspace = BenchLake(lake_root, lake_root / "keys" / "keystore.json", lake_root / "lake").workspace()
    workspace.key_cache()
    cells = sum(workspace.verify("users", PARTITION).values())
    names = [a for a, _ in ATTRIBUTES]
    verify_times = [timed(lambda: workspace.verify("users", PARTITION)) for _ in range(reps)]
    reveal_times = [
        timed(lambda: sum(b.num_rows for b in workspace.reveal("users", PARTITION, names))) for _ in range(reps)
    ]
    print(f"verify {cells} cells: {summary(verify_times)} -> {cells / min(verify_times):,.0f} cells/s")
    print(f"reveal {cells} cells: {summary(reveal_times)} -> {cells / min(reveal_times):,.0f} cells/s")
    return {
        "verify_cells_per_s": round(cells / min(verify_times)),
        "reveal_cells_per_s": round(cells / min(reveal_times)),
    }


def file_facts(source: Path, protected: Path) -> dict[str, object]:
    plain = pq.read_table(source, columns=[a for a, _ in ATTRIBUTES])
    written = pq.read_table(protected, columns=[f"{a}__fc_ct" for a, _ in ATTRIBUTES])
    cells = plain_bytes = cipher_bytes = 0
    for attribute, _ in ATTRIBUTES:
        ct = written.column(f"{attribute}__fc_ct")
        cells += len(ct) - ct.null_count
        cipher_bytes += pc.sum(pc.binary_length(ct)).as_py()
        plain_bytes += pc.sum(pc.binary_length(pc.filter(plain.column(attribute), pc.is_valid(ct)))).as_py()
    metadata = pq.ParquetFile(protected).metadata
    dictionary = True
    layout: dict[str, tuple[str, str]] = {}
    for g in range(metadata.num_row_groups):
        for c in range(metadata.num_columns):
            column = metadata.row_group(g).column(c)
            if g == 0:
                layout[column.path_in_schema] = (column.compression, "/".join(sorted(column.encodings)))
            if column.path_in_schema.endswith("__fc_dek"):
                dictionary &= bool(DICTIONARY_ENCODINGS & set(column.encodings)) and column.has_dictionary_page
    for path, (codec, encodings) in layout.items():
        print(f"  column {path}: {codec}, {encodings}")
    overhead = (cipher_bytes - plain_bytes) / cells
    print(f"ciphertext overhead: {overhead:.2f} bytes/cell over {cells} cells")
    return {"overhead_bytes_per_cell": round(overhead, 2), "wrapped_key_column_dictionary_encoded": dictionary}


def rss_child(lake_root: Path) -> None:
    """Run in its own process: protect the lake's partition and print peak RSS (MiB)."""
    from common import BenchLake

    lake = BenchLake(lake_root, lake_root / "keys" / "keystore.json", lake_root / "lake")
    before = peak_rss_mb()
    report = lake.workspace().protect("users", PARTITION)
    assert report.rewritten
    child = {"rss_mb": peak_rss_mb(), "rss_after_import_mb": before, "hwm_mb": vm_hwm_mb(), "rows": report.rows}
    print(json.dumps(child))


def generate_child(path: Path, rows: int) -> None:
    """Run in its own process, so that the bench process stays small (see bench_rss)."""
    write_users(path, rows)


def vm_hwm_mb() -> float:
    """This process's own peak RSS (VmHWM), a cross-check of ru_maxrss."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_rss(out: Path, source: Path, rows_small: int) -> dict[str, float]:
    """Peak RSS of a protect run of 1M and 4M rows, each in a fresh process.

    ru_maxrss of a child starts at its parent's RSS when it was spawned (Linux keeps the
    high-water mark across fork and exec), so this runs before this process loads any
    data, and the files are generated by separate processes too.
    """
    result = {}
    for label, rows in (("1m", rows_small), ("4m", 4 * rows_small)):
        lake = make_lake(out / f"rss-{label}")
        if rows == rows_small:
            lake.land(source)
        else:
            subprocess.run([sys.executable, __file__, "--generate", str(lake.file), str(rows)], check=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(lake.root)], capture_output=True, text=True, check=True
        )
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"peak RSS protecting {child['rows']} rows (row groups of {ROW_GROUP_SIZE}): {child['rss_mb']:.0f} MiB "
            f"(VmHWM {child['hwm_mb']:.0f} MiB; {child['rss_after_import_mb']:.0f} MiB after imports)"
        )
        result[f"rss_{label}_mb"] = round(child["rss_mb"], 1)
        shutil.rmtree(lake.root)
    print(f"RSS ratio 4M/1M: {result['rss_4m_mb'] / result['rss_1m_mb']:.2f} (this process: {peak_rss_mb():.0f} MiB)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=5, help="kernel repetitions")
    parser.add_argument("--protect-reps", type=int, default=4, help="protect and baseline repetitions")
    parser.add_argument("--keep", action="store_true", help="keep bench/out/encrypt-<pid>")
    parser.add_argument("--only", choices=["kernel", "protect", "rss", "wide"], help="run one part (for profiling)")
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--generate", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    if args.generate:
        generate_child(Path(args.generate[0]), int(args.generate[1]))
        return
    out = OUT_DIR / f"encrypt-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        result: dict[str, object] = {"load_avg_1m": load(), "load_avg_5m": round(os.getloadavg()[1], 2)}
        source = out / "source.parquet"
        subprocess.run([sys.executable, __file__, "--generate", str(source), str(args.rows)], check=True)
        size = source.stat().st_size >> 20
        print(f"users snapshot: {args.rows} rows, row groups of {ROW_GROUP_SIZE}, {CODEC}, {size} MiB")
        rss = bench_rss(out, source, args.rows) if args.only in (None, "rss") else {}
        if args.only in (None, "kernel"):
            result.update(bench_kernel(source, out / "kernel", args.reps))
        if args.only in (None, "protect"):
            protect, protected = bench_protect(source, out / "protect", args.protect_reps)
            result.update(protect)
            result.update(file_facts(source, protected))
            result.update(bench_read(out / "protect", args.protect_reps))
        if args.only in (None, "wide"):  # issue 18: cost by width, the wide ratio, PME of the same columns
            result.update(bench_widths(out / "wide", args.rows, args.protect_reps))
            result.update(bench_pme(source, out / "wide", args.protect_reps))
        result.update(rss)
        result["load_avg_1m_end"] = load()
        report_goals(result)
        print(f"bench/encrypt.py took {time.perf_counter() - started:.0f}s")
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
