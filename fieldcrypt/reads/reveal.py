"""Decrypting protected cells in memory (what fieldcrypt.reads.read_rule reads with, and rewrites verify with).

Plaintext only ever lives in the returned Arrow arrays; nothing here writes or logs it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.errors import InputError, IntegrityError, KeyProviderError
from fieldcrypt.format.cell import CELL_VERSION, ad_prefix
from fieldcrypt.format.columns import read_path, row_key_bytes
from fieldcrypt.format.kernel import decrypt_column
from fieldcrypt.format.padding import PADDED_CELL_VERSION, first_wrong_version, padded_ad_prefix, unpad, with_version
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec
from fieldcrypt.policy.select import protection_columns


def decrypt_rows(
    batch: pa.RecordBatch,
    dataset: DatasetSpec,
    attribute: AttributePolicy,
    cache: DataKeyCache,
    rows: pa.Array,
    where: str,
    partition: str | None = None,
) -> pa.Array:
    """Plaintext of the protected cells at `rows`, typed like `read_path` returns the attribute
    (string or large_string); IntegrityError on any tampering or missing part.

    Cells are decrypted by the batch kernel (fieldcrypt.format.kernel), one call per data key; every
    data key is unwrapped before any cell is decrypted, and a bad one names the first row using it.
    """
    stored_columns = protection_columns(batch, attribute, where)
    ciphertext = stored_columns.ciphertext.take(rows)
    wrapped = stored_columns.wrapped_key.take(rows)
    if ciphertext.null_count or wrapped.null_count:
        raise InputError(f"{where}: asked to decrypt a row that is not protected")
    if not pa.types.is_dictionary(wrapped.type):
        wrapped = wrapped.dictionary_encode()
    keys = None
    if dataset.primary_key:
        # The keys of the asked rows only: verification asks for a sample of a row group.
        present = [name for name in dataset.primary_key if name in batch.schema.names]
        keys = row_key_bytes(batch.select(present).take(rows), dataset.primary_key, where)
        if keys.null_count:
            row = rows[pc.indices_nonzero(pc.is_null(keys))[0].as_py()].as_py()
            raise IntegrityError(f"{where} row {row}: protected {attribute.name} has a null primary key")
        keys = keys.cast(pa.binary())
    prefix = ad_prefix(dataset.name, attribute.path, has_row_key=keys is not None)
    if attribute.pad_to:  # format 2: every cell must be, and the kernels read it as format 1 under AD version 2
        wrong = first_wrong_version(ciphertext, PADDED_CELL_VERSION)
        if wrong is not None:
            raise IntegrityError(
                f"{where} row {rows[wrong[0]].as_py()}, {attribute.name}: cell format version {wrong[1]}, "
                f"but the attribute is padded (format {PADDED_CELL_VERSION})"
            )
        ciphertext, prefix = with_version(ciphertext, CELL_VERSION), padded_ad_prefix(prefix)
    key_of_row = wrapped.indices.to_numpy(zero_copy_only=False)
    used, first_row = np.unique(key_of_row, return_index=True)
    in_row_order = np.argsort(first_row)
    groups = used[in_row_order]  # data keys in the order of their first row
    data_keys = {}
    for index, first in zip(groups, first_row[in_row_order], strict=True):
        try:
            stored = wrapped.dictionary[int(index)].as_py()
            data_keys[index] = cache.cipher_for(stored, dataset.name, attribute.path, partition)
        except (IntegrityError, KeyProviderError) as exc:  # say which file and row hold the bad wrapped key
            raise type(exc)(f"{where} row {rows[int(first)].as_py()}: {exc}") from None
    row_numbers = rows.to_numpy(zero_copy_only=False)
    name = f"{attribute.name}"
    if len(groups) == 0:
        plaintext = pa.array([], pa.binary())
    elif len(groups) == 1:
        plaintext = decrypt_column(data_keys[groups[0]], prefix, ciphertext, keys, _row_namer(where, row_numbers, name))
    else:
        parts, positions = [], []
        for index in groups:
            at = np.flatnonzero(key_of_row == index)
            part_keys = None if keys is None else keys.take(at)
            name_row = _row_namer(where, row_numbers[at], name)
            parts.append(decrypt_column(data_keys[index], prefix, ciphertext.take(at), part_keys, name_row))
            positions.append(pa.array(at))
        order = pc.sort_indices(pa.concat_arrays(positions))
        plaintext = pa.concat_arrays(parts).take(order)
    if attribute.pad_to:
        plaintext = unpad(plaintext, f"{where}, {attribute.name}")
    value_type = read_path(batch.slice(0, 0), attribute.path, where).type
    return plaintext.cast(pa.large_binary() if value_type == pa.large_string() else pa.binary()).cast(value_type)


def _row_namer(where: str, row_numbers: np.ndarray, attribute: str) -> Callable[[int], str]:
    """Names cell i of a kernel call by its row in the file and its attribute (for errors; never a value)."""
    return lambda i: f"{where} row {row_numbers[i]}, {attribute}"
