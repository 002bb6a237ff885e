"""Dispatch reads: the real values of a segment's rows, in memory, reading only what is needed.

A segment is a set of primary-key values (possibly millions). It is sorted once; each
row group whose primary-key statistics (min, max) hold no segment key is skipped without
being read, and the row groups that are read are projected to the key, the chosen
attributes and their protection columns. Only the matching rows are decrypted. Nothing
here logs, caches or writes plaintext: `Workspace.dispatch` yields batches and forgets them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fieldcrypt.errors import InputError
from fieldcrypt.lake.parquet_io import row_group


@dataclass
class DispatchReport:
    """What one dispatch read: counts only, never a value."""

    dataset: str
    partition: str | None
    segment_keys: int = 0
    rows: int = 0  # segment rows found and sent
    cells: dict[str, int] = field(default_factory=dict)  # attribute -> protected cells decrypted
    files: int = 0
    row_groups_read: int = 0
    row_groups_skipped: int = 0  # pruned by primary-key statistics, never read

    @property
    def missing(self) -> int:
        """Segment keys with no row in the partition (the primary key is unique per partition)."""
        return max(self.segment_keys - self.rows, 0)


class Segment:
    """A set of single-column primary-key values, sorted once, typed like the key column."""

    def __init__(self, values: pa.Array | Iterable[Any], key_type: pa.DataType, dataset: str) -> None:
        array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(list(values))
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if array.null_count:
            raise InputError(f"segment for {dataset} holds {array.null_count} null primary keys")
        try:
            array = array.cast(key_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise InputError(
                f"segment for {dataset} holds {array.type} values, which are not {key_type} primary keys"
            ) from None
        self.keys: pa.Array = pc.unique(array).sort()
        self._numeric = pa.types.is_integer(key_type)
        if self._numeric:
            self._sorted: Any = self.keys.to_numpy(zero_copy_only=False)
        else:
            self._sorted = self.keys.to_pylist()

    def __len__(self) -> int:
        return len(self.keys)

    def overlaps(self, low: Any, high: Any) -> bool:
        """Whether some segment key lies in [low, high] (a row group's key statistics)."""
        if self._numeric:
            start = int(np.searchsorted(self._sorted, low, side="left"))
            return start < len(self._sorted) and bool(self._sorted[start] <= high)
        start = bisect.bisect_left(self._sorted, low)
        return start < len(self._sorted) and bool(self._sorted[start] <= high)

    def contains(self, keys: pa.Array) -> pa.BooleanArray:
        """Which of `keys` (the key column of a row group) are in the segment."""
        if self._numeric and len(self._sorted):
            values = keys.to_numpy(zero_copy_only=False)
            at = np.minimum(np.searchsorted(self._sorted, values), len(self._sorted) - 1)
            found = self._sorted[at] == values
            if keys.null_count:
                found &= ~np.asarray(keys.is_null().to_numpy(zero_copy_only=False))
            return pa.array(found, pa.bool_())
        result: pa.BooleanArray = pc.fill_null(pc.is_in(keys, value_set=self.keys), False)
        return result


def segment_row_groups(
    parquet: pq.ParquetFile,
    where: str,
    columns: list[str],
    key_column: str,
    segment: Segment,
    report: DispatchReport,
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(row group index, its rows in the segment) for each row group holding some; the others are not read."""
    overlapping = segment_row_group_indexes(parquet, key_column, segment)
    report.row_groups_skipped += parquet.num_row_groups - len(overlapping)
    for index in overlapping:
        report.row_groups_read += 1
        batch = row_group(parquet, index, where, columns)
        batch = batch.filter(segment.contains(batch.column(key_column)))
        if batch.num_rows:
            yield index, batch


def segment_row_group_indexes(parquet: pq.ParquetFile, key_column: str, segment: Segment) -> list[int]:
    """The row groups whose primary-key statistics (min, max) may hold a segment key (all, without statistics)."""
    if len(segment) == 0:
        return []
    stats = key_statistics(parquet, key_column)
    return [
        index
        for index in range(parquet.num_row_groups)
        if (bounds := stats(index)) is None or segment.overlaps(*bounds)
    ]


def key_statistics(parquet: pq.ParquetFile, column: str) -> Callable[[int], tuple[Any, Any] | None]:
    """(min, max) of a top-level column in each row group, or None where the file has no usable statistics."""
    metadata = parquet.metadata
    leaf = next((i for i in range(metadata.num_columns) if metadata.schema.column(i).path == column), None)

    def stats(row_group: int) -> tuple[Any, Any] | None:
        if leaf is None:
            return None
        statistics = metadata.row_group(row_group).column(leaf).statistics
        if statistics is None or not statistics.has_min_max:
            return None
        return statistics.min, statistics.max

    return stats


class DispatchReader(Protocol):
    """What `dispatch_segment` reads a segment through: `Workspace.dispatch` (named here, not imported: the
    workspace imports this module)."""

    def dispatch(
        self,
        dataset: str,
        segment: pa.Array | Iterable[object],
        attributes: Sequence[str],
        *,
        reason: str,
        partition: str | None = None,
        report: DispatchReport | None = None,
    ) -> Iterator[pa.RecordBatch]: ...


def dispatch_segment(
    workspace: DispatchReader,
    dataset: str,
    segment: pa.Array | Iterable[Any],
    attributes: Sequence[str],
    send: Callable[[pa.RecordBatch], None],
    *,
    reason: str,
    partition: str | None = None,
) -> DispatchReport:
    """What a campaign asset calls: `send(batch)` for each batch of (key, real values); the counts.

    `send` must deliver and forget: the batch is the only copy of the plaintext and is
    dropped as soon as `send` returns.
    """
    report = DispatchReport(dataset, partition)
    for batch in workspace.dispatch(dataset, segment, attributes, reason=reason, partition=partition, report=report):
        send(batch)
    return report
