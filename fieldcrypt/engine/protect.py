"""Protecting one partition file: read -> select rows -> encrypt -> mask -> verify -> replace.

The data path, top to bottom:
1. read: the file is streamed row group by row group (fieldcrypt.lake.parquet_io);
2. select: rows ingested at or after enablement, not null, not protected (fieldcrypt.policy.select);
3. encrypt and mask: fieldcrypt.engine.encrypt (cells: fieldcrypt.format.cell, masks: fieldcrypt.format.mask);
4. write: into a hidden temporary file next to the original (fieldcrypt.engine.rewrite: on the splice path
   only the attributes' top-level columns and the protection columns are read and encoded, every other
   column chunk is copied as bytes);
5. verify: the temporary file is re-read against the original (fieldcrypt.engine.verify: the changed
   columns decoded, the copied chunks proven identical by digest on the splice path);
6. replace: atomically, only if the original did not change meanwhile (fieldcrypt.lake.store).

A file with nothing to encrypt is not rewritten at all, so a re-run is a no-op.

Steps 1-4 are pipelined: helper threads read the next row group, compute masks and
encode the previous row group into Parquet (Arrow releases the GIL) while this thread
encrypts; the native kernel encrypts each column's slices on the shared kernel pool
(fieldcrypt.format.kernel, FIELDCRYPT_THREADS), so one row group is in flight per attribute.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from fieldcrypt.engine.encrypt import WRAPPED_KEY_TYPE, EncryptedAttribute, encrypt_attribute, with_protection_columns
from fieldcrypt.engine.replace_guard import confirm_replace
from fieldcrypt.engine.rewrite import BatchWriter, Commit, FileJob, Output, lake_commit, rewrite_file
from fieldcrypt.engine.verify import verify_rewrite
from fieldcrypt.errors import InputError
from fieldcrypt.format.columns import check_attribute_type, is_row_key_type, row_key_bytes
from fieldcrypt.format.engine_schema import lists_columns
from fieldcrypt.keys.blind_index import BlindIndexKey
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.lake.parquet_io import open_parquet, read_ahead, row_groups
from fieldcrypt.lake.parquet_io import row_group as read_row_group
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.ledger import LedgerStep
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec
from fieldcrypt.policy.select import RowSelection, UniqueRowKeys, select_rows


@dataclass
class AttributeCounts:
    newly_encrypted: int = 0
    already_protected: int = 0
    historical_plaintext: int = 0
    null_values: int = 0
    pending: int = 0


@dataclass
class ProtectReport:
    """What one protection (or status scan) of one file found and did; counts and ids only."""

    path: str
    rows: int = 0
    attributes: dict[str, AttributeCounts] = field(default_factory=dict)
    rewritten: bool = False
    data_keys: int = 0
    kms_calls: int = 0
    master_key: str = ""
    seconds: float = 0.0
    # How a rewritten file was written (fieldcrypt.engine.rewrite): "splice" or "full"; "" when not rewritten.
    # A partition's total names every path its files took, "+"-joined.
    rewrite_path: str = ""

    files: int = 1
    files_rewritten: int = 0
    temp_files_left: int = 0  # status: temporary files of live runs (or too young on S3) that could not be swept
    # Summary files (fieldcrypt.lake.summary_files): removed before a replace; found by a status scan.
    summary_files_removed: list[str] = field(default_factory=list)
    summary_files_present: list[str] = field(default_factory=list)
    # Erasure requests applied before protecting (fieldcrypt.engine.erase): files rewritten, cells set to null.
    erasure_files_rewritten: int = 0
    erasure_cells: int = 0

    @property
    def newly_encrypted(self) -> int:
        return sum(c.newly_encrypted for c in self.attributes.values())

    @classmethod
    def total(cls, path: str, reports: Sequence[ProtectReport], master_key: str = "") -> ProtectReport:
        """One report summing the reports of a partition's files (`rewritten` when any file was)."""
        summed = cls(path, files=len(reports), master_key=master_key)
        for report in reports:
            summed.rows += report.rows
            summed.data_keys += report.data_keys
            summed.kms_calls += report.kms_calls
            summed.seconds += report.seconds
            summed.files_rewritten += report.files_rewritten
            summed.master_key = summed.master_key or report.master_key
            summed.rewrite_path = _joined_paths(summed.rewrite_path, report.rewrite_path)
            summed.summary_files_removed = sorted({*summed.summary_files_removed, *report.summary_files_removed})
            for name, counts in report.attributes.items():
                into = summed.attributes.setdefault(name, AttributeCounts())
                for counter in vars(counts):
                    setattr(into, counter, getattr(into, counter) + getattr(counts, counter))
        summed.rewritten = summed.files_rewritten > 0
        return summed


