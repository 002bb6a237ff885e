"""Splice a Parquet file: replace and add top-level columns, copying every other column chunk as bytes.

The output holds the source's top-level columns in their order, each one whose name the replacement also
has taken from the replacement, then the replacement's other columns in its order. Per row group, each
output column's chunks are copied as bytes ([dictionary page, last data page], as a reader reads them) from
the file they come from, in that order; after all row groups come the copied bloom filters, the copied
column indexes and the offset indexes (re-encoded: their page offsets are absolute), then the rebuilt
footer. Every offset in a copied chunk's metadata moves by the distance its bytes moved.

Kept from the source: the root schema element, num_rows, created_by (the copied pages keep their writer's
quirks, which readers key on created_by), the key-value metadata unless the caller replaces it, and row
group sorting columns up to the first column that was replaced. Column orders are written when both files
have them (a file without them says its statistics' order is undefined; claiming an order for the other
file's chunks would be a lie).
"""

from __future__ import annotations

import copy
import hashlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from fieldcrypt.errors import InputError, SpliceUnsupported
from fieldcrypt.format.splice._thrift import decode, encode, parquet
from fieldcrypt.format.splice.footer import MAGIC, ChunkRanges, ParquetLayout, Source, TopColumn, pages_start

_COPY_BLOCK = 8 << 20  # bytes read and written at a time, so a large chunk is not held in memory whole


class BinarySink(Protocol):
    def write(self, data: bytes | memoryview, /) -> int | None: ...


@dataclass(frozen=True)
class CopiedRange:
    """Bytes copied verbatim: `part` ("pages", "column index" or "bloom filter") of leaf `column` in
    `row_group`, from [source) of the file it came from to [destination) of the spliced file."""

    part: str
    column: str
    row_group: int
    source: tuple[int, int]
    destination: tuple[int, int]


@dataclass(frozen=True)
class SpliceReport:
    """What the splice wrote: which top-level columns were kept, replaced and added, and every byte range
    copied from the source (`copied`) and from the replacement (`spliced`), for `prove_copied`, with the
    SHA-256 of the bytes read from their origin while copying them (`copied_sha256`, `spliced_sha256`, in
    the same order), so the proof need not read the origin again."""

    kept: tuple[str, ...]
    replaced: tuple[str, ...]
    added: tuple[str, ...]
    row_groups: int
    copied: tuple[CopiedRange, ...]
    spliced: tuple[CopiedRange, ...]
    bytes_written: int
    copied_sha256: tuple[bytes, ...] = ()
    spliced_sha256: tuple[bytes, ...] = ()
    # The source's footer as the splice parsed it (its file closed since: ParquetLayout.over reopens it), so
    # the proof need not parse it again.
    source_layout: ParquetLayout | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class _Copy:
    origin: ParquetLayout
    start: int
    end: int
    # Fed the bytes of [start, end) as they are read for the copy (the same bytes that are written); None
    # where no digest was asked for.
    digest: Any = field(default_factory=hashlib.sha256, compare=False)


