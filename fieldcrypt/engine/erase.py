"""Erasing rows' protected cells from one partition file: match keys -> null the cells -> verify -> replace.

A transform of the one rewrite engine (fieldcrypt.engine.rewrite), like protection and rotation.
For every row whose primary key an erasure request names, each enabled attribute's cells are
replaced by null: the attribute's stored value (a mask, or historical plaintext, or a value not
protected yet), its ciphertext `__fc_ct`, its wrapped data key `__fc_dek` and its blind index
`__fc_bidx`. Every other cell of the file is left as it is; on the splice path every other
column chunk is copied as bytes, so the rest of the file is byte-identical per column.

Which rows: `ErasedKeys`. With the keys in clear (the run that records the request), a file
whose primary-key statistics (min, max of each key column, per row group, in its footer)
exclude every key is skipped without reading past its footer; with keyed tags only (the
request as stored, fieldcrypt.policy.erasure), each row's key is tagged and looked up.

A file where no matched row holds a cell to erase is not rewritten, so a re-run is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fieldcrypt.engine.rewrite import Commit, FileJob, Output, lake_commit, rewrite_file
from fieldcrypt.errors import VerificationError
from fieldcrypt.format.columns import identical, raw_path, replace_path, row_key_bytes
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.lake.parquet_io import open_parquet, row_group
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.erasure import ErasureKey
from fieldcrypt.policy.ledger import LedgerStep
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec
from fieldcrypt.reads.dispatch import Segment, key_statistics


class ErasedKeys(Protocol):
    """The primary keys being erased, as a test on rows and on a file's footer."""

    def rows(self, keys: pa.Array) -> pa.BooleanArray:
        """Which of `keys` (canonical row keys, docs/FORMAT.md section 3) are erased (null: not)."""
        ...

    def may_hold(self, parquet: pq.ParquetFile) -> bool:
        """False only when the file's footer proves no erased key is in it."""
        ...


class ClearKeys:
    """Keys in clear, held in memory for one run: matched by value, files skipped by key statistics.

    `components`: per primary-key column, the keys' values typed like the column (one array per
    column, the keys in the same order); `canonical`: their canonical row keys.
    """

    def __init__(self, canonical: pa.Array, components: Mapping[str, pa.Array], dataset: str) -> None:
        self._canonical = pc.unique(canonical.cast(pa.binary()))
        self._segments = {
            column: Segment(values, values.type, dataset) for column, values in components.items() if len(values)
        }

    def __repr__(self) -> str:
        return f"ClearKeys({len(self._canonical)} keys)"

    def rows(self, keys: pa.Array) -> pa.BooleanArray:
        found: pa.BooleanArray = pc.fill_null(pc.is_in(keys.cast(pa.binary()), value_set=self._canonical), False)
        return found

    def may_hold(self, parquet: pq.ParquetFile) -> bool:
        if not self._segments:
            return True
        stats = {column: key_statistics(parquet, column) for column in self._segments}
        for index in range(parquet.num_row_groups):
            if parquet.metadata.row_group(index).num_rows == 0:
                continue
            # A row group may hold a key only if every key column's range holds some key's component.
            if all(_overlaps(segment, stats[column](index)) for column, segment in self._segments.items()):
                return True
        return False


def _overlaps(segment: Segment, bounds: tuple[object, object] | None) -> bool:
    """Whether the statistics (min, max) may hold a key; True without statistics, or with statistics of
    another type than the keys (a partition where the key column was written as text, say)."""
    if bounds is None:
        return True
    try:
        return segment.overlaps(*bounds)
    except TypeError:
        return True


class TaggedKeys:
    """Keys known only by their keyed tags (fieldcrypt.policy.erasure): each row's key is tagged and looked up."""

    def __init__(self, tags: frozenset[bytes] | set[bytes], key: ErasureKey) -> None:
        self._tags = frozenset(tags)
        self._key = key

    def __repr__(self) -> str:
        return f"TaggedKeys({len(self._tags)} tags)"

    def rows(self, keys: pa.Array) -> pa.BooleanArray:
        tag, tags = self._key.tag, self._tags
        return pa.array([key is not None and tag(key) in tags for key in keys.cast(pa.binary()).to_pylist()])

    def may_hold(self, parquet: pq.ParquetFile) -> bool:
        return bool(self._tags)


