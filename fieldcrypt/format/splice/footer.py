"""A Parquet file opened for splicing: its footer decoded, its schema cut into top-level columns, and every
byte range the splice copies checked against the file's bounds.

File layout (the Parquet spec): `PAR1` | column chunks | (bloom filters, page indexes) | footer (compact
Thrift FileMetaData) | footer length (u32 little-endian) | `PAR1`. An encrypted footer ends in `PARE`.
"""

from __future__ import annotations

import copy
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, TypeAlias

import pyarrow as pa

from fieldcrypt.errors import InputError, SpliceUnsupported
from fieldcrypt.format.splice._thrift import decode, parquet

MAGIC = b"PAR1"
ENCRYPTED_MAGIC = b"PARE"
_TAIL = 8  # footer length + magic
# The largest Thrift BloomFilterHeader read when a writer did not record bloom_filter_length; parquet-java and
# Arrow read the header from a window of this size too.
_BLOOM_HEADER_WINDOW = 256
# parquet-mr before 1.2.9 left the dictionary page header out of total_compressed_size (PARQUET-816);
# readers pad the range by guesswork, which cannot be copied exactly.
_PARQUET_816_FIXED = (1, 2, 9)
_PARQUET_MR = re.compile(rb"^parquet-mr version (\d+)\.(\d+)\.(\d+)")

Source: TypeAlias = pa.NativeFile | bytes | bytearray | memoryview | pa.Buffer


# The engine opens a source three times (path choice, splice, proof); its footer bytes are read each time
# and the decoded FileMetaData is reused when they are the same bytes (decoding is a pure function of
# them, and pure-Python Thrift costs tens of milliseconds). Decoded footers are shared: nothing mutates
# a layout's metadata (the splice copies every struct it changes).
_FOOTERS_KEPT = 4
_footers: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
_footers_lock = threading.Lock()


def _decoded_footer(data: bytes, what: str) -> tuple[Any, int]:
    with _footers_lock:
        if data in _footers:
            _footers.move_to_end(data)
            return _footers[data]
    decoded: tuple[Any, int] = decode(parquet.FileMetaData, data, what)
    with _footers_lock:
        _footers[data] = decoded
        while len(_footers) > _FOOTERS_KEPT:
            _footers.popitem(last=False)
    return decoded


class RandomAccess:
    """Reads byte ranges of a file held in memory or open as a random-access pyarrow file."""

    def __init__(self, source: Source, name: str) -> None:
        self.name = name
        if isinstance(source, pa.NativeFile):
            if not source.seekable():
                raise InputError(f"{name}: the splice needs a random-access file, not a stream")
            self._file: pa.NativeFile | None = source
            self._view: memoryview | None = None
            self.size: int = source.size()
        else:
            self._file = None
            self._view = memoryview(source).cast("B")
            self.size = len(self._view)

    def read(self, start: int, end: int) -> bytes | memoryview:
        """Bytes [start, end); callers checked the range against `size`."""
        if not 0 <= start <= end <= self.size:
            raise InputError(
                f"{self.name}: corrupt Parquet: range [{start}, {end}) outside the file's {self.size} bytes"
            )
        if self._view is not None:
            return self._view[start:end]
        assert self._file is not None
        data: bytes = self._file.read_at(end - start, start)
        if len(data) != end - start:
            raise InputError(f"{self.name}: file shorter than it said ({self.size} bytes) while reading")
        return data