def splice_columns(
    source: Source,
    replacement: Source,
    sink: BinarySink,
    *,
    key_value_metadata: dict[bytes, bytes] | None = None,
    source_name: str = "source",
    replacement_name: str = "replacement",
    digest_spliced: bool = True,
    digest_copied: bool = True,
) -> SpliceReport:
    """Write to `sink` the source with the replacement's top-level columns substituted or appended.

    `replacement` is a Parquet file holding only the changed and new top-level columns, written with
    exactly the source's row-group boundaries. `key_value_metadata`, when given, replaces the footer's
    key-value metadata (the caller owns `ARROW:schema`: see `footer_metadata`). Everything is read and
    checked before the first byte is written: what cannot be spliced raises SpliceUnsupported (take the
    full rewrite instead), a corrupt file raises InputError. `digest_spliced=False`: the replacement's
    copies are not hashed (`spliced_sha256` is empty), for a caller that decodes and checks them instead;
    `digest_copied=False`: nor are the source's (`copied_sha256` is empty), for a caller that proves them
    by comparing the bytes of both files (prove_copied without digests: a local file, read again cheaply).
    """
    src = ParquetLayout(source, source_name)
    rep = ParquetLayout(replacement, replacement_name)
    _check_row_groups_line_up(src, rep)
    replacing = {column.name: column for column in rep.columns}
    output: list[tuple[ParquetLayout, TopColumn]] = [
        (rep, replacing[column.name]) if column.name in replacing else (src, column) for column in src.columns
    ]
    source_names = {column.name for column in src.columns}
    output += [(rep, column) for column in rep.columns if column.name not in source_names]

    plan = _Plan(src, rep, output, digest_replacement=digest_spliced, digest_source=digest_copied)
    footer = encode(plan.file_metadata(key_value_metadata))
    written = plan.write(sink, footer)
    return SpliceReport(
        kept=tuple(column.label for column in src.columns if column.name not in replacing),
        replaced=tuple(column.label for column in src.columns if column.name in replacing),
        added=tuple(column.label for column in rep.columns if column.name not in source_names),
        row_groups=len(src.metadata.row_groups),
        copied=tuple(plan.copied[src]),
        spliced=tuple(plan.copied[rep]),
        bytes_written=written,
        copied_sha256=tuple(piece.digest.digest() for piece in plan.copies[src]) if digest_copied else (),
        spliced_sha256=tuple(piece.digest.digest() for piece in plan.copies[rep]) if digest_spliced else (),
        source_layout=src,
    )


def _check_row_groups_line_up(src: ParquetLayout, rep: ParquetLayout) -> None:
    src_rows = [row_group.num_rows for row_group in src.metadata.row_groups]
    rep_rows = [row_group.num_rows for row_group in rep.metadata.row_groups]
    if len(src_rows) != len(rep_rows):
        raise SpliceUnsupported(
            f"{rep.name} has {len(rep_rows)} row groups where {src.name} has {len(src_rows)}; chunks cannot be spliced"
        )
    for index, (expected, got) in enumerate(zip(src_rows, rep_rows, strict=True)):
        if expected != got:
            raise SpliceUnsupported(
                f"{rep.name} row group {index} holds {got} rows where {src.name}'s holds {expected}; "
                "chunks cannot be spliced"
            )
    if src.metadata.num_rows != rep.metadata.num_rows:
        raise SpliceUnsupported(
            f"{rep.name} says {rep.metadata.num_rows} rows where {src.name} says {src.metadata.num_rows}"
        )