@dataclass
class EraseReport:
    """Counts of one file or partition; never a key or a value."""

    path: str
    files: int = 1
    rows: int = 0
    rows_matched: int = 0
    cells_erased: dict[str, int] = field(default_factory=dict)  # attribute -> cells set to null
    files_rewritten: int = 0
    files_skipped_by_statistics: int = 0
    seconds: float = 0.0
    summary_files_removed: list[str] = field(default_factory=list)
    rewrite_path: str = ""  # "splice" or "full" (fieldcrypt.engine.rewrite); a total "+"-joins its files'

    @property
    def cells(self) -> int:
        return sum(self.cells_erased.values())

    @classmethod
    def total(cls, path: str, reports: Sequence[EraseReport]) -> EraseReport:
        out = cls(path, files=0)
        for report in reports:
            out.files += report.files
            out.rows += report.rows
            out.rows_matched += report.rows_matched
            out.files_rewritten += report.files_rewritten
            out.files_skipped_by_statistics += report.files_skipped_by_statistics
            out.seconds += report.seconds
            out.summary_files_removed = sorted({*out.summary_files_removed, *report.summary_files_removed})
            out.rewrite_path = "+".join(sorted({*out.rewrite_path.split("+"), *report.rewrite_path.split("+")} - {""}))
            for name, count in report.cells_erased.items():
                out.cells_erased[name] = out.cells_erased.get(name, 0) + count
        return out


def erase_file(
    store: LakeStore,
    rel: str,
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    erased: ErasedKeys,
    cache: DataKeyCache,
    *,
    dataset_root: str,
    partition: str | None = None,
    ledger: LedgerStep | None = None,
    requests: Sequence[str] = (),
    commit: Commit = lake_commit,
) -> EraseReport:
    """Null every cell of `attributes` on the rows of `rel` whose key is `erased`; verify, then replace atomically.

    `attributes`: every enabled attribute of the dataset (an attribute whose column the file lacks
    has nothing here). `requests`: the erasure request ids, for the audit log. `commit`: how the
    verified file replaces `rel` (a plain lake's compare-and-swap; a table format plugs its own commit
    in here, fieldcrypt.engine.rewrite.Commit).
    """
    started = time.perf_counter()
    where = store.display(rel)
    report = EraseReport(where)
    original_version = store.version(rel)
    with open_parquet(store, rel) as parquet:
        if not erased.may_hold(parquet):  # the footer only
            report.rows = parquet.metadata.num_rows
            report.files_skipped_by_statistics = 1
            report.seconds = time.perf_counter() - started
            return report
        schema = parquet.schema_arrow
        targets = _Targets(schema, dataset, attributes)
        pending = _scan(parquet, where, dataset, targets, erased, report)
    if not pending:
        report.seconds = time.perf_counter() - started
        return report

    # The file's protection metadata describes the attributes whose protection columns it holds, as before.
    job = FileJob(store, rel, dataset, targets.protected, cache, dataset_root, partition, "erase", "erased", ledger)
    needed = targets.changed | set(dataset.primary_key)

    def write(source: pq.ParquetFile, out: Output) -> list[pa.BooleanArray]:
        report.cells_erased = {}  # may run twice (fieldcrypt.engine.rewrite.Output)
        matched_groups = []
        read = out.columns(needed, source)
        with out.writer(source, source.schema_arrow, targets.changed) as writer:
            for index in range(source.num_row_groups):
                batch = row_group(source, index, where, read)
                matched = erased.rows(row_key_bytes(batch, dataset.primary_key, f"{where} row group {index}"))
                for name, cells in targets.cells(batch, matched).items():
                    report.cells_erased[name] = report.cells_erased.get(name, 0) + cells
                writer.write_batch(targets.erased(batch, matched))
                matched_groups.append(matched)
        return matched_groups

    def verify(source: pq.ParquetFile, written: pq.ParquetFile, out: Output, matched: list[pa.BooleanArray]) -> None:
        if written.metadata.num_rows != source.metadata.num_rows or written.num_row_groups != source.num_row_groups:
            raise VerificationError(f"{where}: the erased file's rows or row groups differ from the original's")
        if not written.schema_arrow.equals(source.schema_arrow, check_metadata=False):
            raise VerificationError(f"{where}: the erased file's schema differs from the original's")
        read = out.columns(needed, source)  # None: every column (full path); else the splice proved the rest
        for index in range(source.num_row_groups):
            at = f"{where} row group {index}"
            before, after = row_group(source, index, where, read), row_group(written, index, where, read)
            rows = erased.rows(row_key_bytes(after, dataset.primary_key, at))
            if not rows.equals(matched[index]):
                raise VerificationError(f"{at}: the erased file's primary keys differ from the original's")
            left = targets.cells(after, rows)
            if any(left.values()):
                raise VerificationError(f"{at}: {sum(left.values())} cells of erased rows are still there")
            expected = targets.erased(before, rows)
            for name in expected.schema.names:
                if not identical(after.column(name), expected.column(name)):
                    raise VerificationError(f"{at}: column {name} differs from the original beyond the erased rows")

    _, (intent, report.summary_files_removed), report.rewrite_path = rewrite_file(
        job, original_version, write, verify, commit=commit
    )
    if cache.audit is not None:
        cache.audit.record(
            "erase",
            dataset=dataset.name,
            partition=partition,
            cells=report.cells,
            intent=intent,
            detail=f"{where}: {report.rows_matched} rows of erasure request {', '.join(requests) or '-'}",
        )
    report.files_rewritten = 1
    report.seconds = time.perf_counter() - started
    return report


