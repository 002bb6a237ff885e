"""The one rewrite engine: source file -> transform some columns -> write -> verify -> commit.

Protection, rotation, re-index and the encryption of history are transforms of one file
(fieldcrypt.engine.protect, fieldcrypt.engine.rotate, fieldcrypt.engine.reindex): each writes its new file and
verifies what it wrote. The skeleton around them lives here, once:

1. a hidden temporary file beside the original, created under an exclusive flock that is held
   until it is replaced or deleted, so no sweeper takes it while this run lives
   (fieldcrypt.lake.store);
2. the transform writes the new file into it, the source opened once;
3. the transform verifies the written file against the source, before anything is replaced;
4. the commit. On a plain lake (`LakeCommit`), under the file's lock: compare-and-swap on the
   version read before any work, the operation's own last check, what must be checked,
   removed and recorded before a replace (fieldcrypt.engine.replace_guard: stored protection
   metadata, the current master key, stale summary files, the audit intent), the protection
   ledger's staged entry (fieldcrypt.policy.ledger), and the atomic replace with its Hadoop checksum
   (fieldcrypt.lake.checksum_file).

A crash anywhere leaves the original file or the verified new one, never a mix. The commit is
the one place a table format's own commit plugs in (`Commit`).

Two paths write the new file (`Output`, docs/FORMAT.md "Column-chunk passthrough"). The splice path:
a transform declares the top-level columns it changes or adds and reads only what it needs; the
engine encodes those columns alone (pyarrow, into a second hidden temporary file, one row group per
source row group, with the choices of `protected_writer`) and splices them into the source
(fieldcrypt.format.splice), every other column chunk copied as bytes; verification proves the copies by
digest and the transform decodes only the changed columns. The full path (the source cannot be
spliced, or FIELDCRYPT_REWRITE_PATH=full) writes and verifies every column with pyarrow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, TypeVar, runtime_checkable

import pyarrow as pa
import pyarrow.parquet as pq

from fieldcrypt.engine.replace_guard import Replacing, before_replace
from fieldcrypt.errors import ConcurrentUpdateError, InputError, SpliceUnsupported, VerificationError
from fieldcrypt.format.splice import SpliceReport, footer_metadata, prove_copied, splice_columns, spliced_arrow_schema
from fieldcrypt.format.splice.footer import ParquetLayout
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.lake.checksum_file import replace_data_file
from fieldcrypt.lake.parquet_io import open_parquet, protected_metadata, protected_writer
from fieldcrypt.lake.store import FileVersion, LakeStore
from fieldcrypt.policy.ledger import CellDigester, LedgerStep, recorded
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec

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
    # Set by rewrite_file for the commit: the new file's ledger cell digests, taken by its verification from
    # the bytes it decoded (Output.cells); None: the ledger reads them from the file (fieldcrypt.policy.ledger).
    verified_cells: Mapping[str, tuple[int, str]] | None = None

    @property
    def where(self) -> str:
        return self.store.display(self.rel)


class Commit(Protocol):
    """Make the verified temporary file the job's file, or refuse with nothing replaced."""

    def __call__(
        self, job: FileJob, temp: str, original: FileVersion, expected: Sequence[Mapping[str, Any]] | None
    ) -> Replacing: ...


@runtime_checkable
class FileSchemaCommit(Protocol):
    """A commit that also decides the schema a new file is written with (an Iceberg table: every column's
    Parquet field id, the table's schema gaining the new columns first; fieldcrypt.engine.table_commit)."""

    def __call__(
        self, job: FileJob, temp: str, original: FileVersion, expected: Sequence[Mapping[str, Any]] | None
    ) -> Replacing: ...

    def file_schema(self, job: FileJob, schema: pa.Schema) -> pa.Schema: ...


def checked_for_commit(
    job: FileJob, original: FileVersion, expected: Sequence[Mapping[str, Any]] | None, nothing: str
) -> Replacing:
    """What every commit checks and records under the file's lock before its new file takes the old one's
    place: the file unchanged since it was read (compare-and-swap on `original`), the operation's own last
    check, then fieldcrypt.engine.replace_guard (stored metadata, current master key, summary files, the
    audit intent). `nothing`: what the refusal says was not done ("replaced", "committed")."""
    if job.store.version(job.rel) != original:
        raise ConcurrentUpdateError(
            f"{job.where} changed while it was being {job.doing}; nothing was {nothing}, run again"
        )
    if job.before_replace_check is not None:
        job.before_replace_check(job.where)
    return before_replace(
        job.store,
        job.rel,
        job.attributes,
        job.cache,
        job.dataset.name,
        job.partition,
        expected,
        job.operation,
        dataset_root=job.dataset_root,
    )