class _Plan:
    """Every output offset, computed from the two footers before anything is written."""

    def __init__(
        self,
        src: ParquetLayout,
        rep: ParquetLayout,
        output: list[tuple[ParquetLayout, TopColumn]],
        *,
        digest_replacement: bool = True,
        digest_source: bool = True,
    ) -> None:
        self.src, self.rep, self.output = src, rep, output
        self.digest_replacement = digest_replacement
        self.digest_source = digest_source
        self.copied: dict[ParquetLayout, list[CopiedRange]] = {src: [], rep: []}
        self.copies: dict[ParquetLayout, list[_Copy]] = {src: [], rep: []}  # aligned with `copied`
        self.pieces: list[_Copy | bytes] = []
        self.position = len(MAGIC)
        self.row_groups = self._lay_out()

    def _lay_out(self) -> list[Any]:
        # (origin, ranges, new chunk, row group, leaf path) of every output chunk, for the index pass after the pages
        placed: list[tuple[ParquetLayout, ChunkRanges, Any, int, str]] = []
        row_groups = []
        for index, _ in enumerate(self.src.metadata.row_groups):
            group_start, chunks = self.position, []
            for layout, column in self.output:
                for leaf in range(column.first_leaf, column.first_leaf + column.leaves):
                    old = layout.metadata.row_groups[index].columns[leaf]
                    ranges = layout.ranges[index][leaf]
                    label = ".".join(part.decode("utf-8", "backslashreplace") for part in old.meta_data.path_in_schema)
                    new = self._place_pages(layout, index, label, old, ranges.pages)
                    placed.append((layout, ranges, new, index, label))
                    chunks.append(new)
            row_groups.append(self._row_group(index, group_start, chunks))
        for layout, ranges, new, index, label in placed:
            if ranges.bloom_filter is not None:
                new.meta_data.bloom_filter_offset = self._copy(
                    layout, "bloom filter", label, index, ranges.bloom_filter
                )
        for layout, ranges, new, index, label in placed:
            if ranges.column_index is not None:
                new.column_index_offset = self._copy(layout, "column index", label, index, ranges.column_index)
        for layout, ranges, new, index, label in placed:
            if ranges.offset_index is not None:
                shifted = encode(self._shifted_offset_index(layout, index, label, ranges, new))
                new.offset_index_offset, new.offset_index_length = self.position, len(shifted)
                self.pieces.append(shifted)
                self.position += len(shifted)
        return row_groups

    def _copy(self, layout: ParquetLayout, part: str, label: str, index: int, span: tuple[int, int]) -> int:
        start = self.position
        hashed = self.digest_source if layout is self.src else self.digest_replacement
        piece = _Copy(layout, span[0], span[1]) if hashed else _Copy(layout, span[0], span[1], None)
        self.pieces.append(piece)
        self.copies[layout].append(piece)
        self.position += span[1] - span[0]
        self.copied[layout].append(CopiedRange(part, label, index, span, (start, self.position)))
        return start

    def _place_pages(self, layout: ParquetLayout, index: int, label: str, old: Any, pages: tuple[int, int]) -> Any:
        new = copy.copy(old)
        meta = new.meta_data = copy.copy(old.meta_data)
        if pages == (0, 0):  # no page at all (see ParquetLayout): nothing to copy, no offset to move
            return new
        delta = self._copy(layout, "pages", label, index, pages) - pages[0]
        if meta.data_page_offset:  # 0: no data page (see pages_start)
            meta.data_page_offset += delta
        if meta.dictionary_page_offset:
            meta.dictionary_page_offset += delta
        if meta.index_page_offset:
            meta.index_page_offset += delta
        # Deprecated and read by no current reader; Arrow writes 0, parquet-java the first data page.
        if old.file_offset:
            in_chunk = pages[0] <= old.file_offset <= pages[1]
            new.file_offset = old.file_offset + delta if in_chunk else meta.data_page_offset
        return new

    def _shifted_offset_index(
        self, layout: ParquetLayout, index: int, label: str, ranges: ChunkRanges, new: Any
    ) -> Any:
        assert ranges.offset_index is not None
        where = f"{layout.name} row group {index} column {label} offset index"
        offset_index, _ = decode(parquet.OffsetIndex, layout.file.read(*ranges.offset_index), where)
        if offset_index.page_locations is None:
            raise InputError(f"{where}: corrupt Parquet: no page locations")
        start, end = ranges.pages
        delta = pages_start(new.meta_data) - start
        shifted = copy.copy(offset_index)
        shifted.page_locations = []
        for location in offset_index.page_locations:
            if location.offset is None or location.compressed_page_size is None or location.first_row_index is None:
                raise InputError(f"{where}: corrupt Parquet: a page location misses a field")
            if not (start <= location.offset and location.offset + location.compressed_page_size <= end):
                raise InputError(
                    f"{where}: corrupt Parquet: page at {location.offset} lies outside its chunk [{start}, {end})"
                )
            moved = copy.copy(location)
            moved.offset += delta
            shifted.page_locations.append(moved)
        return shifted

    def _row_group(self, index: int, group_start: int, chunks: list[Any]) -> Any:
        old = self.src.metadata.row_groups[index]
        new = copy.copy(old)
        new.columns = chunks
        new.total_byte_size = sum(chunk.meta_data.total_uncompressed_size for chunk in chunks)
        new.total_compressed_size = sum(chunk.meta_data.total_compressed_size for chunk in chunks)
        new.file_offset = group_start  # where its first page (of any chunk that has pages) starts
        new.sorting_columns = self._sorting_columns(old.sorting_columns)
        return new

    def _sorting_columns(self, sorting: list[Any] | None) -> list[Any] | None:
        if sorting is None:
            return None
        leaf_moves: dict[int, int] = {}
        out_leaf = 0
        for layout, column in self.output:
            if layout is self.src:
                leaf_moves.update({column.first_leaf + i: out_leaf + i for i in range(column.leaves)})
            out_leaf += column.leaves
        kept = []
        # Sorted by (a, b, c) still implies sorted by (a, b): stop at the first column that was replaced.
        for entry in sorting:
            if entry.column_idx not in leaf_moves:
                break
            moved = copy.copy(entry)
            moved.column_idx = leaf_moves[entry.column_idx]
            kept.append(moved)
        return kept

    def file_metadata(self, key_value_metadata: dict[bytes, bytes] | None) -> Any:
        src, rep = self.src.metadata, self.rep.metadata
        root = copy.copy(src.schema[0])
        root.num_children = len(self.output)
        schema = [root] + [element for _, column in self.output for element in column.elements]
        metadata = copy.copy(src)
        metadata.version = max(src.version, rep.version)
        metadata.schema = schema
        metadata.row_groups = self.row_groups
        metadata.column_orders = self._column_orders()
        if key_value_metadata is not None:
            metadata.key_value_metadata = [
                parquet.KeyValue(key=key, value=value) for key, value in key_value_metadata.items()
            ] or None
        return metadata

    def _column_orders(self) -> list[Any] | None:
        orders = {}
        for layout in (self.src, self.rep):
            found = layout.metadata.column_orders
            if found is None:
                return None
            if len(found) != layout.leaf_count:
                raise InputError(
                    f"{layout.name}: corrupt Parquet: {len(found)} column orders for {layout.leaf_count} leaf columns"
                )
            orders[layout] = found
        return [
            order
            for layout, column in self.output
            for order in orders[layout][column.first_leaf : column.first_leaf + column.leaves]
        ]

    def write(self, sink: BinarySink, footer: bytes) -> int:
        """Write the file; the copies' digests are fed on one helper thread (hashlib releases the GIL) while
        this one writes, at most two blocks behind; every digest is complete when this returns."""
        written = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fieldcrypt-splice-digest") as hasher:
            hashing: deque[Future[None]] = deque()
            try:
                for data, feeds in self._output_bytes(footer):
                    if feeds:
                        while len(hashing) >= 2:
                            hashing.popleft().result()
                        hashing.append(hasher.submit(_feed, feeds))
                    count = sink.write(data)
                    if count is not None and count != len(data):
                        raise InputError(f"short write to the splice output: {count} of {len(data)} bytes")
                    written += len(data)
                while hashing:
                    hashing.popleft().result()
            finally:
                for pending in hashing:
                    pending.cancel()
        if written != self.position + len(footer) + 8:
            raise AssertionError("splice wrote a different number of bytes than it planned")
        return written

    def _output_bytes(self, footer: bytes) -> Iterator[tuple[bytes | memoryview, list[_Feed]]]:
        yield MAGIC, []
        pending: list[_Copy] = []  # adjacent in both files: read as one run
        for piece in self.pieces:
            if (
                isinstance(piece, _Copy)
                and pending
                and pending[-1].origin is piece.origin
                and pending[-1].end == piece.start
            ):
                pending.append(piece)
                continue
            if pending:
                yield from _blocks(pending)
                pending = []
            if isinstance(piece, _Copy):
                pending = [piece]
            else:
                yield piece, []
        if pending:
            yield from _blocks(pending)
        yield footer, []
        yield len(footer).to_bytes(4, "little"), []
        yield MAGIC, []


_Feed = tuple[Any, memoryview]  # a copy's digest and its share of a block


def _feed(feeds: list[_Feed]) -> None:
    for digest, share in feeds:
        digest.update(share)


def _blocks(run: list[_Copy]) -> Iterator[tuple[bytes | memoryview, list[_Feed]]]:
    """The bytes of a run of adjacent copies, a block at a time, with each copy's digest and its share of it
    (in order: fed in order, every digest gets exactly the bytes written)."""
    origin, start, end = run[0].origin, run[0].start, run[-1].end
    pieces = iter(run)
    piece = next(pieces)
    for block_start in range(start, end, _COPY_BLOCK):
        block_end = min(block_start + _COPY_BLOCK, end)
        data = origin.file.read(block_start, block_end)
        view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        feeds: list[_Feed] = []
        position = block_start
        while position < block_end:
            while piece.end <= position:  # empty or finished copies
                piece = next(pieces)
            upto = min(piece.end, block_end)
            if piece.digest is not None:
                feeds.append((piece.digest, view[position - block_start : upto - block_start]))
            position = upto
        yield data, feeds