@dataclass(frozen=True)
class TopColumn:
    """One top-level column: its schema elements (depth-first) and its leaves' positions among all leaves."""

    name: bytes
    elements: list[Any]
    first_leaf: int
    leaves: int

    @property
    def label(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class ChunkRanges:
    """Where one column chunk's bytes are in its file, each range checked to lie inside the data region."""

    pages: tuple[int, int]  # dictionary and data pages, as a reader reads them (parquet_io.chunk_span)
    column_index: tuple[int, int] | None
    offset_index: tuple[int, int] | None
    bloom_filter: tuple[int, int] | None


class ParquetLayout:
    """A Parquet file's footer and the checked byte ranges of every column chunk."""

    def __init__(self, source: Source, name: str) -> None:
        self.file = RandomAccess(source, name)
        self.name = name
        self.metadata, self.footer_start = self._read_footer()
        self._refuse_what_cannot_be_copied()
        self.columns = self._top_level_columns()
        self.leaf_count = sum(column.leaves for column in self.columns)
        self.ranges = [
            self._row_group_ranges(index, row_group) for index, row_group in enumerate(self.metadata.row_groups)
        ]

    def over(self, source: Source) -> ParquetLayout:
        """This layout (footer and ranges as parsed), reading its bytes through `source`: the same file
        opened again (InputError when its size differs)."""
        file = RandomAccess(source, self.name)
        if file.size != self.file.size:
            raise InputError(f"{self.name}: {file.size} bytes where its footer was read from {self.file.size}")
        reopened = copy.copy(self)
        reopened.file = file
        return reopened

    def _read_footer(self) -> tuple[Any, int]:
        size = self.file.size
        if size < len(MAGIC) + _TAIL:
            raise InputError(f"{self.name}: not a Parquet file ({size} bytes)")
        tail = bytes(self.file.read(size - _TAIL, size))
        if tail[4:] == ENCRYPTED_MAGIC:
            raise SpliceUnsupported(
                f"{self.name}: Parquet Modular Encryption (encrypted footer, PARE) cannot be spliced"
            )
        if tail[4:] != MAGIC or bytes(self.file.read(0, len(MAGIC))) != MAGIC:
            raise InputError(f"{self.name}: not a Parquet file (no PAR1 magic)")
        footer_length = int.from_bytes(tail[:4], "little")
        footer_start = size - _TAIL - footer_length
        if footer_start < len(MAGIC):
            raise InputError(f"{self.name}: corrupt Parquet: footer length {footer_length} exceeds the file")
        metadata, used = _decoded_footer(bytes(self.file.read(footer_start, size - _TAIL)), f"{self.name} footer")
        if metadata.encryption_algorithm is not None or metadata.footer_signing_key_metadata is not None:
            # Checked before the footer's length: a signed plaintext footer is followed by its signature.
            raise SpliceUnsupported(
                f"{self.name}: Parquet Modular Encryption (plaintext footer, encrypted columns) cannot be spliced"
            )
        if used != footer_length:
            # Readers ignore such bytes, so the full rewrite can still read the file; the splice cannot keep them.
            raise SpliceUnsupported(f"{self.name}: footer holds {footer_length - used} bytes after its FileMetaData")
        for required in ("version", "schema", "num_rows", "row_groups"):
            if getattr(metadata, required) is None:
                raise InputError(f"{self.name}: corrupt Parquet: footer has no {required}")
        return metadata, footer_start

    def _refuse_what_cannot_be_copied(self) -> None:
        match = _PARQUET_MR.match(self.metadata.created_by or b"")
        if match and tuple(int(part) for part in match.groups()) < _PARQUET_816_FIXED:
            raise SpliceUnsupported(
                f"{self.name}: written by parquet-mr before 1.2.9, whose chunk sizes leave out the dictionary "
                "page header"
            )

    def _top_level_columns(self) -> list[TopColumn]:
        schema = self.metadata.schema
        if not schema or not schema[0].num_children and len(schema) > 1:
            raise InputError(f"{self.name}: corrupt Parquet: schema has no root")
        root_children = schema[0].num_children or 0
        columns: list[TopColumn] = []
        position, leaf = 1, 0
        for _ in range(root_children):
            start, leaves = position, 0
            pending = 1  # elements of this subtree still to visit; iterative so a deep schema cannot recurse
            while pending:
                if position >= len(schema):
                    raise InputError(f"{self.name}: corrupt Parquet: schema ends inside a column's children")
                element = schema[position]
                if element.name is None:
                    raise InputError(f"{self.name}: corrupt Parquet: schema element {position} has no name")
                children = element.num_children or 0
                if children < 0:
                    raise InputError(f"{self.name}: corrupt Parquet: schema element {position} has {children} children")
                if children == 0:
                    if element.type is None:
                        raise SpliceUnsupported(f"{self.name}: schema element {position} is a group with no children")
                    leaves += 1
                pending += children - 1
                position += 1
            columns.append(TopColumn(schema[start].name, schema[start:position], leaf, leaves))
            leaf += leaves
        if position != len(schema):
            raise InputError(f"{self.name}: corrupt Parquet: {len(schema) - position} schema elements outside the root")
        names = [column.name for column in columns]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            shown = ", ".join(name.decode("utf-8", "backslashreplace") for name in duplicates)
            raise SpliceUnsupported(
                f"{self.name}: top-level column names repeat ({shown}); columns cannot be matched by name"
            )
        return columns

    def _row_group_ranges(self, index: int, row_group: Any) -> list[ChunkRanges]:
        if row_group.columns is None or row_group.num_rows is None or row_group.num_rows < 0:
            raise InputError(f"{self.name}: corrupt Parquet: row group {index} has no columns or row count")
        if len(row_group.columns) != self.leaf_count:
            raise InputError(
                f"{self.name}: corrupt Parquet: row group {index} has {len(row_group.columns)} column chunks "
                f"for {self.leaf_count} leaf columns"
            )
        return [
            self._chunk_ranges(f"row group {index} column {leaf}", chunk)
            for leaf, chunk in enumerate(row_group.columns)
        ]

    def _chunk_ranges(self, where: str, chunk: Any) -> ChunkRanges:
        what = f"{self.name} {where}"
        if chunk.crypto_metadata is not None or chunk.encrypted_column_metadata is not None:
            raise SpliceUnsupported(f"{what}: Parquet Modular Encryption (encrypted column) cannot be spliced")
        if chunk.file_path is not None:
            raise SpliceUnsupported(f"{what}: column chunk stored in another file ({chunk.file_path!r})")
        meta = chunk.meta_data
        if meta is None:
            raise SpliceUnsupported(f"{what}: column chunk without metadata")
        for required in (
            "data_page_offset",
            "total_compressed_size",
            "total_uncompressed_size",
            "num_values",
            "path_in_schema",
        ):
            if getattr(meta, required) is None:
                raise InputError(f"{what}: corrupt Parquet: column metadata has no {required}")
        if meta.data_page_offset == 0 and meta.num_values != 0:
            raise InputError(f"{what}: corrupt Parquet: {meta.num_values} values but no data page offset")
        start = pages_start(meta)
        if start == 0 and meta.total_compressed_size == 0:
            pages = (0, 0)  # a chunk with no page at all (pyarrow, in an empty row group)
        else:
            pages = self._range(what, "pages", start, meta.total_compressed_size)
        for offset_name in ("data_page_offset", "dictionary_page_offset", "index_page_offset"):
            offset = getattr(meta, offset_name)
            if offset and not pages[0] <= offset < max(pages[1], pages[0] + 1):
                problem = f"{offset_name} {offset} lies outside the chunk's pages [{pages[0]}, {pages[1]})"
                if offset_name == "index_page_offset":  # no writer known to us writes index pages
                    raise SpliceUnsupported(f"{what}: {problem}")
                raise InputError(f"{what}: corrupt Parquet: {problem}")
        return ChunkRanges(
            pages=pages,
            column_index=self._index_range(what, "column index", chunk.column_index_offset, chunk.column_index_length),
            offset_index=self._index_range(what, "offset index", chunk.offset_index_offset, chunk.offset_index_length),
            bloom_filter=self._bloom_range(what, meta),
        )

    def _range(self, what: str, part: str, start: int, length: int) -> tuple[int, int]:
        if start < len(MAGIC) or length < 0 or start + length > self.footer_start:
            raise InputError(
                f"{what}: corrupt Parquet: {part} [{start}, {start + length}) outside the data region "
                f"[{len(MAGIC)}, {self.footer_start})"
            )
        return start, start + length

    def _index_range(self, what: str, part: str, offset: int | None, length: int | None) -> tuple[int, int] | None:
        if offset is None and length is None:
            return None
        if offset is None or length is None:
            raise InputError(f"{what}: corrupt Parquet: {part} has an offset or a length but not both")
        return self._range(what, part, offset, length)

    def _bloom_range(self, what: str, meta: Any) -> tuple[int, int] | None:
        offset = meta.bloom_filter_offset
        if offset is None:
            return None
        if meta.bloom_filter_length is not None:
            return self._range(what, "bloom filter", offset, meta.bloom_filter_length)
        # No length recorded (older writers): the header says how many bitset bytes follow it.
        self._range(what, "bloom filter", offset, 1)
        window = self.file.read(offset, min(offset + _BLOOM_HEADER_WINDOW, self.footer_start))
        header, used = decode(parquet.BloomFilterHeader, window, f"{what} bloom filter header")
        if header.numBytes is None or header.numBytes < 0:
            raise InputError(f"{what}: corrupt Parquet: bloom filter header has no valid size")
        return self._range(what, "bloom filter", offset, used + header.numBytes)


def pages_start(meta: Any) -> int:
    """Where a chunk's first page (dictionary or data) starts.

    A dictionary page offset of 0 means none (some old writers). pyarrow writes a chunk of an empty row
    group as a lone dictionary page with data_page_offset 0, so a 0 there means "no data page".
    """
    start: int = meta.data_page_offset
    dictionary: int | None = meta.dictionary_page_offset
    if dictionary and (start == 0 or dictionary < start):
        start = dictionary
    return start