class _Targets:
    """The cells erasure nulls in one file: each attribute's stored value and protection columns it holds."""

    def __init__(self, schema: pa.Schema, dataset: DatasetSpec, attributes: Sequence[AttributePolicy]) -> None:
        names = set(schema.names)
        self.attributes = [a for a in attributes if a.column in names]
        self.protected = [a for a in attributes if a.ciphertext_column in names]
        self.columns = {
            a.name: [c for c in (a.ciphertext_column, a.wrapped_key_column, a.blind_index_column) if c and c in names]
            for a in self.attributes
        }
        self.changed = {a.column for a in self.attributes} | {c for cs in self.columns.values() for c in cs}

    def cells(self, batch: pa.RecordBatch, matched: pa.BooleanArray) -> dict[str, int]:
        """Per attribute, the non-null cells (value and protection columns) on the matched rows."""
        counts = {}
        for attribute in self.attributes:
            arrays = [raw_path(batch, attribute.path), *(batch.column(c) for c in self.columns[attribute.name])]
            kept = [pc.filter(array, matched) for array in arrays]
            counts[attribute.name] = sum(len(cells) - cells.null_count for cells in kept)
        return counts

    def erased(self, batch: pa.RecordBatch, matched: pa.BooleanArray) -> pa.RecordBatch:
        """`batch` with every target cell of the matched rows null (the other rows as they are)."""
        if not matched.true_count:
            return batch
        for attribute in self.attributes:
            values = raw_path(batch, attribute.path)
            batch = replace_path(batch, attribute.path, pc.if_else(matched, pa.scalar(None, values.type), values))
            for column in self.columns[attribute.name]:
                at = batch.schema.get_field_index(column)
                batch = batch.set_column(at, batch.schema.field(at), _nulled(batch.column(at), matched))
        return batch


def _nulled(column: pa.Array, matched: pa.BooleanArray) -> pa.Array:
    if pa.types.is_dictionary(column.type):  # re-encoded: the erased rows' entries leave the dictionary
        decoded = column.dictionary_decode()
        nulled = pc.if_else(matched, pa.scalar(None, decoded.type), decoded)
        return nulled.dictionary_encode().cast(column.type)
    return pc.if_else(matched, pa.scalar(None, column.type), column)


def _scan(
    parquet: pq.ParquetFile,
    where: str,
    dataset: DatasetSpec,
    targets: _Targets,
    erased: ErasedKeys,
    report: EraseReport,
) -> bool:
    """Count the rows matched; True when any of them holds a cell to erase (reads the involved columns)."""
    wanted = targets.changed | set(dataset.primary_key)
    columns = [name for name in parquet.schema_arrow.names if name in wanted]
    pending = False
    for index in range(parquet.num_row_groups):
        batch = row_group(parquet, index, where, columns)
        report.rows += batch.num_rows
        matched = erased.rows(row_key_bytes(batch, dataset.primary_key, f"{where} row group {index}"))
        report.rows_matched += matched.true_count
        if matched.true_count and any(targets.cells(batch, matched).values()):
            pending = True
    return pending
