"""What fieldcrypt asks of a table format (Delta Lake, Apache Iceberg): the seam both plug into.

A table format owns its files: its log (Delta `_delta_log/`, Iceberg manifests) says which data
files make the table, with their sizes and column statistics. So a dataset declared `kind: delta`
or `kind: iceberg` is never listed by directory and no file of it is replaced in place: its
partitions and live files come from the log (`partitions`, `files`), each rewritten file becomes a
new data file beside the old one, and a partition's replacements are committed in one table
transaction (`commit`) that removes the old files from the table and adds the new ones, with the
format's own conflict detection. The old files stay on disk for time travel, still holding
plaintext, until `purge_history` (the format's VACUUM / expire-snapshots and log cleanup).

Partition keys are the table's own partition values, rendered `key=value/...` in the table's
partition-column order (`date=2026-11-28`, `region=eu/day=3`); a null value is
`key=__HIVE_DEFAULT_PARTITION__`; None for an unpartitioned table.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa

if TYPE_CHECKING:
    import polars as pl

DELTA_KIND, ICEBERG_KIND, HIVE_KIND = "delta", "iceberg", "hive"
NULL_PARTITION_VALUE = "__HIVE_DEFAULT_PARTITION__"
PROTECTION_MARK = "__fc_"  # every column fieldcrypt adds has it in its name (`email__fc_ct`)
# fieldcrypt's commits whose replaced files, kept for time travel, hold what the commit removed from the table:
# an encryption's plaintext, an erasure's erased rows (their masks, ciphertext, historical plaintext).
LEAVES_PLAINTEXT = frozenset({"encrypt", "erase"})
NEW_FILE_PREFIX = "part-fc-"  # the name of every data file fieldcrypt adds to a table: `part-fc-<uuid>.parquet`


@dataclass(frozen=True)
class TableSource:
    """Where a table is, as the catalog declares it (`kind: delta` / `kind: iceberg`).

    delta: `location`, the table root relative to the lake (a full URI inside the lake is
    made relative by the catalog). iceberg: `identifier` (`namespace.name`), `location` (the
    declared `path:`, which must be the table's location relative to the lake) and `catalog`,
    pyiceberg catalog properties (`type`, `uri`, `warehouse`, ...; local paths already resolved,
    no credentials: those come from the environment).
    """

    kind: str
    location: str = ""
    identifier: str = ""
    catalog: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Replacement:
    """One rewritten data file: `old` (lake-relative, live in the table at the snapshot read) is replaced
    by `new` (lake-relative, written, verified and visible on disk, not yet in the table)."""

    old: str
    new: str
    size: int
    modification_ms: int
    rows: int
    changed_columns: frozenset[str]  # top-level columns whose values differ from `old` (no statistics for them)


@dataclass(frozen=True)
class TableOperation:
    """fieldcrypt's operation, carried in the table commit's metadata (Delta commitInfo, Iceberg summary)."""

    operation: str  # encrypt, erase, rotate_partition, reindex
    dataset: str
    partition: str | None
    attributes: Sequence[str]
    workspace: str = ""
    # What recovery after a crash between the commit and the ledger's update needs (fieldcrypt.policy.table_recovery):
    # the commit's (old, new) file pairs and the ledger key's MAC over them and the new files' staged entries.
    replaced: tuple[tuple[str, str], ...] = ()
    proof: str = ""

    def metadata(self) -> dict[str, str]:
        found = {
            "fieldcrypt.operation": self.operation,
            "fieldcrypt.dataset": self.dataset,
            "fieldcrypt.partition": self.partition or "",
            "fieldcrypt.attributes": ",".join(self.attributes),
            "fieldcrypt.workspace": self.workspace,
        }
        if self.replaced:
            found[REPLACED_KEY] = json.dumps([list(pair) for pair in self.replaced], separators=(",", ":"))
            found[PROOF_KEY] = self.proof
        return found


REPLACED_KEY, PROOF_KEY = "fieldcrypt.replaced", "fieldcrypt.proof"


@dataclass(frozen=True)
class History:
    """What older table versions still hold: `versions` older versions (or snapshots) readable by time travel
    from before the newest fieldcrypt commit that left plaintext behind (an `encrypt`, or an `erase`: older
    versions keep the erased rows), `files` data files no live version references any more but still on disk,
    and the attributes fieldcrypt's commits protected or erased (whose plaintext those hold); `erased`: some
    fieldcrypt commit was an `erase` (so older versions still hold rows of erasure requests)."""

    versions: int
    files: int
    attributes: tuple[str, ...]
    erased: bool = False  # an `erase` commit is among them: older versions keep erased rows until purged

    @property
    def holds_plaintext(self) -> bool:
        return bool(self.attributes) and (self.versions > 0 or self.files > 0)


@dataclass(frozen=True)
class Purge:
    """What purge-history removed: data files deleted and log (or metadata) files deleted."""

    files_deleted: int
    log_files_deleted: int
    retention_hours: float


class TableSnapshot(Protocol):
    """The table as read at one version; `commit` detects what was committed since."""

    @property
    def version(self) -> int: ...


class TableFormat(Protocol):
    """One Delta or Iceberg table, as fieldcrypt reads and commits it. Paths are relative to the lake."""

    kind: str

    def describe(self) -> str:
        """The table for messages: its root or identifier."""
        ...

    def snapshot(self) -> TableSnapshot:
        """The table's current version, read once: partitions, files and a later commit use it."""
        ...

    def partitions(self, snapshot: TableSnapshot) -> dict[str | None, list[str]]:
        """Every partition (rendered `key=value/...`, None unpartitioned) -> its live data files, sorted."""
        ...

    def scan(self, snapshot: TableSnapshot) -> pl.LazyFrame:
        """The table's rows at `snapshot`, lazily, as its own readers see them: its live files only (never a file
        an older version removed), partition columns from the log, deletes applied (polars' `scan_delta` /
        `scan_iceberg`, which refuse by name a table feature they cannot read)."""
        ...

    def check_writable(self, snapshot: TableSnapshot) -> None:
        """InputError naming what fieldcrypt cannot write: Delta deletion vectors, column mapping, change data
        feed, append-only, unknown writer features; Iceberg delete files (merge-on-read)."""
        ...

    def file_schema(self, schema: pa.Schema, protected_columns: Sequence[str]) -> pa.Schema:
        """The schema a new data file of the table is written with, given the one the rewrite intends (Delta: as
        is; Iceberg: the table's schema first gains the new columns, then every field gets its Parquet field id).
        Called by each file's write, possibly from several threads."""
        ...

    def prepare_columns(self, fields: Sequence[pa.Field], protected_columns: Sequence[str]) -> None:
        """Before the first commit that adds them: the table's schema gains `fields` (fieldcrypt's columns,
        nullable), and its statistics leave out every `__fc_*` column and `protected_columns` (Delta
        `delta.dataSkippingStatsColumns`; Iceberg `write.metadata.metrics.column.*` = none)."""
        ...

    def commit(self, snapshot: TableSnapshot, replacements: Sequence[Replacement], operation: TableOperation) -> int:
        """Remove every `old` and add every `new` in ONE table transaction carrying `operation`; the table's
        new version. A concurrent commit is retried by the format when it does not touch the old files (an
        append), else ConcurrentUpdateError naming it; nothing is committed then."""
        ...

    def operations(self) -> list[Mapping[str, str]]:
        """The fieldcrypt metadata (TableOperation.metadata) of every commit still in the table's history that
        carries one, newest first (Delta: the log's commitInfo; Iceberg: the snapshots' summaries)."""
        ...

    def history(self, attributes: Sequence[str]) -> History:
        """What older versions still hold (`attributes`: the protected attributes, to name them)."""
        ...

    def purge_history(self, older_than_hours: float) -> Purge:
        """Delete what only versions older than the retention need (data files and log entries)."""
        ...


_COMMIT_LOCKS: dict[str, threading.Lock] = {}
_COMMIT_LOCKS_GUARD = threading.Lock()


def commit_lock(table: str) -> threading.Lock:
    """One lock per table (its root or identifier) in this process: the partitions a run works on at once
    commit one after the other instead of failing each other's optimistic commit; commits from other
    processes are still detected by the format and retried."""
    with _COMMIT_LOCKS_GUARD:
        return _COMMIT_LOCKS.setdefault(table, threading.Lock())


def partition_key(columns: Sequence[str], values: Mapping[str, str | None]) -> str | None:
    """A table partition's fieldcrypt key: `key=value/...` in the table's column order, None unpartitioned."""
    if not columns:
        return None
    return "/".join(f"{c}={NULL_PARTITION_VALUE if values.get(c) is None else values[c]}" for c in columns)


def is_protection_column(name: str) -> bool:
    return PROTECTION_MARK in name
