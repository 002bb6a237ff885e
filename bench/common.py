"""Shared bench helpers: a fast vectorised users generator and a local-key workspace on a temp lake."""

from __future__ import annotations

import resource
import shutil
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from demo.sample_data import USERS_SCHEMA, snapshot_path
from fieldcrypt import KeyConfig, Workspace, WorkspaceConfig
from fieldcrypt.catalog import Catalog
from fieldcrypt.keys.keystore import Keystore

BENCH_DIR = Path(__file__).resolve().parent
# The demo's declarations of users (and events), from the project's catalog.
DATASETS = Catalog.load(BENCH_DIR.parent / "fieldcrypt.yaml", environ={}).workspace_config("demo").datasets
OUT_DIR = BENCH_DIR / "out"
WORKSPACE = "bench"
DAY = date(2026, 11, 1)
PARTITION = DAY.isoformat()
ENABLED_AT = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)  # every generated row is ingested after it
ROW_GROUP_SIZE = 64_000  # what demo.sample_data.write_snapshot lands
CODEC = "zstd"
ATTRIBUTES = (("email", "email"), ("phone", "last4"))
_DOMAINS = pa.array(["Example.com", "mail.test", "corp.example", "post.invalid"])
_COUNTRIES = pa.array(["FR", "DE", "US", "BR", "JP", "IN"])


def users_batch(start: int, rows: int, total: int, seed: int = 0) -> pa.RecordBatch:
    """Rows [start, start+rows) of a users snapshot shaped like demo.sample_data.users_table, vectorised."""
    rng = np.random.default_rng([seed, start])
    ids = np.arange(start, start + rows, dtype=np.int64)
    id_text = pa.array(ids).cast(pa.string())
    email = pc.binary_join_element_wise(
        "user",
        id_text,
        ".",
        pa.array(rng.integers(0, 10**6, rows)).cast(pa.string()),
        "@",
        _DOMAINS.take(pa.array(rng.integers(0, len(_DOMAINS), rows))),
        "",
    )
    email = pc.if_else(pa.array(ids % 17 == 3), pa.scalar(None, pa.string()), email)
    digits = pc.utf8_lpad(pa.array(rng.integers(0, 10**8, rows)).cast(pa.string()), 8, "0")
    phone = pc.binary_join_element_wise("+33 6 ", digits, "")
    phone = pc.if_else(pa.array(ids % 13 == 5), pa.scalar(None, pa.string()), phone)
    name = pc.binary_join_element_wise("Name ", id_text, "")
    country = _COUNTRIES.take(pa.array(rng.integers(0, len(_COUNTRIES), rows)))
    day_start = int(ENABLED_AT.timestamp() * 1_000_000)
    step = 86_400_000_000 // max(total, 1)
    micros = day_start + ids * step + rng.integers(0, max(step, 1), rows)
    ingested = pa.array(micros, pa.int64()).view(pa.timestamp("us", tz="UTC"))
    return pa.RecordBatch.from_arrays([pa.array(ids), email, phone, name, country, ingested], schema=USERS_SCHEMA)


def write_users(path: Path, rows: int, row_group_size: int = ROW_GROUP_SIZE, seed: int = 0) -> Path:
    """Land a users snapshot of `rows` rows, generated row group by row group (bounded memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, USERS_SCHEMA, compression=CODEC) as writer:
        for start in range(0, rows, row_group_size):
            batch = users_batch(start, min(row_group_size, rows - start), rows, seed)
            writer.write_batch(batch, row_group_size=row_group_size)
    return path


@dataclass
class BenchLake:
    root: Path
    keystore: Path
    lake: Path

    @property
    def rel(self) -> str:
        return snapshot_path("users", PARTITION)

    @property
    def file(self) -> Path:
        return self.lake / self.rel

    def workspace(self, actor: str = "bench") -> Workspace:
        config = WorkspaceConfig(WORKSPACE, str(self.lake), KeyConfig("local", str(self.keystore)), datasets=DATASETS)
        return Workspace(config, actor=actor)

    def land(self, source: Path) -> None:
        """Put a copy of `source` in place as the partition file (not timed)."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, self.file)


def make_lake(root: Path, attributes: Iterable[tuple[str, str]] = ATTRIBUTES) -> BenchLake:
    """A fresh lake with a local keystore and `users.<attr>` enabled before every generated row."""
    if root.exists():
        shutil.rmtree(root)
    lake = BenchLake(root, root / "keys" / "keystore.json", root / "lake")
    Keystore.create(lake.keystore, WORKSPACE)
    workspace = lake.workspace()
    policy = workspace.policy().with_dataset(DATASETS["users"].spec)
    for path, mask in attributes:
        policy = policy.with_enabled(f"users.{path}", mask, "bench", now=ENABLED_AT)
    workspace.policies.save(policy)
    return lake


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def summary(times: list[float]) -> str:
    return f"best {min(times):.3f}s median {statistics.median(times):.3f}s over {len(times)}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def read_write(source: Path, target: Path, codec: str = CODEC, row_group_size: int = ROW_GROUP_SIZE) -> None:
    """The baseline: a plain Parquet read and write of the whole file with the same codec."""
    table = pq.read_table(source)
    pq.write_table(table, target, compression=codec, row_group_size=row_group_size)
