"""Proof that a spliced file holds its copied column chunks unchanged, so a verifier decodes only the
changed columns: for every copied range, the spliced file's footer places that part of that chunk exactly
there, the chunk's metadata is the origin's but for offsets, its offset index is the origin's moved by the
same distance, and the bytes are identical by SHA-256."""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from fieldcrypt.errors import InputError, VerificationError
from fieldcrypt.format.splice._thrift import decode, encode, parquet
from fieldcrypt.format.splice.footer import ChunkRanges, ParquetLayout, RandomAccess, Source, pages_start
from fieldcrypt.format.splice.splice import CopiedRange

_BLOCK = 8 << 20
_PAGE_OFFSETS = ("data_page_offset", "dictionary_page_offset", "index_page_offset")


def range_digest(file: RandomAccess, start: int, end: int) -> bytes:
    """SHA-256 of bytes [start, end) of `file`, read a block at a time."""
    digest = hashlib.sha256()
    for block in range(start, end, _BLOCK):
        digest.update(file.read(block, min(block + _BLOCK, end)))
    return digest.digest()


def prove_copied(
    origin: ParquetLayout | Source | str | os.PathLike[str],
    destination: Source | str | os.PathLike[str],
    ranges: Iterable[CopiedRange],
    origin_sha256: Sequence[bytes] | None = None,
) -> int:
    """Raise VerificationError unless every range copied from `origin` (a SpliceReport's `copied` for the
    source, `spliced` for the replacement) is where the destination's footer says, described as in the
    origin, and byte-identical; returns the number of bytes proven. Paths are opened and closed here.

    `origin_sha256` (the SpliceReport's `copied_sha256` or `spliced_sha256`): the digests of the bytes the
    splice read from the origin and wrote, so the origin's ranges are not read again; the destination's
    ranges are then read back and hashed. Without them (None or empty: a splice that hashed nothing, of
    local files) both files' ranges are read and compared byte for byte, a block at a time: a memory
    compare costs a fraction of two SHA-256 passes. `origin` may be the layout the splice parsed (SpliceReport's
    `source_layout`, reopened with ParquetLayout.over): its footer is not parsed again."""
    ranges = list(ranges)
    if not origin_sha256:
        origin_sha256 = None
    if origin_sha256 is not None and len(origin_sha256) != len(ranges):
        raise VerificationError(f"{len(origin_sha256)} origin digests for {len(ranges)} copied ranges")
    with _layout(origin, "splice origin") as before, _layout(destination, "spliced file") as after:
        chunks_before, chunks_after = _chunks_by_path(before), _chunks_by_path(after)
        proven = 0
        for position, copied in enumerate(ranges):
            where = f"{copied.part} of {copied.column} row group {copied.row_group}"
            leaf_before = _leaf(chunks_before, copied, where, before.name)
            leaf_after = _leaf(chunks_after, copied, where, after.name)
            ranges_before = before.ranges[copied.row_group][leaf_before]
            ranges_after = after.ranges[copied.row_group][leaf_after]
            if _part(ranges_before, copied.part) != copied.source:
                raise VerificationError(f"{where}: {before.name} holds it at {_part(ranges_before, copied.part)}")
            if _part(ranges_after, copied.part) != copied.destination:
                raise VerificationError(
                    f"{where}: the spliced footer places it at {_part(ranges_after, copied.part)}, "
                    f"not where it was copied to, {copied.destination}"
                )
            if copied.part == "pages":
                chunk_before = before.metadata.row_groups[copied.row_group].columns[leaf_before]
                chunk_after = after.metadata.row_groups[copied.row_group].columns[leaf_after]
                _prove_described_alike(where, chunk_before, chunk_after)
                _prove_offset_index_moved(where, before, after, ranges_before, ranges_after)
            if origin_sha256 is None:
                if not _same_bytes(before.file, copied.source, after.file, copied.destination):
                    raise VerificationError(
                        f"{where}: bytes {copied.destination} of the spliced file differ from bytes {copied.source} "
                        "they were copied from"
                    )
            elif origin_sha256[position] != range_digest(after.file, *copied.destination):
                raise VerificationError(
                    f"{where}: bytes {copied.destination} of the spliced file differ from bytes {copied.source} "
                    "they were copied from (SHA-256)"
                )
            proven += copied.source[1] - copied.source[0]
        return proven


def _same_bytes(
    origin: RandomAccess, source: tuple[int, int], copy: RandomAccess, destination: tuple[int, int]
) -> bool:
    """Bytes [source) of `origin` equal bytes [destination) of `copy`, compared a block at a time."""
    if source[1] - source[0] != destination[1] - destination[0]:
        return False
    for block in range(0, source[1] - source[0], _BLOCK):
        size = min(_BLOCK, source[1] - source[0] - block)
        if origin.read(source[0] + block, source[0] + block + size) != copy.read(
            destination[0] + block, destination[0] + block + size
        ):
            return False
    return True


