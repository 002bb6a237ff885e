"""Reading a partition file row group by row group, and the writer for its replacement."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from fieldcrypt.errors import InputError
from fieldcrypt.format.engine_schema import listing_columns
from fieldcrypt.format.file_metadata import FILE_METADATA_KEY, ProtectedColumns
from fieldcrypt.lake.store import LakeStore

Choice = TypeVar("Choice")
_BUFFER = 8 << 20  # bytes buffered between the Parquet writer and a Python file object
_DEFAULT_CODEC = "zstd"
# A file with no protected row has an all-null wrapped-key column, whose dictionary page is empty;
# uncompressed, that is a 0-byte page, which fastparquet (2026.9) cannot read (it reads the rest of
# the column chunk instead). Compressed it is never empty; snappy is the codec every engine reads.
_WRAPPED_KEY_CODEC = "snappy"
_CODECS = {
    "UNCOMPRESSED": "none",
    "SNAPPY": "snappy",
    "GZIP": "gzip",
    "BROTLI": "brotli",
    "ZSTD": "zstd",
    "LZ4": "lz4",  # pyarrow writes (and names) LZ4_RAW this way; Hadoop LZ4 cannot be written back
    "LZ4_RAW": "lz4",
}


PARQUET_MAGIC = b"PAR1"


@contextlib.contextmanager
def open_parquet(store: LakeStore, rel: str) -> Iterator[pq.ParquetFile]:
    """A Parquet file of the lake; a clear error when it is missing or not Parquet.

    pyarrow checks only the trailing magic; a file must also start with `PAR1` (a file whose
    head was overwritten is not read, and never rewritten as if it were whole).
    """
    with store.open_input(rel) as source:
        if source.read_at(len(PARQUET_MAGIC), 0) != PARQUET_MAGIC:
            raise InputError(f"{store.display(rel)} is not a readable Parquet file (it does not start with PAR1)")
        try:
            parquet = pq.ParquetFile(source)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{store.display(rel)} is not a readable Parquet file ({type(exc).__name__})") from None
        yield parquet


def row_groups(parquet: pq.ParquetFile, where: str, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Each row group as one record batch; bounded memory whatever the file size."""
    for index in range(parquet.num_row_groups):
        yield row_group(parquet, index, where, columns)


def row_group(parquet: pq.ParquetFile, index: int, where: str, columns: list[str] | None = None) -> pa.RecordBatch:
    """One row group as one record batch."""
    try:
        table = parquet.read_row_group(index, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{where}: row group {index} is corrupt ({type(exc).__name__})") from None
    batches = table.combine_chunks().to_batches()
    batch: pa.RecordBatch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
    return with_binary_protection_columns(batch)


PROTECTION_MARK = "__fc_"  # in the name of every column fieldcrypt adds (docs/FORMAT.md)


def with_binary_protection_columns(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with fieldcrypt's columns as `binary` where the file declares them `large_binary`.

    An Iceberg table's schema lists the `__fc_*` columns, so its other writers write them too (all null
    until fieldcrypt protects the file), and pyiceberg declares every binary column `large_binary`.
    fieldcrypt reads and writes them as `binary` (and dictionary-encoded wrapped keys) whoever wrote them.
    """
    for index, field in enumerate(batch.schema):
        if PROTECTION_MARK in field.name and pa.types.is_large_binary(field.type):
            batch = batch.set_column(index, field.with_type(pa.binary()), batch.column(index).cast(pa.binary()))
    return batch


def chunk_span(chunk: pq.ColumnChunkMetaData) -> tuple[int, int]:
    """Where one column chunk's pages are stored in its file: [start, end), as a Parquet reader reads them."""
    start = chunk.data_page_offset
    if chunk.has_dictionary_page and chunk.dictionary_page_offset:
        start = min(start, chunk.dictionary_page_offset)
    return start, start + chunk.total_compressed_size


@contextlib.contextmanager
def read_ahead(batches: Iterator[pa.RecordBatch]) -> Iterator[Iterator[pa.RecordBatch]]:
    """The same batches, the next one read on a helper thread while the caller works on this one.

    Parquet decoding releases the GIL, so reading overlaps the caller's work. Leaving the
    block waits for an in-flight read, so close the file after it, never before.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fieldcrypt-read")
    try:
        yield _ahead(batches, pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ahead(batches: Iterator[pa.RecordBatch], pool: ThreadPoolExecutor) -> Iterator[pa.RecordBatch]:
    end = object()
    pending = pool.submit(next, batches, end)
    while True:
        batch = pending.result()
        if batch is end:
            return
        pending = pool.submit(next, batches, end)
        yield batch


def codec_of(parquet: pq.ParquetFile) -> str:
    """The source's compression of its first column, the default for columns it does not have."""
    if parquet.metadata.num_row_groups == 0 or parquet.metadata.num_columns == 0:
        return _DEFAULT_CODEC
    return _CODECS.get(parquet.metadata.row_group(0).column(0).compression, _DEFAULT_CODEC)


def leaf_paths(schema: pa.Schema) -> list[str]:
    """The Parquet column paths (dot strings) this package's writer gives an Arrow schema's leaves."""
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink, store_schema=False)
    written = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    return [written.column(i).path for i in range(len(written))]


