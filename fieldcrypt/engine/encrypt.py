"""Where a row becomes ciphertext: encrypt the selected cells of one attribute in a batch.

For each selected row the value is encrypted (fieldcrypt.format.cell), written to the
`<attr>__fc_ct` column with its wrapped data key in the dictionary-encoded
`<attr>__fc_dek` column, and the value itself is replaced by its mask. Rows not
selected keep their value, ciphertext and wrapped key exactly as they were.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.errors import InputError
from fieldcrypt.format.cell import ad_prefix
from fieldcrypt.format.columns import raw_path, replace_path, row_key_bytes
from fieldcrypt.format.kernel import encrypt_column
from fieldcrypt.format.mask import mask_values
from fieldcrypt.format.padding import PADDED_CELL_VERSION, pad, padded_ad_prefix, with_version
from fieldcrypt.keys.blind_index import BlindIndexKey
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.lake.parquet_io import with_binary_protection_columns
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec
from fieldcrypt.policy.select import RowSelection

WRAPPED_KEY_TYPE = pa.dictionary(pa.int32(), pa.binary())


@dataclass
class EncryptedAttribute:
    """What encrypting one attribute of one batch produced (for verification and reports)."""

    cells: int = 0
    ciphertext_digest: bytes = b""
    new_wrapped_keys: list[bytes] = field(default_factory=list)
    mask_digest: bytes = b""  # values_digest of the masks written to the encrypted rows, in row order
    index_digest: bytes = b""  # digest of the blind indexes written to the encrypted rows, if any


def encrypt_values(
    values: pa.Array,
    row_keys: pa.Array | None,
    cache: DataKeyCache,
    dataset: str,
    attribute: str,
    partition: str | None = None,
    pad_to: int = 0,
) -> tuple[pa.Array, pa.Array, list[bytes]]:
    """The encryption kernel: non-null text values -> (ciphertext column, key index, wrapped keys).

    Long inputs are split when a data key's cell budget runs out; `key_index[i]` says
    which of the returned wrapped keys encrypted cell i. With `pad_to`, cells are format 2
    (length-padded, fieldcrypt.format.padding).
    """
    plain = values.cast(pa.large_binary() if values.type == pa.large_string() else pa.binary())
    keys = row_keys.cast(pa.binary()) if row_keys is not None else None
    prefix = ad_prefix(dataset, attribute, has_row_key=row_keys is not None)
    if pad_to:
        plain, prefix = pad(plain, pad_to), padded_ad_prefix(prefix)
    chunks: list[pa.Array] = []
    wrapped_keys: list[bytes] = []
    key_index = np.empty(len(plain), dtype=np.int32)
    start = 0
    while start < len(plain):
        data_key, wrapped, granted = cache.reserve(dataset, attribute, len(plain) - start, partition)
        end = start + granted
        # The kernel slices the column itself (bounded memory; several threads with the native kernel).
        part_keys = None if keys is None else keys.slice(start, granted)
        chunks.append(encrypt_column(data_key, prefix, plain.slice(start, granted), part_keys))
        if not wrapped_keys or wrapped_keys[-1] != wrapped:
            wrapped_keys.append(wrapped)
        key_index[start:end] = len(wrapped_keys) - 1
        start = end
    if not chunks:
        return pa.array([], pa.binary()), pa.array(key_index), wrapped_keys
    cells = chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)
    if pad_to:
        cells = with_version(cells, PADDED_CELL_VERSION)
    return cells, pa.array(key_index), wrapped_keys


def encrypt_attribute(
    batch: pa.RecordBatch,
    dataset: DatasetSpec,
    attribute: AttributePolicy,
    rows: RowSelection,
    cache: DataKeyCache,
    partition: str | None = None,
    *,
    helper: Executor | None = None,
    index_key: BlindIndexKey | None = None,
    batch_row_keys: pa.Array | None = None,
) -> tuple[pa.RecordBatch, EncryptedAttribute]:
    """The batch with the selected rows of `attribute` encrypted, masked and (with an
    `index_key`) blind-indexed.

    With a `helper` executor the masks (Arrow kernels, which release the GIL) and the digest of
    the new ciphertexts (hashlib releases it too) are computed on it while this thread works.
    `batch_row_keys`: row_key_bytes of the whole batch, when the caller has them (one batch,
    several attributes).
    """
    if attribute.blind_index and index_key is None:
        raise InputError(f"{attribute.name} has a blind index but no index key was given")
    if rows.count == 0:
        return with_protection_columns(batch, attribute), EncryptedAttribute()
    selected_values = pc.filter(rows.values, rows.selected)
    masking = None if helper is None else helper.submit(_masks, selected_values, attribute.mask)
    row_keys = None
    if dataset.primary_key:
        if batch_row_keys is None:
            batch_row_keys = row_key_bytes(batch, dataset.primary_key, dataset.name)
        row_keys = pc.filter(batch_row_keys, rows.selected)
        if row_keys.null_count:
            raise InputError(
                f"{dataset.name}: {row_keys.null_count} rows to encrypt have a null primary key "
                f"({', '.join(dataset.primary_key)})"
            )
    ciphertext, key_index, wrapped_keys = encrypt_values(
        selected_values, row_keys, cache, dataset.name, attribute.path, partition, attribute.pad_to
    )
    digesting = None if helper is None else helper.submit(ciphertext_digest, ciphertext)
    batch = with_protection_columns(batch, attribute)
    ct_at = batch.schema.get_field_index(attribute.ciphertext_column)
    dek_at = batch.schema.get_field_index(attribute.wrapped_key_column)
    new_ct = _placed(rows.existing_ciphertext, rows.selected, ciphertext)
    new_dek = _merge_wrapped_keys(batch.column(dek_at), rows.selected, key_index, wrapped_keys)
    batch = batch.set_column(ct_at, batch.schema.field(ct_at), new_ct)
    batch = batch.set_column(dek_at, batch.schema.field(dek_at), new_dek)
    # Unselected rows keep their stored value, including a struct child under a null struct.
    stored = raw_path(batch, attribute.path, dataset.name)
    masks, mask_digest = _masks(selected_values, attribute.mask) if masking is None else masking.result()
    batch = replace_path(batch, attribute.path, pc.replace_with_mask(stored, rows.selected, masks), dataset.name)
    index_digest = b""
    if index_key is not None and attribute.blind_index_column is not None:
        indexes = index_key.index(selected_values)
        index_digest = ciphertext_digest(indexes)
        at = batch.schema.get_field_index(attribute.blind_index_column)
        batch = batch.set_column(
            at, batch.schema.field(at), pc.replace_with_mask(batch.column(at), rows.selected, indexes)
        )
    digest = ciphertext_digest(ciphertext) if digesting is None else digesting.result()
    return batch, EncryptedAttribute(len(ciphertext), digest, wrapped_keys, mask_digest, index_digest)


def _placed(existing: pa.Array, selected: pa.BooleanArray, cells: pa.Array) -> pa.Array:
    """`existing` with the selected rows replaced, in order, by `cells` (pc.replace_with_mask).

    When `existing` is all null (a file's first protection) the result is built from buffers: the
    cells' data buffer as it is, offsets spread over the rows, the selection as validity; an
    element-by-element copy of every ciphertext byte was a large part of protecting a file.
    """
    rows = len(existing)
    if (
        existing.null_count != rows
        or selected.null_count
        or cells.null_count
        or cells.type != pa.binary()
        or len(cells) != selected.true_count
    ):
        return pc.replace_with_mask(existing, selected, cells)
    chosen = selected.to_numpy(zero_copy_only=False)
    offsets = np.frombuffer(cells.buffers()[1], dtype=np.int32, count=len(cells) + 1, offset=cells.offset * 4)
    placed = np.empty(rows + 1, dtype=np.int32)
    placed[0] = offsets[0]
    lengths = np.zeros(rows, dtype=np.int32)
    lengths[chosen] = np.diff(offsets)
    np.cumsum(lengths, out=placed[1:])
    placed[1:] += offsets[0]
    validity = pa.py_buffer(np.packbits(chosen, bitorder="little"))
    data = cells.buffers()[2] or pa.py_buffer(b"")
    return pa.Array.from_buffers(
        pa.binary(), rows, [validity, pa.py_buffer(placed), data], null_count=rows - len(cells)
    )


def _masks(values: pa.Array, style: str) -> tuple[pa.Array, bytes]:
    masks = mask_values(values, style)
    return masks, values_digest(masks)


def with_protection_columns(batch: pa.RecordBatch, attribute: AttributePolicy) -> pa.RecordBatch:
    """Add the (all-null) ciphertext, wrapped-key and blind-index columns if the batch lacks them (and read
    `large_binary` ones, as another writer of an Iceberg table declares them, as `binary`)."""
    batch = with_binary_protection_columns(batch)
    for column in (attribute.ciphertext_column, attribute.blind_index_column):
        if column is not None and batch.schema.get_field_index(column) < 0:
            batch = batch.append_column(pa.field(column, pa.binary()), pa.nulls(batch.num_rows, pa.binary()))
    index = batch.schema.get_field_index(attribute.wrapped_key_column)
    if index < 0:
        batch = batch.append_column(
            pa.field(attribute.wrapped_key_column, WRAPPED_KEY_TYPE), pa.nulls(batch.num_rows, WRAPPED_KEY_TYPE)
        )
    elif batch.schema.field(index).type != WRAPPED_KEY_TYPE:
        column = batch.column(index)
        if not pa.types.is_binary(column.type):
            raise InputError(f"{attribute.wrapped_key_column} is {column.type}, expected binary wrapped keys")
        batch = batch.set_column(
            index, pa.field(attribute.wrapped_key_column, WRAPPED_KEY_TYPE), column.dictionary_encode()
        )
    return batch


def used_wrapped_keys(column: pa.Array) -> list[bytes]:
    """The distinct non-null wrapped keys that rows of a wrapped-key column use (without decoding every row)."""
    if pa.types.is_dictionary(column.type):
        keys: list[bytes] = column.dictionary.take(pc.unique(column.indices.drop_null())).to_pylist()
    else:
        keys = pc.unique(column.drop_null()).to_pylist()
    return [key for key in dict.fromkeys(keys) if key is not None]


def _merge_wrapped_keys(
    existing: pa.DictionaryArray, selected: pa.BooleanArray, key_index: pa.Array, wrapped_keys: list[bytes]
) -> pa.DictionaryArray:
    """Old rows keep their dictionary index; selected rows point at the new wrapped keys."""
    dictionary = existing.dictionary.to_pylist()
    positions = []
    for wrapped in wrapped_keys:
        if wrapped not in dictionary:
            dictionary.append(wrapped)
        positions.append(dictionary.index(wrapped))
    new_index = np.asarray(positions, dtype=np.int32)[key_index.to_numpy()]
    indices = pc.replace_with_mask(existing.indices, selected, pa.array(new_index, pa.int32()))
    return pa.DictionaryArray.from_arrays(indices, pa.array(dictionary, pa.binary()))


def ciphertext_digest(array: pa.Array) -> bytes:
    """SHA-256 of a non-null binary array's concatenated values (its data buffer, offsets respected)."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    data = array.buffers()[2]
    payload = b"" if data is None else memoryview(data)[offsets[0] : offsets[-1]]
    return hashlib.sha256(payload).digest()


def values_digest(array: pa.Array) -> bytes:
    """SHA-256 of a string or binary array's validity, value lengths and concatenated values.

    Two arrays have the same digest exactly when they hold the same values (whatever
    their offsets, slicing or the bytes behind null slots).
    """
    valid = pc.is_valid(array).to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.binary_length(array), 0).to_numpy(zero_copy_only=False).astype("<i8")
    digest = hashlib.sha256(valid.tobytes())
    digest.update(lengths.tobytes())
    compact = array if array.null_count == 0 else pc.drop_null(array)
    if len(compact):
        large = compact.type in (pa.large_string(), pa.large_binary())
        offsets = np.frombuffer(
            compact.buffers()[1],
            dtype=np.int64 if large else np.int32,
            count=len(compact) + 1,
            offset=compact.offset * (8 if large else 4),
        )
        data = compact.buffers()[2]
        digest.update(b"" if data is None else memoryview(data)[offsets[0] : offsets[-1]])
    return digest.digest()
