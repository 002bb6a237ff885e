"""Column-chunk splice bench (issue 18, item 2): a pyarrow read_table + write_table copy of a users snapshot
against re-encoding only two of its columns and splicing them in, on the 6-column table and a 20-column one.

Per table, each repetition times, interleaved so both see the same machine state:
  copy    pq.read_table of the whole file + pq.write_table (same codec and row groups), as bench/common.read_write;
  splice  read the 2 attribute columns (email, phone), write them and 2 new binary columns (ciphertext-sized
          random bytes made beforehand: encryption is not timed here) into a buffer with the source's row-group
          boundaries, splice_columns to a file;
  proven  splice, then prove every copied range by SHA-256 and decode the 4 changed columns from the output
          (what verification will cost once the engine uses the splice).
Best of the repetitions is reported, medians beside it. The last line is one JSON object.
Usage: python bench/splice.py [--rows N] [--reps N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CODEC, ROW_GROUP_SIZE, read_write, summary, users_batch  # noqa: E402

from fieldcrypt.format.splice import footer_metadata, prove_copied, splice_columns, spliced_arrow_schema  # noqa: E402

ATTRIBUTES = ["email", "phone"]
WIDE_EXTRA = 14  # users' 6 columns + 14 = 20


def extra_columns(batch: pa.RecordBatch, count: int, seed: int) -> pa.RecordBatch:
    """`count` more columns, a mix of integers, doubles, short strings and timestamps, vectorised."""
    rng = np.random.default_rng([seed, batch.column(0)[0].as_py()])
    rows = batch.num_rows
    arrays, names = list(batch.columns), list(batch.schema.names)
    for i in range(count):
        kind = i % 4
        if kind == 0:
            column = pa.array(rng.integers(0, 10**9, rows))
        elif kind == 1:
            column = pa.array(rng.normal(size=rows))
        elif kind == 2:
            column = pc.binary_join_element_wise("tag-", pa.array(rng.integers(0, 5000, rows)).cast(pa.string()), "")
        else:
            column = pa.array(rng.integers(1_700_000_000_000_000, 1_800_000_000_000_000, rows)).view(pa.timestamp("us"))
        arrays.append(column)
        names.append(f"extra_{i}")
    return pa.RecordBatch.from_arrays(arrays, names=names)


def write_source(path: Path, rows: int, extra: int) -> None:
    writer = None
    for start in range(0, rows, ROW_GROUP_SIZE):
        batch = extra_columns(users_batch(start, min(ROW_GROUP_SIZE, rows - start), rows), extra, 1)
        if writer is None:
            writer = pq.ParquetWriter(path, batch.schema, compression=CODEC)
        writer.write_batch(batch, row_group_size=ROW_GROUP_SIZE)
    assert writer is not None
    writer.close()


def new_columns(source: Path) -> dict[str, pa.Array]:
    """Stand-ins for email__fc_ct and email__fc_dek: ciphertext-sized random bytes and a one-key dictionary."""
    rows = pq.ParquetFile(source).metadata.num_rows
    rng = np.random.default_rng(7)
    cells = rng.integers(0, 256, rows * 60, dtype=np.uint8).tobytes()
    offsets = pa.array(np.arange(0, rows * 60 + 1, 60, dtype=np.int32))
    ciphertext = pa.BinaryArray.from_buffers(pa.binary(), rows, [None, offsets.buffers()[1], pa.py_buffer(cells)])
    dek = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)), pa.array([b"w" * 200]))
    return {"email__fc_ct": ciphertext, "email__fc_dek": dek}


def splice_two(source: Path, target: Path, added: dict[str, pa.Array], prove: bool) -> None:
    parquet = pq.ParquetFile(source)
    changed = parquet.read(columns=ATTRIBUTES)
    table = pa.Table.from_arrays([*changed.columns, *added.values()], names=[*changed.column_names, *added])
    buffer = pa.BufferOutputStream()
    with pq.ParquetWriter(buffer, table.schema, compression=CODEC) as writer:
        start = 0
        for index in range(parquet.num_row_groups):
            count = parquet.metadata.row_group(index).num_rows
            writer.write_table(table.slice(start, count), row_group_size=max(count, 1))
            start += count
    replacement = buffer.getvalue()
    schema = spliced_arrow_schema(parquet.schema_arrow, pq.read_schema(pa.BufferReader(replacement)))
    with pa.memory_map(str(source)) as data, open(target, "wb") as sink:
        report = splice_columns(data, replacement, sink, key_value_metadata=footer_metadata(schema))
    if prove:
        prove_copied(source, target, report.copied)
        pq.read_table(target, columns=[*ATTRIBUTES, *added])


def bench_table(work: Path, rows: int, extra: int, reps: int) -> dict[str, float]:
    source = work / f"source_{extra}.parquet"
    write_source(source, rows, extra)
    columns = pq.ParquetFile(source).metadata.num_columns
    added = new_columns(source)
    copy, spliced, proven = [], [], []
    for _ in range(reps):
        for times, run in (
            (copy, lambda: read_write(source, work / "copy.parquet")),
            (spliced, lambda: splice_two(source, work / "spliced.parquet", added, prove=False)),
            (proven, lambda: splice_two(source, work / "spliced.parquet", added, prove=True)),
        ):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
            for leftover in ("copy.parquet", "spliced.parquet"):
                (work / leftover).unlink(missing_ok=True)
    print(f"{columns} columns, {rows} rows, {CODEC}, {os.path.getsize(source) / 2**20:.1f} MiB:")
    print(f"  copy (read_table + write_table):          {summary(copy)}")
    print(f"  re-encode 2 columns (+2 new) and splice:  {summary(spliced)}")
    print(f"  ... and prove copies + decode changed:    {summary(proven)}")
    ratio = min(spliced) / min(copy)
    ratio_proven = min(proven) / min(copy)
    medians = statistics.median(s / c for s, c in zip(spliced, copy, strict=True))
    print(f"  splice / copy {ratio:.2f} (median of per-repetition ratios {medians:.2f}); with proof {ratio_proven:.2f}")
    return {
        "copy_s": min(copy),
        "splice_s": min(spliced),
        "splice_proven_s": min(proven),
        "ratio": ratio,
        "ratio_proven": ratio_proven,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    work = Path(tempfile.mkdtemp(prefix="fieldcrypt-splice-bench-"))
    try:
        narrow = bench_table(work, args.rows, 0, args.reps)
        wide = bench_table(work, args.rows, WIDE_EXTRA, args.reps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "splice_vs_copy": round(narrow["ratio"], 3),
                "splice_proven_vs_copy": round(narrow["ratio_proven"], 3),
                "splice_vs_copy_wide": round(wide["ratio"], 3),
                "splice_proven_vs_copy_wide": round(wide["ratio_proven"], 3),
                "copy_s": round(narrow["copy_s"], 3),
                "copy_wide_s": round(wide["copy_s"], 3),
                "splice_s": round(narrow["splice_s"], 3),
                "splice_wide_s": round(wide["splice_s"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
