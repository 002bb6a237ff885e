"""The one rewrite engine: source file -> transform some columns -> write -> verify -> commit.

Protection, rotation, re-index and the encryption of history are transforms of one file
(fieldcrypt.protect, fieldcrypt.rotate, fieldcrypt.reindex): each writes its new file and
verifies what it wrote. The skeleton around them lives here, once:

1. a hidden temporary file beside the original, created under an exclusive flock that is held
   until it is replaced or deleted, so no sweeper takes it while this run lives
   (fieldcrypt.store);
2. the transform writes the new file into it, the source opened once;
3. the transform verifies the written file against the source, before anything is replaced;
4. the commit. On a plain lake (`LakeCommit`), under the file's lock: compare-and-swap on the
   version read before any work, the operation's own last check, what must be checked,
   removed and recorded before a replace (fieldcrypt.replace_guard: stored protection
   metadata, the current master key, stale summary files, the audit intent), the protection
   ledger's staged entry (fieldcrypt.ledger), and the atomic replace with its Hadoop checksum
   (fieldcrypt.checksum_file).

A crash anywhere leaves the original file or the verified new one, never a mix. The commit is
the one place a table format's own commit plugs in (`Commit`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pyarrow.parquet as pq

from fieldcrypt.cache import DataKeyCache
from fieldcrypt.checksum_file import replace_data_file
from fieldcrypt.errors import ConcurrentUpdateError
from fieldcrypt.ledger import LedgerStep, recorded
from fieldcrypt.parquet_io import open_parquet
from fieldcrypt.policy import AttributePolicy, DatasetSpec
from fieldcrypt.replace_guard import Replacing, before_replace
from fieldcrypt.store import FileVersion, LakeStore

Outcome = TypeVar("Outcome")


@dataclass(frozen=True)
class FileJob:
    """One file rewrite: which file of which dataset, under which policy and keys, for which operation."""

    store: LakeStore
    rel: str
    dataset: DatasetSpec
    attributes: Sequence[AttributePolicy]
    cache: DataKeyCache
    dataset_root: str  # the dataset's directory: summary files between it and the file go stale
    partition: str | None
    operation: str  # the audit intent's operation: encrypt, rotate_partition, reindex
    doing: str  # for messages: "protected", "rotated", "re-indexed"
    ledger: LedgerStep | None = None
    # Runs under the file's lock right before the replace and may refuse it (protection: the
    # blind-index keys it loaded are still the current ones).
    before_replace_check: Callable[[str], None] | None = None

    @property
    def where(self) -> str:
        return self.store.display(self.rel)


class Commit(Protocol):
    """Make the verified temporary file the job's file, or refuse with nothing replaced."""

    def __call__(
        self, job: FileJob, temp: str, original: FileVersion, expected: Sequence[Mapping[str, Any]] | None
    ) -> Replacing: ...


def lake_commit(
    job: FileJob, temp: str, original: FileVersion, expected: Sequence[Mapping[str, Any]] | None
) -> Replacing:
    """The plain lake's commit: compare-and-swap replace under the file's lock (local) or If-Match (S3)."""
    store = job.store
    with store.exclusive(job.rel):
        if store.version(job.rel) != original:
            raise ConcurrentUpdateError(
                f"{job.where} changed while it was being {job.doing}; nothing was replaced, run again"
            )
        if job.before_replace_check is not None:
            job.before_replace_check(job.where)
        replacing = before_replace(
            store,
            job.rel,
            job.attributes,
            job.cache,
            job.dataset.name,
            job.partition,
            expected,
            job.operation,
            dataset_root=job.dataset_root,
        )
        with recorded(job.ledger, temp, job.rel):  # the protection ledger's entry for the new file
            replace_data_file(store, temp, job.rel, original, f"it was being {job.doing}")
    return replacing


def rewrite_file(
    job: FileJob,
    original: FileVersion,
    write: Callable[[pq.ParquetFile, str], Outcome],
    verify: Callable[[pq.ParquetFile, pq.ParquetFile, str, Outcome], None],
    *,
    expected: Callable[[Outcome], Sequence[Mapping[str, Any]] | None] = lambda _: None,
    commit: Commit = lake_commit,
) -> tuple[Outcome, Replacing]:
    """Rewrite `job.rel`: `write(source, temp)` writes the new file and returns what it did,
    `verify(source, written, temp, outcome)` raises on any difference from the intent, then
    `commit` replaces the file if it is still at `original` (the version the caller read before
    deciding to rewrite). `expected(outcome)`: what the audit intent counts (protection: cells)."""
    store = job.store
    temp = store.create_temp(job.rel)
    try:
        with open_parquet(store, job.rel) as source:
            outcome = write(source, temp)
            with open_parquet(store, temp) as written:
                verify(source, written, temp, outcome)
        replacing = commit(job, temp, original, expected(outcome))
    finally:
        store.release_temp(temp)
    return outcome, replacing
