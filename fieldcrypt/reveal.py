"""Decrypting protected attributes in memory (dispatch jobs, `fieldcrypt verify`).

Plaintext only ever lives in the returned Arrow arrays; nothing here writes or logs it.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.cache import DataKeyCache
from fieldcrypt.cell import ad_prefix, associated_data, decrypt_cell
from fieldcrypt.columns import read_path, row_key_bytes
from fieldcrypt.errors import InputError, IntegrityError, KeyProviderError
from fieldcrypt.policy import AttributePolicy, DatasetSpec
from fieldcrypt.select import protection_columns


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
    (string or large_string); IntegrityError on any tampering or missing part."""
    stored = protection_columns(batch, attribute, where)
    ciphertext = stored.ciphertext.take(rows)
    wrapped = stored.wrapped_key.take(rows)
    if pa.types.is_dictionary(wrapped.type):
        wrapped = wrapped.dictionary_decode()
    if ciphertext.null_count or wrapped.null_count:
        raise InputError(f"{where}: asked to decrypt a row that is not protected")
    row_numbers = rows.to_pylist()
    keys = None
    if dataset.primary_key:
        key_array = row_key_bytes(batch, dataset.primary_key, where).take(rows)
        if key_array.null_count:
            row = row_numbers[pc.indices_nonzero(pc.is_null(key_array))[0].as_py()]
            raise IntegrityError(f"{where} row {row}: protected {attribute.name} has a null primary key")
        keys = key_array.to_pylist()
    prefix = ad_prefix(dataset.name, attribute.path, has_row_key=keys is not None)
    out: list[bytes] = []
    for i, (cell, wrapped_value) in enumerate(zip(ciphertext.to_pylist(), wrapped.to_pylist(), strict=True)):
        try:
            cipher = cache.cipher_for(wrapped_value, dataset.name, attribute.path, partition)
        except (IntegrityError, KeyProviderError) as exc:  # say which file and row hold the bad wrapped key
            raise type(exc)(f"{where} row {row_numbers[i]}: {exc}") from None
        ad = associated_data(prefix, keys[i] if keys is not None else None)
        out.append(decrypt_cell(cipher, cell, ad, f"{where} row {row_numbers[i]}, {attribute.name}"))
    value_type = read_path(batch.slice(0, 0), attribute.path, where).type
    return pa.array(out, pa.large_binary() if value_type == pa.large_string() else pa.binary()).cast(value_type)


def reveal(
    batch: pa.RecordBatch,
    dataset: DatasetSpec,
    attribute: AttributePolicy,
    cache: DataKeyCache,
    where: str = "batch",
    partition: str | None = None,
) -> pa.Array:
    """The attribute's real values (string or large_string): decrypted where protected, as
    stored where not (historical)."""
    values = read_path(batch, attribute.path, where)
    protected = pc.is_valid(protection_columns(batch, attribute, where).ciphertext)
    rows = pc.indices_nonzero(protected)
    if len(rows) == 0:
        return values
    plaintext = decrypt_rows(batch, dataset, attribute, cache, rows, where, partition)
    result: pa.Array = pc.replace_with_mask(values, protected, plaintext)
    return result