def source_codecs(source: pq.ParquetFile, output_leaves: list[str]) -> dict[str, str]:
    """Output leaf path -> the codec of the source's column chunk for the same leaf."""
    return _by_source_leaf(source, output_leaves, lambda chunk: _CODECS.get(chunk.compression, _DEFAULT_CODEC))


def source_plain_leaves(source: pq.ParquetFile, output_leaves: list[str]) -> set[str]:
    """Output leaves whose source column chunk has no dictionary page: they are written without one too.

    Besides keeping the writer's choice, this keeps fastparquet (2026.9) reading the file: an
    all-null row group of a dictionary-encoded uncompressed column has a 0-byte dictionary page,
    which it cannot read, and fastparquet itself writes such columns plain.
    """
    found = _by_source_leaf(source, output_leaves, lambda chunk: chunk.has_dictionary_page)
    return {path for path, dictionary in found.items() if not dictionary}


def _by_source_leaf(
    source: pq.ParquetFile, output_leaves: list[str], of_chunk: Callable[[pq.ColumnChunkMetaData], Choice]
) -> dict[str, Choice]:
    """Output leaf path -> `of_chunk` of the source's column chunk for the same leaf (first row group).

    Leaves are matched by top-level column and position within it, so a source that names
    list leaves differently (Spark's legacy `bag.array_element`, say) keeps its choices.
    """
    if source.metadata.num_row_groups == 0:
        return {}
    chunks = source.metadata.row_group(0)
    by_column: dict[str, list[Choice]] = {}
    for index in range(chunks.num_columns):
        chunk = chunks.column(index)
        by_column.setdefault(chunk.path_in_schema.split(".")[0], []).append(of_chunk(chunk))
    outputs: dict[str, list[str]] = {}
    for path in output_leaves:
        outputs.setdefault(path.split(".")[0], []).append(path)
    choices: dict[str, Choice] = {}
    for column, paths in outputs.items():
        found = by_column.get(column)
        if found is not None and len(found) == len(paths):
            choices.update(zip(paths, found, strict=True))
    return choices


def _int96_timestamps(source: pq.ParquetFile) -> bool:
    """Did the writer store every timestamp as INT96 (Spark's default)? Then so do we, or Spark misreads them."""
    leaves = [source.schema.column(i) for i in range(len(source.schema))]
    int96 = any(leaf.physical_type == "INT96" for leaf in leaves)
    int64 = any(leaf.logical_type.type == "TIMESTAMP" for leaf in leaves)
    return int96 and not int64


