"""Verification of a rewritten partition file before it replaces the original.

Row group by row group, against the original: same rows; every column outside the
protected attributes identical; for each attribute, unselected rows byte-identical,
selected rows masked, ciphertexts present, of the right length and exactly the ones
written (digest), every distinct wrapped key unwraps, and a sample of new cells
decrypts to the original value.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fieldcrypt.cache import DataKeyCache
from fieldcrypt.cell import CELL_OVERHEAD
from fieldcrypt.columns import raw_path, replace_path
from fieldcrypt.encrypt import EncryptedAttribute, ciphertext_digest
from fieldcrypt.errors import VerificationError
from fieldcrypt.mask import mask_values
from fieldcrypt.parquet_io import row_groups
from fieldcrypt.policy import AttributePolicy, DatasetSpec
from fieldcrypt.reveal import decrypt_rows
from fieldcrypt.select import existing_ciphertext, select_rows


def verify_rewrite(
    source: pq.ParquetFile,
    written: pq.ParquetFile,
    expected_schema: pa.Schema,
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    expected: Sequence[dict[str, EncryptedAttribute]],
    cache: DataKeyCache,
    where: str,
    sample_per_row_group: int = 32,
    partition: str | None = None,
) -> None:
    """Raise VerificationError unless `written` is exactly the intended rewrite of `source`."""
    if written.metadata.num_rows != source.metadata.num_rows:
        raise VerificationError(
            f"{where}: rewrite has {written.metadata.num_rows} rows, original {source.metadata.num_rows}"
        )
    if written.num_row_groups != len(expected) or source.num_row_groups != len(expected):
        raise VerificationError(f"{where}: rewrite has {written.num_row_groups} row groups, expected {len(expected)}")
    if not written.schema_arrow.equals(expected_schema, check_metadata=False):
        raise VerificationError(f"{where}: rewrite schema differs from the intended schema")
    rng = random.SystemRandom()
    for index, (before, after) in enumerate(zip(row_groups(source, where), row_groups(written, where), strict=True)):
        at = f"{where} row group {index}"
        if before.num_rows != after.num_rows:
            raise VerificationError(f"{at}: {after.num_rows} rows written, {before.num_rows} read")
        restored = after.select(before.schema.names)
        for attribute in attributes:
            restored = replace_path(restored, attribute.path, raw_path(before, attribute.path))
        if not restored.equals(before):
            raise VerificationError(f"{at}: a column outside the protected attributes changed")
        for attribute in attributes:
            _verify_attribute(
                before,
                after,
                dataset,
                attribute,
                expected[index].get(attribute.name),
                cache,
                at,
                rng,
                sample_per_row_group,
                partition,
            )


def _verify_attribute(
    before: pa.RecordBatch,
    after: pa.RecordBatch,
    dataset: DatasetSpec,
    attribute: AttributePolicy,
    written: EncryptedAttribute | None,
    cache: DataKeyCache,
    at: str,
    rng: random.SystemRandom,
    sample: int,
    partition: str | None,
) -> None:
    at = f"{at}, {attribute.name}"
    rows = select_rows(before, dataset, attribute, at)
    kept = pc.invert(rows.selected)
    cells = written.cells if written else 0
    if rows.count != cells:
        raise VerificationError(f"{at}: {cells} cells encrypted, {rows.count} selected on re-read")
    old_value, new_value = raw_path(before, attribute.path), raw_path(after, attribute.path)
    old_ct, new_ct = existing_ciphertext(before, attribute), after.column(attribute.ciphertext_column)
    new_dek = after.column(attribute.wrapped_key_column).dictionary_decode()
    old_dek_at = before.schema.get_field_index(attribute.wrapped_key_column)
    old_dek = before.column(old_dek_at) if old_dek_at >= 0 else pa.nulls(before.num_rows, pa.binary())
    if pa.types.is_dictionary(old_dek.type):
        old_dek = old_dek.dictionary_decode()
    for name, old, new in (
        ("value", old_value, new_value),
        ("ciphertext", old_ct, new_ct),
        ("wrapped key", old_dek, new_dek),
    ):
        if not pc.filter(new, kept).equals(pc.filter(old, kept)):
            raise VerificationError(f"{at}: {name} of a row that was not to be encrypted changed")
    if rows.count == 0:
        return
    plaintext = pc.filter(rows.values, rows.selected)
    if not pc.filter(new_value, rows.selected).equals(mask_values(plaintext, attribute.mask)):
        raise VerificationError(f"{at}: an encrypted row does not hold its mask")
    ciphertext = pc.filter(new_ct, rows.selected)
    if ciphertext.null_count or pc.filter(new_dek, rows.selected).null_count:
        raise VerificationError(f"{at}: an encrypted row lacks its ciphertext or wrapped key")
    lengths_ok = pc.equal(pc.binary_length(ciphertext), pc.add(pc.binary_length(plaintext), CELL_OVERHEAD))
    if not pc.all(lengths_ok).as_py():
        raise VerificationError(f"{at}: a ciphertext has the wrong length")
    if written is None or ciphertext_digest(ciphertext) != written.ciphertext_digest:
        raise VerificationError(f"{at}: ciphertexts read back differ from those written")
    for wrapped in pc.unique(new_dek.drop_null()).to_pylist():
        cache.cipher_for(wrapped, dataset.name, attribute.path, partition)
    positions = pc.indices_nonzero(rows.selected).to_pylist()
    picked = sorted(rng.sample(positions, min(sample, len(positions))))
    decrypted = decrypt_rows(after, dataset, attribute, cache, pa.array(picked, pa.int64()), at, partition)
    if not decrypted.equals(rows.values.take(pa.array(picked, pa.int64())).cast(decrypted.type)):
        raise VerificationError(f"{at}: a sampled cell did not decrypt to its original value")