def lake_commit(
    job: FileJob, temp: str, original: FileVersion, expected: Sequence[Mapping[str, Any]] | None
) -> Replacing:
    """The plain lake's commit: compare-and-swap replace under the file's lock (local) or If-Match (S3)."""
    store = job.store
    with store.exclusive(job.rel):
        replacing = checked_for_commit(job, original, expected, "replaced")
        with recorded(job.ledger, temp, job.rel, job.verified_cells):  # the protection ledger's entry for the new file
            replace_data_file(store, temp, job.rel, original, f"it was being {job.doing}")
    return replacing


REWRITE_PATH_ENV = "FIELDCRYPT_REWRITE_PATH"  # "full": every file takes the full path (tests, benchmarks)
# The most decoded source bytes a write keeps for its verification (Output.keeping): up to this size a file's
# involved columns are decoded once (a 1M-row users file's four involved columns take ~70 MiB), above it
# twice, so that memory stays bounded whatever the file's size.
KEPT_SOURCE_BYTES = 128 << 20
SPLICE, FULL = "splice", "full"


class BatchWriter(Protocol):
    def write_batch(self, batch: pa.RecordBatch) -> None: ...


@dataclass
class Output:
    """Where and how a transform writes the new file of `job`: `path` is "splice" or "full".

    A transform reads the source through `columns(needed, source)` (the splice path reads only what it
    needs, the full path everything), writes one batch per source row group through
    `writer(source, schema, changed)` (`schema`: the whole new file's Arrow schema; `changed`: the
    top-level columns it changes or adds; a batch may hold more, they are left out), and decodes the
    same columns again to verify them. It must be able to run twice: a splice
    found impossible only when splicing (SpliceUnsupported) is written again on the full path.
    """

    job: FileJob
    temp: str
    path: str
    file_schema: Callable[[pa.Schema], pa.Schema] | None = None  # the commit's say on the new file's schema
    splice: SpliceReport | None = field(default=None, init=False)
    schema: pa.Schema | None = field(default=None, init=False)
    # The ledger's digester of the new file's cells (fieldcrypt.policy.ledger.CellDigester), set before
    # `verify`: a verification that decodes the written file's row groups feeds them to it, in order.
    cells: CellDigester | None = field(default=None, init=False)
    # The source's row groups as the write decoded them (`keeping`), for the verification to compare with
    # instead of decoding them again; None once they would take more than KEPT_SOURCE_BYTES.
    _kept: list[pa.RecordBatch] | None = field(default=None, init=False)
    _kept_columns: list[str] | None = field(default=None, init=False)

    def keeping(
        self, batches: Iterator[pa.RecordBatch], columns: list[str] | None, source: pq.ParquetFile
    ) -> Iterator[pa.RecordBatch]:
        """`batches` (the row groups of `source`, `columns`: None for all, as read) passed through, and kept in
        memory for `kept` while they take at most KEPT_SOURCE_BYTES; a larger file is decoded again. A file
        whose footer says its columns are larger uncompressed is not kept at all (no memory for nothing)."""
        kept: list[pa.RecordBatch] | None = [] if _uncompressed_size(source, columns) <= KEPT_SOURCE_BYTES else None
        self._kept, self._kept_columns, size = None, columns, 0
        for batch in batches:
            if kept is not None:
                size += batch.get_total_buffer_size()
                if size <= KEPT_SOURCE_BYTES:
                    kept.append(batch)
                else:
                    kept = None
            yield batch
        self._kept = kept if kept is not None and len(kept) == source.num_row_groups else None

    def kept(self, columns: list[str] | None) -> list[pa.RecordBatch] | None:
        """The source's row groups the write kept (`keeping`), if it read all of them with these `columns`."""
        return self._kept if self._kept is not None and self._kept_columns == columns else None

    def columns(self, needed: Iterable[str], source: pq.ParquetFile) -> list[str] | None:
        """The top-level columns to read: None (all) on the full path, else those of `needed` present."""
        if self.path == FULL:
            return None
        wanted = set(needed)
        return [name for name in source.schema_arrow.names if name in wanted]

    @contextlib.contextmanager
    def writer(self, source: pq.ParquetFile, schema: pa.Schema, changed: Iterable[str]) -> Iterator[BatchWriter]:
        """A writer of one batch per source row group into the temporary file; the file is complete on exit."""
        job, where = self.job, self.job.where
        if self.file_schema is not None:
            schema = self.file_schema(schema)
        self.schema = schema
        if self.path == FULL:
            with (
                job.store.open_output(self.temp) as sink,
                protected_writer(sink, schema, source, list(job.attributes), where) as full,
            ):
                yield _RowGroupWriter(full, None)
            return
        wanted = set(changed)
        names = [name for name in schema.names if name in wanted]  # the new file's order
        columns = pa.schema([schema.field(name) for name in names], metadata=schema.metadata)
        if not spliced_arrow_schema(source.schema_arrow, columns).equals(schema, check_metadata=False):
            raise SpliceUnsupported(f"{where}: the changed columns do not splice into the intended schema")
        store = job.store
        # The changed columns go to a second hidden temporary sibling, held like the new file's (it may
        # hold plaintext of rows left as they are, as the new file does), so memory stays bounded
        # whatever the file's size; it is deleted once spliced, whatever happens.
        columns_temp = store.create_temp(job.rel)
        try:
            with (
                _scratch_output(store, columns_temp) as sink,
                protected_writer(sink, columns, source, list(job.attributes), where) as partial,
            ):
                yield _RowGroupWriter(partial, names)
            metadata = footer_metadata(schema.with_metadata(protected_metadata(schema, list(job.attributes), where)))
            with (
                store.open_input(job.rel) as original,
                store.open_input(columns_temp) as replacement,
                store.open_output(self.temp) as output,
            ):
                # Everything is planned and checked before the first byte is written: a SpliceUnsupported
                # here leaves the temporary file empty for the full path.
                # The changed columns are decoded and checked by the transform: only the copies are proven. On
                # a local lake the proof compares the copies with the source byte for byte (reading it again
                # costs little); elsewhere the splice hashes them as it reads them, so the source is read once.
                self.splice = splice_columns(
                    original,
                    replacement,
                    output,
                    key_value_metadata=metadata,
                    source_name=where,
                    digest_spliced=False,
                    digest_copied=not store.is_local,
                )
        finally:
            store.release_temp(columns_temp)


