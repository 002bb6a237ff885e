"""A scan of every byte under a directory for given plaintexts, decompressed where compressed.

The hard way to show a plaintext is gone: every file under the directory (hidden files, `_`
files and every subdirectory included) is searched as stored, and then in every form a
reader could decompress or decode it into:
- Parquet (`PAR1` ... `PAR1`): the footer, and for every column chunk of every row group each
  page header and each page body decompressed with the chunk's codec (dictionary pages, v1
  and v2 data pages), the column index, offset index and bloom filter as stored, whether the
  bloom filter of a byte-array column admits a plaintext (a membership test), and every
  value decoded by pyarrow (so a prefix-compressed `DELTA_BYTE_ARRAY` page cannot hide one);
  the footer and page headers are parsed with the parquet-format Thrift IDL
  (`fieldcrypt/format/parquet.thrift`, the library's copy, see its header) through thriftpy2;
- gzip and zstd files (by their magic bytes), decompressed and scanned like any file;
- Avro object container files (`Obj\\x01`: Iceberg manifests and manifest lists): the header, and each
  data block decompressed with the file's codec (null, deflate, snappy, zstandard); Avro stores strings
  and bytes as their raw bytes, so a decompressed block is searched as it is;
- JSON documents, parsed and scanned with their `\\uXXXX` escapes undone.

A hit is (file, where in it, how many matches): never the plaintext itself, so a failing
test prints where plaintext is, not what it is.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import thriftpy2
from thriftpy2.protocol import TCompactProtocol

PARQUET_THRIFT = Path(__file__).resolve().parents[1] / "fieldcrypt" / "format" / "parquet.thrift"
parquet_format: Any = thriftpy2.load(str(PARQUET_THRIFT), module_name="parquet_format_thrift")

MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
AVRO_MAGIC = b"Obj\x01"
# parquet-format CompressionCodec -> pyarrow codec name (LZ4 is Hadoop's framing of lz4 blocks).
CODECS = {0: None, 1: "snappy", 2: "gzip", 4: "brotli", 5: "lz4_hadoop", 6: "zstd", 7: "lz4_raw"}
PAGE_TYPES = {0: "data page", 1: "index page", 2: "dictionary page", 3: "data page v2"}
BYTE_ARRAY = 6  # parquet-format Type


class ScanError(Exception):
    """A file the scan cannot read all of (it never skips what it cannot read)."""


@dataclass(frozen=True)
class Hit:
    """Plaintext found: the file (relative to the scanned directory), where in it, how many matches."""

    file: str
    what: str
    count: int


class Plaintexts:
    """The plaintexts sought, as one regular expression over bytes (and one over text)."""

    def __init__(self, values: Iterable[str]) -> None:
        texts = sorted({v for v in values if v}, key=len, reverse=True)
        if not texts:
            raise ValueError("no plaintext to look for")
        self.count = len(texts)
        self.texts = texts
        self._bytes = re.compile(b"|".join(re.escape(t.encode()) for t in texts))

    def matches(self, data: bytes | bytearray | memoryview) -> int:
        return sum(1 for _ in self._bytes.finditer(bytes(data)))


def scan(root: Path, plaintexts: Iterable[str]) -> list[Hit]:
    """Every hit of any of `plaintexts` under `root` (recursively, nothing skipped)."""
    sought = Plaintexts(plaintexts)
    hits: list[Hit] = []
    for path in sorted(_every_file(root)):
        data = path.read_bytes()
        hits += [Hit(str(path.relative_to(root)), what, count) for what, count in _scan_bytes(data, sought) if count]
    return hits


def _every_file(root: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(root):
        for name in names:
            yield Path(folder) / name


def _scan_bytes(data: bytes, sought: Plaintexts, within: str = "") -> Iterator[tuple[str, int]]:
    yield f"{within}bytes as stored", sought.matches(data)
    if data.startswith(GZIP_MAGIC):
        yield from _scan_bytes(gzip.decompress(data), sought, f"{within}gzip-decompressed ")
    elif data.startswith(ZSTD_MAGIC):
        yield from _scan_bytes(_zstd_decompress(data), sought, f"{within}zstd-decompressed ")
    elif data.startswith(AVRO_MAGIC):
        yield from _scan_avro(data, sought, within)
    elif len(data) >= 12 and data.startswith(MAGIC) and data.endswith(MAGIC):
        yield from _scan_parquet(data, sought, within)
    elif data.lstrip()[:1] in (b"{", b"["):
        yield from _scan_json(data, sought, within)


def _scan_json(data: bytes, sought: Plaintexts, within: str) -> Iterator[tuple[str, int]]:
    """JSON documents (one, or one per line), with escapes undone."""
    try:
        documents = [json.loads(data)]
    except ValueError:
        try:
            documents = [json.loads(line) for line in data.splitlines() if line.strip()]
        except ValueError:
            return  # not JSON after all: its bytes were scanned as stored
    text = "\n".join(json.dumps(d, ensure_ascii=False) for d in documents)
    yield f"{within}json decoded", sought.matches(text.encode())


def _zstd_decompress(data: bytes) -> bytes:
    size = _zstd_content_size(data)
    if size is None:
        raise ScanError("a zstd frame without its content size cannot be decompressed by pyarrow")
    return bytes(pa.decompress(data, decompressed_size=size, codec="zstd"))


def _zstd_content_size(data: bytes) -> int | None:
    """The frame content size of a zstd frame header (RFC 8878 3.1.1.1), None when absent."""
    descriptor = data[4]
    size_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    at = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single_segment else 0, 2, 4, 8)[size_flag]
    if width == 0:
        return None
    value = int.from_bytes(data[at : at + width], "little")
    return value + 256 if width == 2 else value


# -- Avro ---------------------------------------------------------------------------------


def _avro_long(data: bytes, at: int) -> tuple[int, int]:
    """A zig-zag varint (Avro `long`) at `at`; returns it and the offset after it."""
    shift = value = 0
    while True:
        if at >= len(data):
            raise ScanError("an Avro varint runs past the end of the file")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return (value >> 1) ^ -(value & 1), at


def avro_blocks(data: bytes) -> tuple[dict[str, bytes], list[bytes]]:
    """An Avro object container file's header metadata and its data blocks, decompressed (Avro 1.11 spec,
    "Object Container Files")."""
    at = len(AVRO_MAGIC)
    metadata: dict[str, bytes] = {}
    while True:
        count, at = _avro_long(data, at)
        if count == 0:
            break
        if count < 0:
            count = -count
            _, at = _avro_long(data, at)  # the block's byte size
        for _ in range(count):
            length, at = _avro_long(data, at)
            key = data[at : at + length].decode()
            at += length
            length, at = _avro_long(data, at)
            metadata[key] = data[at : at + length]
            at += length
    sync = data[at : at + 16]
    at += 16
    codec = metadata.get("avro.codec", b"null").decode()
    blocks = []
    while at < len(data):
        _, at = _avro_long(data, at)  # objects in the block
        size, at = _avro_long(data, at)
        block = data[at : at + size]
        at += size
        if data[at : at + 16] != sync:
            raise ScanError("an Avro block is not followed by the file's sync marker")
        at += 16
        blocks.append(_avro_decompress(block, codec))
    return metadata, blocks


def _avro_decompress(block: bytes, codec: str) -> bytes:
    if codec == "null":
        return block
    if codec == "deflate":
        return zlib.decompress(block, -15)
    if codec == "zstandard":
        return _zstd_decompress(block)
    if codec == "snappy":  # raw snappy, then a 4-byte CRC32 of the uncompressed bytes
        size, _ = _snappy_length(block)
        return bytes(pa.decompress(block[:-4], decompressed_size=size, codec="snappy"))
    raise ScanError(f"Avro codec {codec!r} is not one the scan knows")


def _snappy_length(block: bytes) -> tuple[int, int]:
    shift = value = at = 0
    while True:
        byte = block[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _scan_avro(data: bytes, sought: Plaintexts, within: str) -> Iterator[tuple[str, int]]:
    metadata, blocks = avro_blocks(data)
    yield f"{within}avro header", sum(sought.matches(value) for value in metadata.values())
    for index, block in enumerate(blocks):
        yield f"{within}avro block {index} decompressed", sought.matches(block)


# -- Parquet ------------------------------------------------------------------------------


def read_struct(data: bytes, at: int, kind: Any) -> tuple[Any, int]:
    """A Thrift compact-protocol struct of `kind` read at `at`; returns it and the offset after it."""
    buffer = io.BytesIO(data)
    buffer.seek(at)
    value = kind()
    value.read(TCompactProtocol(buffer, decode_response=False))  # reads through buffer.read(n)
    return value, buffer.tell()


def footer(data: bytes) -> tuple[Any, int]:
    """The file's FileMetaData and where the footer starts."""
    (length,) = struct.unpack("<I", data[-8:-4])
    start = len(data) - 8 - length
    if start < 4:
        raise ScanError(f"footer length {length} does not fit a file of {len(data)} bytes")
    metadata, _ = read_struct(data, start, parquet_format.FileMetaData)
    return metadata, start