def check_schema(schema: pa.Schema, dataset: DatasetSpec, attributes: Sequence[AttributePolicy], where: str) -> None:
    """Every input problem the file's schema can show, before any row is read (also run at enablement).

    The ingestion-time column must be a timestamp; each primary-key column an integer or
    text; each attribute text (string, large_string, string_view or a dictionary of them) in
    a column, a struct field at any depth or a `map<string, string>` value by key.
    """
    if dataset.ingested_at not in schema.names:
        raise InputError(f"{where}: ingestion-time column {dataset.ingested_at!r} of {dataset.name} not found")
    ingested_type = schema.field(dataset.ingested_at).type
    if not pa.types.is_timestamp(ingested_type):
        raise InputError(
            f"{where}: ingestion-time column {dataset.ingested_at!r} is {ingested_type}, expected a timestamp"
        )
    for key in dataset.primary_key:
        if key not in schema.names:
            raise InputError(f"{where}: primary-key column {key!r} of {dataset.name} not found")
        key_type = schema.field(key).type
        if not is_row_key_type(key_type):
            raise InputError(
                f"{where}: primary-key column {key!r} of {dataset.name} is {key_type}; "
                "a primary key must be integer or string columns"
            )
    for attribute in attributes:
        check_attribute_type(schema, attribute.path, attribute.name, where)
        for column, accepted in (
            (attribute.ciphertext_column, (pa.binary(), pa.large_binary())),
            (attribute.wrapped_key_column, (pa.binary(), pa.large_binary(), WRAPPED_KEY_TYPE)),
            (attribute.blind_index_column, (pa.binary(), pa.large_binary())),
        ):
            if column is not None and column in schema.names and schema.field(column).type not in accepted:
                raise InputError(f"{where}: column {column} is {schema.field(column).type}, not what fieldcrypt writes")


def scan_file(store: LakeStore, rel: str, dataset: DatasetSpec, attributes: Sequence[AttributePolicy]) -> ProtectReport:
    """Per-attribute counts of a file without changing it (reads only the columns involved)."""
    return _scan(store, rel, dataset, attributes, stop_when_pending=False)


def _scan(
    store: LakeStore, rel: str, dataset: DatasetSpec, attributes: Sequence[AttributePolicy], *, stop_when_pending: bool
) -> ProtectReport:
    """scan_file; with `stop_when_pending`, it stops at the first row group with a cell to
    encrypt (its counts are then partial: the protection pass counts everything itself)."""
    where = store.display(rel)
    report = ProtectReport(where, attributes={a.name: AttributeCounts() for a in attributes})
    with open_parquet(store, rel) as parquet:
        check_schema(parquet.schema_arrow, dataset, attributes, where)
        names = parquet.schema_arrow.names
        wanted = (
            {dataset.ingested_at}
            | {a.column for a in attributes}
            | {a.ciphertext_column for a in attributes}
            | {a.wrapped_key_column for a in attributes}
        )
        for index, batch in enumerate(row_groups(parquet, where, columns=[n for n in names if n in wanted])):
            report.rows += batch.num_rows
            at = f"{where} row group {index}"
            for attribute in attributes:
                _count(report.attributes[attribute.name], select_rows(batch, dataset, attribute, at))
            if stop_when_pending and any(c.pending for c in report.attributes.values()):
                break
    return report


def _count(counts: AttributeCounts, rows: RowSelection) -> None:
    counts.pending += rows.count
    counts.already_protected += rows.already_protected
    counts.historical_plaintext += rows.historical_plaintext
    counts.null_values += rows.null_values


