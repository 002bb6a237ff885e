"""Decrypting protected attributes in memory (dispatch jobs, `fieldcrypt verify`).

Plaintext only ever lives in the returned Arrow arrays; nothing here writes or logs it.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.cache import DataKeyCache
from fieldcrypt.cell import ad_prefix, associated_data, decrypt_cell
from fieldcrypt.columns import raw_path, read_path, row_key_text
from fieldcrypt.errors import InputError, IntegrityError, KeyProviderError
from fieldcrypt.policy import AttributePolicy, DatasetSpec


def decrypt_rows(
    batch: pa.RecordBatch,
    dataset: DatasetSpec,
    attribute: AttributePolicy,
    cache: DataKeyCache,
    rows: pa.Array,
    where: str,
    partition: str | None = None,
) -> pa.Array:
    """Plaintext (as UTF-8 text) of the protected cells at `rows`; IntegrityError on any tampering."""
    ciphertext = batch.column(attribute.ciphertext_column).take(rows)
    wrapped = batch.column(attribute.wrapped_key_column).take(rows)
    if pa.types.is_dictionary(wrapped.type):
        wrapped = wrapped.dictionary_decode()
    if ciphertext.null_count or wrapped.null_count:
        raise InputError(f"{where}: asked to decrypt a row that is not protected")
    keys = None
    if dataset.primary_key is not None:
        keys = row_key_text(batch, dataset.primary_key, where).take(rows).cast(pa.binary()).to_pylist()
    prefix = ad_prefix(dataset.name, attribute.path, has_row_key=keys is not None)
    out: list[bytes] = []
    row_numbers = rows.to_pylist()
    for i, (cell, wrapped_value) in enumerate(zip(ciphertext.to_pylist(), wrapped.to_pylist(), strict=True)):
        try:
            cipher = cache.cipher_for(wrapped_value, dataset.name, attribute.path, partition)
        except (IntegrityError, KeyProviderError) as exc:  # say which file and row hold the bad wrapped key
            raise type(exc)(f"{where} row {row_numbers[i]}: {exc}") from None
        ad = associated_data(prefix, keys[i] if keys is not None else None)
        out.append(decrypt_cell(cipher, cell, ad, f"{where} row {row_numbers[i]}"))
    value_type = raw_path(batch, attribute.path).type
    return pa.array(out, pa.large_binary() if value_type == pa.large_string() else pa.binary()).cast(value_type)


def reveal(
    batch: pa.RecordBatch,
    dataset: DatasetSpec,
    attribute: AttributePolicy,
    cache: DataKeyCache,
    where: str = "batch",
    partition: str | None = None,
) -> pa.Array:
    """The attribute's real values: decrypted where protected, as stored where not (historical)."""
    values = read_path(batch, attribute.path)
    if batch.schema.get_field_index(attribute.ciphertext_column) < 0:
        return values
    protected = pc.is_valid(batch.column(attribute.ciphertext_column))
    rows = pc.indices_nonzero(protected)
    if len(rows) == 0:
        return values
    plaintext = decrypt_rows(batch, dataset, attribute, cache, rows, where, partition)
    result: pa.Array = pc.replace_with_mask(values, protected, plaintext)
    return result