def protected_metadata(schema: pa.Schema, attributes: Sequence[ProtectedColumns], where: str) -> dict[bytes, bytes]:
    """The schema metadata of a protected file: the source's, with the protection columns listed in its
    pandas and Spark schemas (fieldcrypt.format.engine_schema) and the `fieldcrypt` entry describing them.
    The full rewrite stores it through pyarrow's writer; a splice stores it with `footer_metadata`."""
    described = {
        a.name: {"ciphertext": a.ciphertext_column, "wrapped_key": a.wrapped_key_column, "mask": a.mask}
        | ({"blind_index": a.blind_index_column} if a.blind_index_column else {})
        for a in attributes
    }
    protection = {c for a in attributes for c in (a.ciphertext_column, a.wrapped_key_column, a.blind_index_column)}
    metadata = listing_columns(schema.metadata or {}, [n for n in schema.names if n in protection], where)
    # "ledgered": this version of the file is recorded in the protection ledger (fieldcrypt.policy.ledger), so one
    # found outside the ledger was copied in or outlived a restore of `_fieldcrypt/`.
    file_doc = {"format": 1, "attributes": described, "ledgered": True}
    metadata[FILE_METADATA_KEY] = json.dumps(file_doc, sort_keys=True).encode()
    return metadata


def protected_writer(
    sink: IO[bytes] | pa.NativeFile,
    schema: pa.Schema,
    source: pq.ParquetFile,
    attributes: Sequence[ProtectedColumns],
    where: str,
) -> pq.ParquetWriter:
    """A writer for the protected file (`where`, for messages) that keeps the writer's choices of the source.

    Every source column keeps its codec (per column chunk), the file keeps the source's
    key-value metadata, with the protection columns added to the pandas and Spark schemas
    in it (fieldcrypt.format.engine_schema, so those engines see them; `ARROW:schema` is written
    from `schema`), and INT96 timestamps stay INT96. Ciphertext and blind-index columns are plain
    and uncompressed (random bytes neither dictionary-encode nor compress; trying costs
    time), wrapped-key columns dictionary-encoded with the source's first codec (snappy when
    that is none: see _WRAPPED_KEY_CODEC); other columns dictionary-encoded where the source's are.
    """
    # Ciphertexts and blind indexes are random-looking bytes: no dictionary, no compression.
    ciphertext = {a.ciphertext_column for a in attributes} | {
        a.blind_index_column for a in attributes if a.blind_index_column
    }
    leaves = leaf_paths(schema)
    plain_leaves = [p for p in leaves if p not in ciphertext]
    metadata = protected_metadata(schema, attributes, where)
    default = codec_of(source)
    wrapped_key_codec = _WRAPPED_KEY_CODEC if default == "none" else default
    kept = source_codecs(source, leaves)
    wrapped_keys = {a.wrapped_key_column for a in attributes}
    return _BufferedWriter(
        sink,
        schema.with_metadata(metadata),
        compression={
            p: "none" if p in ciphertext else wrapped_key_codec if p in wrapped_keys else kept.get(p, default)
            for p in leaves
        },
        use_dictionary=[p for p in plain_leaves if p in wrapped_keys or p not in source_plain_leaves(source, leaves)],
        write_statistics=[p for p in plain_leaves if p not in wrapped_keys],
        use_deprecated_int96_timestamps=_int96_timestamps(source),
        store_schema=True,
    )


class _BufferedWriter(pq.ParquetWriter):  # type: ignore[misc]
    """A ParquetWriter that writes a Python file object through a large native buffer.

    Without it every Parquet page is a call into Python, each waiting for the GIL while
    another thread encrypts. The buffer is flushed into the file (not closed: its owner
    fsyncs and closes it) when the writer closes.
    """

    def __init__(self, sink: IO[bytes] | pa.NativeFile, schema: pa.Schema, **options: Any) -> None:
        self._buffered = None if isinstance(sink, pa.NativeFile) else pa.output_stream(sink, buffer_size=_BUFFER)
        try:
            super().__init__(sink if self._buffered is None else self._buffered, schema, **options)
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release()

    def _release(self) -> None:
        """Flush the buffer into the file and let go of it without closing the file."""
        if self._buffered is not None:
            buffered, self._buffered = self._buffered, None
            buffered.detach()