def _uncompressed_size(source: pq.ParquetFile, columns: list[str] | None) -> int:
    """The footer's uncompressed size of the column chunks of the top-level `columns` (None: all): an estimate
    of their decoded size (a dictionary-encoded column decodes larger; Output.keeping also counts as it reads)."""
    wanted = None if columns is None else set(columns)
    metadata = source.metadata
    total = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            if wanted is None or chunk.path_in_schema.split(".", 1)[0] in wanted:
                total += chunk.total_uncompressed_size
    return total


@contextlib.contextmanager
def _scratch_output(store: LakeStore, rel: str) -> Iterator[IO[bytes] | pa.NativeFile]:
    """A temporary file written for this run only: local, without the fsync a lake file gets (it is read
    back at once and deleted, never replaces anything); on S3, an object like any temporary file."""
    if store.is_local:
        with pa.OSFile(store.full_path(rel), "wb") as handle:
            yield handle
    else:
        with store.open_output(rel) as stream:
            yield stream


@dataclass
class _RowGroupWriter:
    writer: pq.ParquetWriter
    names: list[str] | None

    def write_batch(self, batch: pa.RecordBatch) -> None:
        if self.names is not None:
            batch = batch.select(self.names)
        if not batch.schema.equals(self.writer.schema, check_metadata=False):
            batch = batch.cast(self.writer.schema)  # a commit's file schema (Iceberg: no dictionary type declared)
        self.writer.write_batch(batch, row_group_size=max(batch.num_rows, 1))