def _part(ranges: ChunkRanges, part: str) -> tuple[int, int] | None:
    return {"pages": ranges.pages, "bloom filter": ranges.bloom_filter, "column index": ranges.column_index}[part]


def _chunks_by_path(layout: ParquetLayout) -> dict[tuple[int, str], int | None]:
    """(row group, leaf path) -> leaf position; None where a path repeats (then it cannot be proven by path)."""
    found: dict[tuple[int, str], int | None] = {}
    for group, row_group in enumerate(layout.metadata.row_groups):
        for leaf, chunk in enumerate(row_group.columns):
            key = (group, ".".join(part.decode("utf-8", "backslashreplace") for part in chunk.meta_data.path_in_schema))
            found[key] = None if key in found else leaf
    return found


def _leaf(chunks: dict[tuple[int, str], int | None], copied: CopiedRange, where: str, name: str) -> int:
    key = (copied.row_group, copied.column)
    if key not in chunks:
        raise VerificationError(f"{where}: {name} has no such column chunk")
    leaf = chunks[key]
    if leaf is None:
        raise VerificationError(f"{where}: {name} has more than one chunk at that path")
    return leaf


def _prove_described_alike(where: str, before: Any, after: Any) -> None:
    """The two chunks' metadata, offsets aside, encode to the same bytes; page offsets sit at the same
    distance from the start of their pages."""
    start_before, start_after = pages_start(before.meta_data), pages_start(after.meta_data)
    for name in _PAGE_OFFSETS:
        offset_before, offset_after = getattr(before.meta_data, name), getattr(after.meta_data, name)
        moved = offset_before - start_before + start_after if offset_before else offset_before
        if offset_after != moved:
            raise VerificationError(f"{where}: {name} {offset_after} where the copy puts that page at {moved}")
    stripped_before, stripped_after = _without_offsets(before), _without_offsets(after)
    # Equal structures encode alike (one encoder, one IDL); unequal ones are compared as their encodings (a
    # NaN in a statistic is unequal to itself, yet encodes to the same bytes).
    if stripped_before != stripped_after and encode(stripped_before) != encode(stripped_after):
        raise VerificationError(f"{where}: the spliced footer describes the chunk otherwise than its origin")


def _without_offsets(chunk: Any) -> Any:
    stripped = copy.copy(chunk)
    stripped.meta_data = copy.copy(chunk.meta_data)
    for name in (*_PAGE_OFFSETS, "bloom_filter_offset"):
        setattr(stripped.meta_data, name, None)
    for name in ("file_offset", "column_index_offset", "offset_index_offset", "offset_index_length"):
        setattr(stripped, name, None)
    return stripped


def _prove_offset_index_moved(
    where: str, before: ParquetLayout, after: ParquetLayout, ranges_before: ChunkRanges, ranges_after: ChunkRanges
) -> None:
    if (ranges_before.offset_index is None) != (ranges_after.offset_index is None):
        raise VerificationError(f"{where}: the offset index was lost or invented")
    if ranges_before.offset_index is None or ranges_after.offset_index is None:
        return
    index_before = _offset_index(before, ranges_before.offset_index, where)
    index_after = _offset_index(after, ranges_after.offset_index, where)
    delta = ranges_after.pages[0] - ranges_before.pages[0]
    for location in index_before.page_locations or []:
        location.offset += delta
    if encode(index_before) != encode(index_after):
        raise VerificationError(f"{where}: the offset index does not point at the copied pages")


def _offset_index(layout: ParquetLayout, span: tuple[int, int], where: str) -> Any:
    try:
        index, _ = decode(parquet.OffsetIndex, layout.file.read(*span), f"{layout.name} {where} offset index")
    except InputError as exc:
        raise VerificationError(str(exc)) from None
    return index


@contextmanager
def _layout(source: ParquetLayout | Source | str | os.PathLike[str], name: str) -> Iterator[ParquetLayout]:
    """The file's layout, over a path opened and closed here or a file or buffer the caller owns."""
    if isinstance(source, ParquetLayout):
        yield source
        return
    owned: pa.NativeFile | None = None
    if isinstance(source, str | os.PathLike):
        name = os.fspath(source)
        owned = source = pa.OSFile(name, "rb")
    try:
        try:
            layout = ParquetLayout(source, name)
        except InputError as exc:  # SpliceUnsupported included: a spliced file must read back as it was written
            raise VerificationError(f"{name} does not read back as a Parquet file: {exc}") from None
        yield layout
    finally:
        if owned is not None:
            owned.close()