def protect_file(
    store: LakeStore,
    rel: str,
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    cache: DataKeyCache,
    *,
    dataset_root: str,
    partition: str | None = None,
    sample_per_row_group: int = 32,
    index_keys: Mapping[str, BlindIndexKey] | None = None,
    before_replace_check: Callable[[str], None] | None = None,
    ledger: LedgerStep | None = None,
    commit: Commit = lake_commit,
) -> ProtectReport:
    """Encrypt every pending cell of `rel` and replace it atomically (`commit`: a table format's, for a
    Delta or Iceberg table, fieldcrypt.engine.table_commit).

    `dataset_root` is the dataset's directory: the summary files between it and `rel` are removed
    before the replace (fieldcrypt.lake.summary_files).
    `index_keys` holds the unwrapped blind-index key of each attribute that has one;
    `before_replace_check(where)` runs under the file's lock right before the replace and
    may refuse it (the workspace checks those index keys are still the current ones).

    A file with nothing pending is left alone once it carries the protection columns of
    every enabled attribute, listed in its Spark and pandas schemas; before that it is
    rewritten once, values untouched, with the (all-null) columns added, so that every
    file of a protected dataset has one schema and analysts (Spark too) can read the
    dataset without reconciling schemas.
    """
    started = time.perf_counter()
    calls_before = cache.calls.total
    where = store.display(rel)
    original_version = store.version(rel)
    # Reads the involved columns up to the first row group with work to do: a file with
    # nothing pending is scanned whole (and left alone), any other is counted while written.
    report = _scan(store, rel, dataset, attributes, stop_when_pending=True)
    report.master_key = cache.master_key.ref
    if sum(c.pending for c in report.attributes.values()) == 0 and _has_protection_columns(store, rel, attributes):
        report.seconds = time.perf_counter() - started
        return report
    report = ProtectReport(where, attributes={a.name: AttributeCounts() for a in attributes})
    report.master_key = cache.master_key.ref

    job = FileJob(
        store,
        rel,
        dataset,
        attributes,
        cache,
        dataset_root,
        partition,
        "encrypt",
        "protected",
        ledger,
        before_replace_check,
    )

    # The top-level columns protection changes or adds, and those it reads besides.
    changed = {a.column for a in attributes} | {
        c for a in attributes for c in (a.ciphertext_column, a.wrapped_key_column, a.blind_index_column) if c
    }
    needed = changed | {dataset.ingested_at, *dataset.primary_key}

    def write(source: pq.ParquetFile, out: Output) -> tuple[pa.Schema, list[dict[str, EncryptedAttribute]]]:
        report.rows, report.attributes = 0, {a.name: AttributeCounts() for a in attributes}  # may run twice
        schema = _protected_schema(source.schema_arrow, attributes)
        with out.writer(source, schema, changed) as writer:
            written = _write_protected(
                writer,
                out,
                source,
                out.columns(needed, source),
                dataset,
                attributes,
                cache,
                partition,
                where,
                report,
                index_keys or {},
            )
        return out.schema or schema, written  # as written: a table commit may have had its say (Iceberg field ids)

    def verify(
        source: pq.ParquetFile,
        written: pq.ParquetFile,
        out: Output,
        outcome: tuple[pa.Schema, list[dict[str, EncryptedAttribute]]],
    ) -> None:
        schema, expected = outcome
        columns = out.columns(needed, source)
        verify_rewrite(
            source,
            written,
            schema,
            dataset,
            attributes,
            expected,
            cache,
            where,
            sample_per_row_group,
            partition,
            index_keys or {},
            columns=None if columns is None else needed,
            cells=out.cells,
            source_batches=out.kept(columns),
        )

    (_, expected), (intent, removed), report.rewrite_path = rewrite_file(
        job, original_version, write, verify, expected=lambda o: o[1], commit=commit
    )

    wrapped_keys: set[bytes] = set()
    for row_group in expected:
        for attribute in attributes:
            written_attribute = row_group.get(attribute.name)
            if written_attribute:
                report.attributes[attribute.name].newly_encrypted += written_attribute.cells
                wrapped_keys.update(written_attribute.new_wrapped_keys)
    for counts in report.attributes.values():
        counts.pending -= counts.newly_encrypted
    if cache.audit is not None:
        for name, counts in report.attributes.items():
            if counts.newly_encrypted:
                cache.audit.record(
                    "encrypt",
                    dataset=dataset.name,
                    attribute=name.partition(".")[2],
                    partition=partition,
                    master_key=report.master_key,
                    cells=counts.newly_encrypted,
                    intent=intent,
                )
    confirm_replace(cache, intent, dataset.name, partition, report.newly_encrypted)
    report.rewritten = True
    report.files_rewritten = 1
    report.summary_files_removed = removed
    report.data_keys = len(wrapped_keys)
    report.kms_calls = cache.calls.total - calls_before
    report.seconds = time.perf_counter() - started
    return report