def chosen_path(store: LakeStore, rel: str, forced: str | None = None) -> str:
    """The path a file takes: the full one when asked (argument or FIELDCRYPT_REWRITE_PATH) or when the
    source cannot be spliced (Parquet Modular Encryption, an unknown footer field, an empty row group...)."""
    asked = forced or os.environ.get(REWRITE_PATH_ENV) or SPLICE
    if asked not in (SPLICE, FULL):
        raise InputError(f"{REWRITE_PATH_ENV} is {asked!r}; expected {SPLICE!r} or {FULL!r}")
    if asked == FULL:
        return FULL
    with store.open_input(rel) as file:
        try:
            layout = ParquetLayout(file, store.display(rel))
        except SpliceUnsupported:
            return FULL
        except InputError:
            return FULL  # the full path reports what is wrong with the file, in its words
        groups = layout.metadata.row_groups
    # pyarrow writes no row group for an empty batch: such a file cannot keep its boundaries.
    if not groups or any(group.num_rows == 0 for group in groups):
        return FULL
    return SPLICE


def _prove_splice(
    job: FileJob, original: FileVersion, source: pq.ParquetFile, written: pq.ParquetFile, out: Output
) -> None:
    """Row counts and schema as intended, and every copied chunk where the footer says and identical.

    The copies are compared with the original as it is now: one replaced meanwhile (another run) is a
    ConcurrentUpdateError, as the commit's compare-and-swap would say, not a verification failure."""
    assert out.splice is not None and out.schema is not None
    where = job.where
    if written.metadata.num_rows != source.metadata.num_rows or written.num_row_groups != source.num_row_groups:
        raise VerificationError(f"{where}: the spliced file's rows or row groups differ from the original's")
    for index in range(source.num_row_groups):
        if written.metadata.row_group(index).num_rows != source.metadata.row_group(index).num_rows:
            raise VerificationError(f"{where}: row group {index} of the spliced file holds other rows")
    if not written.schema_arrow.equals(out.schema, check_metadata=False):
        raise VerificationError(f"{where}: the spliced file's schema differs from the intended schema")
    with job.store.open_input(job.rel) as before, job.store.open_input(out.temp) as after:
        parsed = out.splice.source_layout  # the footer the splice parsed, read through this handle
        try:
            origin = before if parsed is None else parsed.over(before)
            prove_copied(origin, after, out.splice.copied, out.splice.copied_sha256)
        except (InputError, VerificationError) as exc:
            if job.store.version(job.rel) != original:
                raise ConcurrentUpdateError(
                    f"{where} changed while it was being {job.doing}; nothing was replaced, run again"
                ) from None
            if isinstance(exc, InputError):
                raise VerificationError(f"{where}: the original changed while it was being spliced: {exc}") from None
            raise


def rewrite_file(
    job: FileJob,
    original: FileVersion,
    write: Callable[[pq.ParquetFile, Output], Outcome],
    verify: Callable[[pq.ParquetFile, pq.ParquetFile, Output, Outcome], None],
    *,
    expected: Callable[[Outcome], Sequence[Mapping[str, Any]] | None] = lambda _: None,
    commit: Commit = lake_commit,
    path: str | None = None,
) -> tuple[Outcome, Replacing, str]:
    """Rewrite `job.rel`: `write(source, out)` writes the new file and returns what it did,
    `verify(source, written, out, outcome)` raises on any difference from the intent, then
    `commit` replaces the file if it is still at `original` (the version the caller read before
    deciding to rewrite). `expected(outcome)`: what the audit intent counts (protection: cells).
    `path` forces "splice" or "full"; returns the outcome, the commit's result and the path taken."""
    store = job.store
    file_schema = functools.partial(commit.file_schema, job) if isinstance(commit, FileSchemaCommit) else None
    temp = store.create_temp(job.rel)
    try:
        with open_parquet(store, job.rel) as source:
            out = Output(job, temp, chosen_path(store, job.rel, path), file_schema)
            try:
                outcome = write(source, out)
            except SpliceUnsupported:
                if out.path == FULL:
                    raise
                out = Output(job, temp, FULL, file_schema)
                outcome = write(source, out)
            with open_parquet(store, temp) as written:
                if out.path == SPLICE:
                    _prove_splice(job, original, source, written, out)
                if job.ledger is not None:
                    out.cells = job.ledger.digester(written.schema_arrow.names, job.where)
                try:
                    verify(source, written, out, outcome)
                    cells = (
                        None
                        if out.cells is None
                        else out.cells.result(written.num_row_groups, written.metadata.num_rows)
                    )
                finally:
                    if out.cells is not None:
                        out.cells.close()
        replacing = commit(dataclasses.replace(job, verified_cells=cells), temp, original, expected(outcome))
    finally:
        store.release_temp(temp)
    return outcome, replacing, out.path
