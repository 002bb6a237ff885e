"""Multi-file partition bench (`make bench`): protect one partition held in 1 file and the same rows in
16 files (as Spark or pyarrow.dataset write them), in the same run. The ratio is the per-file overhead:
one footer read, one temporary file, one verification and one atomic replace per file.

Human-readable lines first; the last line is one JSON object.
Usage: python bench/layout.py [--rows N] [--files N] [--reps N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CODEC, OUT_DIR, PARTITION, ROW_GROUP_SIZE, make_lake, timed, write_users  # noqa: E402


def land_split(source: Path, folder: Path, files: int) -> None:
    """The rows of `source` as `files` Spark-style files (and a _SUCCESS marker) in one partition folder."""
    table = pq.read_table(source)
    per_file = -(-table.num_rows // files)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        piece = table.slice(index * per_file, per_file)
        name = f"part-{index:05d}-bench-c000.zstd.parquet"
        pq.write_table(piece, folder / name, compression=CODEC, row_group_size=ROW_GROUP_SIZE)
    (folder / "_SUCCESS").write_bytes(b"")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    source = write_users(OUT_DIR / "layout-source.parquet", args.rows)

    single, split = [], []
    for _ in range(args.reps):
        lake = make_lake(OUT_DIR / "layout-single")
        lake.land(source)
        workspace = lake.workspace()
        single.append(timed(lambda workspace=workspace: workspace.protect("users", PARTITION)))

        lake = make_lake(OUT_DIR / "layout-split")
        land_split(source, lake.file.parent, args.files)
        workspace = lake.workspace()
        split.append(timed(lambda workspace=workspace: workspace.protect("users", PARTITION)))
        assert workspace.status("users", PARTITION).files == args.files

    ratio = statistics.median(split) / statistics.median(single)
    median_single = statistics.median(single)
    print(f"protect {args.rows:,} rows in 1 file:      median {median_single:.3f}s (best {min(single):.3f}s)")
    print(
        f"protect {args.rows:,} rows in {args.files} files:    median {statistics.median(split):.3f}s "
        f"(best {min(split):.3f}s), {ratio:.2f}x the single file (2 files at a time, file_workers=2)"
    )
    shutil.rmtree(OUT_DIR / "layout-single", ignore_errors=True)
    shutil.rmtree(OUT_DIR / "layout-split", ignore_errors=True)
    print(
        json.dumps(
            {
                "rows": args.rows,
                "files": args.files,
                "protect_single_file_s": round(statistics.median(single), 3),
                "protect_multi_file_s": round(statistics.median(split), 3),
                "multi_file_vs_single_file": round(ratio, 3),
                "load_average_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
