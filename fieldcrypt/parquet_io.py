"""Reading a partition file row group by row group, and the writer for its replacement."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from fieldcrypt.errors import InputError
from fieldcrypt.policy import AttributePolicy
from fieldcrypt.store import LakeStore

FILE_METADATA_KEY = b"fieldcrypt"
_CODECS = {
    "UNCOMPRESSED": "none",
    "SNAPPY": "snappy",
    "GZIP": "gzip",
    "BROTLI": "brotli",
    "ZSTD": "zstd",
    "LZ4_RAW": "lz4",
}


@contextlib.contextmanager
def open_parquet(store: LakeStore, rel: str) -> Iterator[pq.ParquetFile]:
    """A Parquet file of the lake; a clear error when it is missing or not Parquet."""
    with store.open_input(rel) as source:
        try:
            parquet = pq.ParquetFile(source)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{store.display(rel)} is not a readable Parquet file ({type(exc).__name__})") from None
        yield parquet


def row_groups(parquet: pq.ParquetFile, where: str, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Each row group as one record batch; bounded memory whatever the file size."""
    for index in range(parquet.num_row_groups):
        try:
            table = parquet.read_row_group(index, columns=columns)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{where}: row group {index} is corrupt ({type(exc).__name__})") from None
        batches = table.combine_chunks().to_batches()
        yield batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def codec_of(parquet: pq.ParquetFile) -> str:
    """The source's compression, kept for the replacement (zstd when there is none to copy)."""
    if parquet.metadata.num_row_groups == 0 or parquet.metadata.num_columns == 0:
        return "zstd"
    return _CODECS.get(parquet.metadata.row_group(0).column(0).compression, "zstd")


def protected_writer(
    sink: IO[bytes] | pa.NativeFile, schema: pa.Schema, source: pq.ParquetFile, attributes: list[AttributePolicy]
) -> pq.ParquetWriter:
    """A writer for the protected file: ciphertext columns plain (random bytes do not
    dictionary-encode or compress), wrapped-key columns dictionary-encoded."""
    ciphertext = {a.ciphertext_column for a in attributes}
    leaves = [source.schema.column(i).path for i in range(len(source.schema))]
    leaves += [a.wrapped_key_column for a in attributes if a.wrapped_key_column not in leaves]
    plain_leaves = [p for p in leaves if p not in ciphertext]
    described = {
        a.name: {"ciphertext": a.ciphertext_column, "wrapped_key": a.wrapped_key_column, "mask": a.mask}
        for a in attributes
    }
    metadata = dict(schema.metadata or {})
    metadata[FILE_METADATA_KEY] = json.dumps({"format": 1, "attributes": described}, sort_keys=True).encode()
    return pq.ParquetWriter(
        sink,
        schema.with_metadata(metadata),
        compression=codec_of(source),
        use_dictionary=plain_leaves,
        write_statistics=[p for p in plain_leaves if not p.endswith("__fc_dek")],
        store_schema=True,
    )