def _scan_parquet(data: bytes, sought: Plaintexts, within: str) -> Iterator[tuple[str, int]]:
    metadata, start = footer(data)
    yield f"{within}footer", sought.matches(data[start:-8])
    for group_index, group in enumerate(metadata.row_groups or []):
        for chunk in group.columns or []:
            meta = chunk.meta_data
            if meta is None:
                raise ScanError("a column chunk without metadata (an encrypted file?)")
            column = b".".join(meta.path_in_schema).decode()
            at = f"{within}row group {group_index} column {column}"
            if chunk.file_path:  # a summary file (`_metadata`) points at pages of another file
                continue
            yield from _scan_pages(data, meta, sought, at)
            for name, offset, length in (
                ("column index", chunk.column_index_offset, chunk.column_index_length),
                ("offset index", chunk.offset_index_offset, chunk.offset_index_length),
                ("bloom filter", meta.bloom_filter_offset, meta.bloom_filter_length),
            ):
                if offset is not None:
                    end = offset + length if length is not None else _bloom_filter_end(data, offset)
                    yield f"{at} {name}", sought.matches(data[offset:end])
            if meta.bloom_filter_offset is not None and meta.type == BYTE_ARRAY:
                yield f"{at} bloom filter admits", bloom_filter_admits(data, meta.bloom_filter_offset, sought)
    if metadata.row_groups and not any(c.file_path for g in metadata.row_groups for c in g.columns or []):
        yield from _scan_values(data, sought, within)