def _has_protection_columns(store: LakeStore, rel: str, attributes: Sequence[AttributePolicy]) -> bool:
    """Does the file hold every attribute's protection columns, listed in its Spark and pandas schemas?

    A file protected before those schemas listed them is rewritten once (cells untouched),
    or Spark would not see its ciphertext and a Spark read -> write would drop it.
    """
    with open_parquet(store, rel) as parquet:
        schema = parquet.schema_arrow
    columns = [c for a in attributes for c in (a.ciphertext_column, a.wrapped_key_column, a.blind_index_column) if c]
    return set(columns) <= set(schema.names) and lists_columns(schema.metadata or {}, columns, store.display(rel))


def _protected_schema(schema: pa.Schema, attributes: Sequence[AttributePolicy]) -> pa.Schema:
    empty = pa.RecordBatch.from_pylist([], schema=schema)
    for attribute in attributes:
        empty = with_protection_columns(empty, attribute)
    return empty.schema


def _joined_paths(*paths: str) -> str:
    return "+".join(sorted({part for path in paths for part in path.split("+") if part}))


def _write_protected(
    writer: BatchWriter,
    out: Output,
    source: pq.ParquetFile,
    columns: list[str] | None,
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    cache: DataKeyCache,
    partition: str | None,
    where: str,
    report: ProtectReport,
    index_keys: Mapping[str, BlindIndexKey],
) -> list[dict[str, EncryptedAttribute]]:
    """Stream the source's `columns` (None: all) through `writer`, one batch per row group; counts into `report`.
    The batches read are kept for the verification while they fit (Output.keeping)."""
    written: list[dict[str, EncryptedAttribute]] = []
    # Helper threads overlap the GIL-free Arrow work (reading, masks, Parquet encoding) with
    # the GIL-bound encryption loop. The encoder is shut down, finishing any write, before
    # the writer closes.
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="fieldcrypt-encode") as encoder,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="fieldcrypt-mask") as helper,
        read_ahead(row_groups(source, where, columns)) as read,
    ):
        batches = out.keeping(read, columns, source)
        writing: Future[None] | None = None
        row_keys = UniqueRowKeys(
            dataset,
            where,
            source.metadata.num_rows,
            lambda index: read_row_group(source, index, where, list(dataset.primary_key)),
        )
        share_keys = bool(dataset.primary_key) and not {a.column for a in attributes} & set(dataset.primary_key)
        for index, batch in enumerate(batches):
            report.rows += batch.num_rows
            at = f"{where} row group {index}"
            # Selected on the batch as read: encrypting one attribute never changes another's cells.
            selections = [select_rows(batch, dataset, attribute, at) for attribute in attributes]
            row_keys.add(batch, selections, index)
            outcome: dict[str, EncryptedAttribute] = {}
            # The row keys of the batch as read, once for all its attributes (unless an attribute is a key
            # column: then each attribute takes them from the batch as the attributes before it left it).
            keys = (
                row_key_bytes(batch, dataset.primary_key, dataset.name)
                if share_keys and any(rows.count for rows in selections)
                else None
            )
            for attribute, rows in zip(attributes, selections, strict=True):
                _count(report.attributes[attribute.name], rows)
                batch, outcome[attribute.name] = encrypt_attribute(
                    batch,
                    dataset,
                    attribute,
                    rows,
                    cache,
                    partition,
                    helper=helper,
                    index_key=index_keys.get(attribute.name),
                    batch_row_keys=keys,
                )
            if writing is not None:
                writing.result()
            writing = encoder.submit(writer.write_batch, batch)
            written.append(outcome)
        if writing is not None:
            writing.result()
        row_keys.check()
    return written
