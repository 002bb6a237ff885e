"""The rewrite engine's commit for a Delta or Iceberg table (fieldcrypt.engine.rewrite.Commit).

A table format owns its files, so no file of it is replaced in place. For each file of a
partition, under the file's lock: the same checks as the plain lake's commit (the file unchanged
since it was read, the operation's own last check, fieldcrypt.engine.replace_guard's stored
metadata, master key and audit intent), the new file's protection-ledger entry staged, and the
verified temporary file renamed to a new visible data file beside the old one
(`part-fc-<uuid>.parquet`). The old file is untouched: still live in the table, and afterwards
kept for time travel until purged.

`finish` then commits the partition's replacements in ONE table transaction
(fieldcrypt.lake.tables.base.TableFormat.commit: the old files removed from the table, the new
added, fieldcrypt's operation in the commit metadata), after the table's schema gained the new
`__fc_*` columns with their statistics turned off; then the ledger's staged entries become the
new files' and the old files leave it. A refused commit deletes the new files (never referenced
by the table) and withdraws their staged entries: the table is as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fieldcrypt.engine.replace_guard import Replacing
from fieldcrypt.engine.rewrite import FileJob, checked_for_commit
from fieldcrypt.lake.audit import AuditLog
from fieldcrypt.lake.store import FileVersion, LakeStore
from fieldcrypt.lake.tables.base import (
    NEW_FILE_PREFIX,
    Replacement,
    TableFormat,
    TableOperation,
    TableSnapshot,
    is_protection_column,
)
from fieldcrypt.policy.ledger import FileEntry, LedgerStep, entry_of
from fieldcrypt.policy.table_recovery import commit_proof


def new_data_path(rel: str) -> str:
    """A new data file's name beside `rel`: visible (engines read it once the table references it)."""
    head, _, _ = rel.rpartition("/")
    name = f"{NEW_FILE_PREFIX}{uuid.uuid4()}.parquet"
    return f"{head}/{name}" if head else name


@dataclass
class _Staged:
    replacement: Replacement
    entry: FileEntry | None
    fields: list[pa.Field]
    protected: set[str]


@dataclass
class TableCommit:
    """The commit of one partition's rewrites into a table: `__call__` per file, `finish` once."""

    store: LakeStore
    table: TableFormat
    snapshot: TableSnapshot
    operation: TableOperation
    ledger: LedgerStep | None
    audit: AuditLog | None = None
    _staged: list[_Staged] = field(default_factory=list, init=False)
    _held: list[str] = field(default_factory=list, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def files(self, partition: str | None) -> list[str]:
        """The partition's live files at the snapshot this commit's transaction reads from."""
        return self.table.partitions(self.snapshot).get(partition, [])

    def __call__(
        self, job: FileJob, temp: str, original: FileVersion, expected: Sequence[Mapping[str, Any]] | None
    ) -> Replacing:
        store = job.store
        new = new_data_path(job.rel)
        with store.exclusive(job.rel):
            replacing = checked_for_commit(job, original, expected, "committed")
            entry = None
            if self.ledger is not None:  # never launder a replaced file; the new file's entry staged first
                self.ledger.ledger.check_file(self.ledger.dataset, self.ledger.partition, job.rel, job.attributes)
                # the cell digests the verification took from the written bytes, when it took them all
                entry = entry_of(store, temp, self.ledger.dataset, self.ledger.attributes, job.verified_cells)
                self.ledger.ledger.stage(self.ledger.dataset.name, self.ledger.partition, new, entry)
            self._publish(store, temp, new, job.rel)
            store.hold_published(temp, new)  # its run's flock until committed: never swept as a dead run's
            with self._lock:
                self._held.append(new)
        with store.open_input(new) as handle:
            metadata = pq.ParquetFile(handle).metadata
            schema = metadata.schema.to_arrow_schema()
            rows = metadata.num_rows
        version = store.version(new)
        protected = {a.column for a in job.attributes}
        changed = frozenset(protected | {name for name in schema.names if is_protection_column(name)})
        replacement = Replacement(job.rel, new, version.size, (version.mtime_ns or 0) // 1_000_000, rows, changed)
        fields = [f for f in schema if is_protection_column(f.name)]
        with self._lock:
            self._staged.append(_Staged(replacement, entry, fields, protected))
        return replacing

    def file_schema(self, job: FileJob, schema: pa.Schema) -> pa.Schema:
        """The schema each new file is written with: the table format's (an Iceberg table's field ids)."""
        return self.table.file_schema(schema, sorted({a.column for a in job.attributes}))

    @staticmethod
    def _publish(store: LakeStore, temp: str, new: str, old: str) -> None:
        """The verified temporary file becomes the new data file, with the old file's permission bits."""
        if store.is_local:
            mode = stat.S_IMODE(os.stat(store.full_path(old)).st_mode)
            os.chmod(store.full_path(temp), mode)
        store.replace(temp, new)

    def finish(self) -> int | None:
        """Commit every staged replacement in one table transaction; the table's new version (None: none)."""
        with self._lock:
            staged, self._staged = list(self._staged), []
            held, self._held = list(self._held), []
        try:
            return self._finish(staged)
        finally:
            for rel in held:  # committed and recorded, or deleted: nothing of this run to sweep
                self.store.release_published(rel)

    def _finish(self, staged: Sequence[_Staged]) -> int | None:
        if not staged:
            return None
        replacements = [s.replacement for s in staged]
        fields = list({f.name: f for s in staged for f in s.fields}.values())
        protected = sorted({name for s in staged for name in s.protected})
        operation = self.operation
        if self.ledger is not None and all(s.entry is not None for s in staged):
            # what the next run needs to finish the ledger step, should this one die after the commit
            pairs = tuple((r.old, r.new) for r in replacements)
            entries = {s.replacement.new: s.entry for s in staged if s.entry is not None}
            proof = commit_proof(self.ledger.ledger, self.ledger.dataset.name, self.ledger.partition, pairs, entries)
            operation = dataclasses.replace(operation, replaced=pairs, proof=proof)
        try:
            self.table.prepare_columns(fields, protected)
            version = self.table.commit(self.snapshot, replacements, operation)
        except BaseException:
            self._abandon(staged)
            raise
        if self.ledger is not None:
            added = {s.replacement.new: s.entry for s in staged if s.entry is not None}
            self.ledger.ledger.replace_files(
                self.ledger.dataset.name, self.ledger.partition, added, [r.old for r in replacements]
            )
        if self.audit is not None:
            self.audit.record(
                "table_commit",
                dataset=self.operation.dataset,
                partition=self.operation.partition,
                detail=f"{self.table.kind} {self.table.describe()} version {version}: {self.operation.operation}, "
                f"{len(replacements)} files replaced (the old ones kept for time travel until purge-history)",
            )
        return version

    def _abandon(self, staged: Sequence[_Staged]) -> None:
        if self.audit is not None:
            self.audit.record(
                "table_commit_refused",
                dataset=self.operation.dataset,
                partition=self.operation.partition,
                detail=f"{self.table.kind} {self.table.describe()}: {self.operation.operation} of {len(staged)} files "
                "not committed; the new files were deleted, the table is as it was",
            )
        for item in staged:
            self.store.delete(item.replacement.new)
            if self.ledger is not None and item.entry is not None:
                with contextlib.suppress(Exception):  # the commit's own error is the one to report
                    self.ledger.ledger.unstage(
                        self.ledger.dataset.name, self.ledger.partition, item.replacement.new, item.entry
                    )