def _scan_pages(data: bytes, meta: Any, sought: Plaintexts, at: str) -> Iterator[tuple[str, int]]:
    """Each page of a column chunk: its header as stored and its body decompressed."""
    if meta.codec not in CODECS:
        raise ScanError(f"{at}: compression codec {meta.codec} is not one the scan knows")
    codec = CODECS[meta.codec]
    offset = meta.data_page_offset
    if meta.dictionary_page_offset is not None and 0 < meta.dictionary_page_offset < offset:
        offset = meta.dictionary_page_offset
    end = offset + meta.total_compressed_size
    page = 0
    while offset < end:
        header, body_at = read_struct(data, offset, parquet_format.PageHeader)
        body = data[body_at : body_at + header.compressed_page_size]
        kind = PAGE_TYPES.get(header.type, f"page type {header.type}")
        yield f"{at} page {page} ({kind}) header", sought.matches(data[offset:body_at])
        yield f"{at} page {page} ({kind}) decompressed", sought.matches(_page_body(header, body, codec))
        offset = body_at + header.compressed_page_size
        page += 1


def _page_body(header: Any, body: bytes, codec: str | None) -> bytes:
    """A page body as a reader sees it after decompression (v2: levels are never compressed)."""
    levels = 0
    compressed = True
    if header.data_page_header_v2 is not None:
        v2 = header.data_page_header_v2
        levels = v2.definition_levels_byte_length + v2.repetition_levels_byte_length
        compressed = v2.is_compressed is None or v2.is_compressed
    if codec is None or not compressed:
        return body
    values = _decompress(body[levels:], header.uncompressed_page_size - levels, codec)
    return body[:levels] + values


def _decompress(body: bytes, size: int, codec: str) -> bytes:
    if codec == "lz4_hadoop":  # blocks of: uncompressed length, compressed length (big-endian), lz4 raw bytes
        out = io.BytesIO()
        at = 0
        while at < len(body):
            raw_size, block_size = struct.unpack(">II", body[at : at + 8])
            out.write(bytes(pa.decompress(body[at + 8 : at + 8 + block_size], raw_size, codec="lz4_raw")))
            at += 8 + block_size
        return out.getvalue()
    return bytes(pa.decompress(body, decompressed_size=size, codec=codec))


def bloom_filter_admits(data: bytes, offset: int, sought: Plaintexts) -> int:
    """How many of the plaintexts a split-block bloom filter says may be in its column (parquet-format
    BloomFilter.md: xxHash64 of the plain-encoded value, seed 0). A false positive is possible (the
    writer's fpp per plaintext); a false negative is not, so 0 proves none of them is in the column."""
    header, bitset_at = read_struct(data, offset, parquet_format.BloomFilterHeader)
    bitset = data[bitset_at : bitset_at + header.numBytes]
    blocks = len(bitset) // 32
    admitted = 0
    for text in sought.texts:
        value = xxh64(text.encode())
        block = ((value >> 32) * blocks) >> 32
        words = struct.unpack_from("<8I", bitset, block * 32)
        key = value & _MASK32
        admitted += all(words[i] >> (((key * salt) & _MASK32) >> 27) & 1 for i, salt in enumerate(_SALT))
    return admitted


_SALT = (0x47B6137B, 0x44974D91, 0x8824AD5B, 0xA2B7289D, 0x705495C7, 0x2DF1424B, 0x9EFC4947, 0x5C6BFB31)
_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
_P1, _P2, _P3, _P4, _P5 = (
    0x9E3779B185EBCA87,
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
    0x85EBCA77C2B2AE63,
    0x27D4EB2F165667C5,
)


def _rotl(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & _MASK64


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _MASK64, 31) * _P1) & _MASK64


def xxh64(data: bytes, seed: int = 0) -> int:
    """xxHash64 (the reference algorithm, for bloom-filter lookups; no package needed)."""
    size, at = len(data), 0
    if size >= 32:
        lanes = [(seed + _P1 + _P2) & _MASK64, (seed + _P2) & _MASK64, seed, (seed - _P1) & _MASK64]
        while at + 32 <= size:
            lanes = [
                _round(lane, int.from_bytes(data[at + 8 * i : at + 8 * i + 8], "little"))
                for i, lane in enumerate(lanes)
            ]
            at += 32
        value = (_rotl(lanes[0], 1) + _rotl(lanes[1], 7) + _rotl(lanes[2], 12) + _rotl(lanes[3], 18)) & _MASK64
        for lane in lanes:
            value = ((value ^ _round(0, lane)) * _P1 + _P4) & _MASK64
    else:
        value = (seed + _P5) & _MASK64
    value = (value + size) & _MASK64
    while at + 8 <= size:
        value ^= _round(0, int.from_bytes(data[at : at + 8], "little"))
        value = (_rotl(value, 27) * _P1 + _P4) & _MASK64
        at += 8
    if at + 4 <= size:
        value ^= (int.from_bytes(data[at : at + 4], "little") * _P1) & _MASK64
        value = (_rotl(value, 23) * _P2 + _P3) & _MASK64
        at += 4
    while at < size:
        value ^= (data[at] * _P5) & _MASK64
        value = (_rotl(value, 11) * _P1) & _MASK64
        at += 1
    value ^= value >> 33
    value = (value * _P2) & _MASK64
    value ^= value >> 29
    value = (value * _P3) & _MASK64
    return value ^ (value >> 32)


def _bloom_filter_end(data: bytes, offset: int) -> int:
    """Where a bloom filter whose length the writer did not record ends (header + bitset)."""
    header, bitset_at = read_struct(data, offset, parquet_format.BloomFilterHeader)
    return int(bitset_at + header.numBytes)


def _scan_values(data: bytes, sought: Plaintexts, within: str) -> Iterator[tuple[str, int]]:
    """Every string and binary value as pyarrow decodes it, whatever its encoding."""
    table = pq.read_table(pa.BufferReader(data))
    for name in table.column_names:
        found = sum(_value_matches(chunk, sought) for chunk in table[name].chunks)
        yield f"{within}decoded values of column {name}", found


def _value_matches(array: pa.Array, sought: Plaintexts) -> int:
    kind = array.type
    if pa.types.is_dictionary(kind):
        return _value_matches(array.dictionary, sought)
    if pa.types.is_struct(kind):
        return sum(_value_matches(array.field(i), sought) for i in range(kind.num_fields))
    if pa.types.is_map(kind):
        return _value_matches(array.keys, sought) + _value_matches(array.items, sought)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _value_matches(array.values, sought)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return sum(sought.matches(v.encode()) for v in array.to_pylist() if v is not None)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return sum(sought.matches(v) for v in array.to_pylist() if v is not None)
    return 0
