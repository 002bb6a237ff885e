"""Verification of a rewritten partition file before it replaces the original.

Row group by row group, against the original: same rows; every column outside the
protected attributes identical bit for bit (fieldcrypt.format.columns.identical: a NaN is equal
to itself, -0.0 differs from 0.0); for each attribute, unselected rows byte-identical,
selected rows masked with exactly the masks written (digest), ciphertexts present, of
the right length and exactly the ones written (digest), every distinct wrapped key
unwraps, and for a random sample of new cells the mask is recomputed from the original
value and the cell decrypts to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Collection, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fieldcrypt.engine.encrypt import EncryptedAttribute, ciphertext_digest, used_wrapped_keys, values_digest
from fieldcrypt.errors import VerificationError
from fieldcrypt.format.cell import CELL_OVERHEAD
from fieldcrypt.format.columns import identical, raw_path, replace_path
from fieldcrypt.format.mask import mask_values
from fieldcrypt.format.padding import padded_length
from fieldcrypt.keys.blind_index import BlindIndexKey
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.lake.parquet_io import read_ahead, row_groups
from fieldcrypt.policy.ledger import CellDigester
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec
from fieldcrypt.policy.select import existing_ciphertext, select_rows
from fieldcrypt.reads.reveal import decrypt_rows


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
    index_keys: Mapping[str, BlindIndexKey] | None = None,
    *,
    columns: Collection[str] | None = None,
    cells: CellDigester | None = None,
    source_batches: Sequence[pa.RecordBatch] | None = None,
) -> None:
    """Raise VerificationError unless `written` is exactly the intended rewrite of `source`.

    `columns`: the top-level columns to decode and compare (None: all). A spliced file names the ones
    protection read and changed; its other column chunks were proven copied byte for byte
    (fieldcrypt.engine.rewrite), so decoding them would prove nothing more.
    `cells`: the ledger's digester of the written file, fed each row group decoded here.
    `source_batches`: the source's row groups with those `columns`, as the rewrite decoded them from the
    source (fieldcrypt.engine.rewrite.Output.kept); None: decoded here. The written file is always decoded.
    """
    if written.metadata.num_rows != source.metadata.num_rows:
        raise VerificationError(
            f"{where}: rewrite has {written.metadata.num_rows} rows, original {source.metadata.num_rows}"
        )
    if written.num_row_groups != len(expected) or source.num_row_groups != len(expected):
        raise VerificationError(f"{where}: rewrite has {written.num_row_groups} row groups, expected {len(expected)}")
    if not written.schema_arrow.equals(expected_schema, check_metadata=False):
        raise VerificationError(f"{where}: rewrite schema differs from the intended schema")
    rng = random.SystemRandom()
    read_before = None if columns is None else [n for n in source.schema_arrow.names if n in columns]
    read_after = None if columns is None else [n for n in written.schema_arrow.names if n in columns]
    if source_batches is not None and len(source_batches) != source.num_row_groups:
        raise VerificationError(
            f"{where}: {len(source_batches)} row groups read, the original has {source.num_row_groups}"
        )
    with (
        contextlib.nullcontext(iter(source_batches))
        if source_batches is not None
        else read_ahead(row_groups(source, where, read_before)) as befores,
        read_ahead(row_groups(written, where, read_after)) as afters,
    ):
        _verify_row_groups(
            befores,
            afters,
            dataset,
            attributes,
            expected,
            cache,
            rng,
            where,
            sample_per_row_group,
            partition,
            index_keys or {},
            cells,
        )


def _verify_row_groups(
    befores: Iterator[pa.RecordBatch],
    afters: Iterator[pa.RecordBatch],
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    expected: Sequence[dict[str, EncryptedAttribute]],
    cache: DataKeyCache,
    rng: random.SystemRandom,
    where: str,
    sample_per_row_group: int,
    partition: str | None,
    index_keys: Mapping[str, BlindIndexKey],
    cells: CellDigester | None,
) -> None:
    for index, (before, after) in enumerate(zip(befores, afters, strict=True)):
        at = f"{where} row group {index}"
        if cells is not None:
            cells.add(after)
        if before.num_rows != after.num_rows:
            raise VerificationError(f"{at}: {after.num_rows} rows written, {before.num_rows} read")
        # Both sides get the original attribute values written back in, so what is compared
        # is everything else, bit for bit (fieldcrypt.format.columns.identical: NaN-safe).
        restored = after.select(before.schema.names)
        original = before
        for attribute in attributes:
            values = raw_path(before, attribute.path, at)
            restored = replace_path(restored, attribute.path, values, at)
            original = replace_path(original, attribute.path, values, at)
            # A file protected earlier already has these columns; new cells change them, and
            # _verify_attribute checks them row by row (kept rows identical, new rows decrypt).
            for column in (attribute.ciphertext_column, attribute.wrapped_key_column, attribute.blind_index_column):
                at_column = before.schema.get_field_index(column) if column else -1
                if at_column >= 0:
                    restored = restored.set_column(at_column, before.schema.field(at_column), before.column(at_column))
        if not identical(restored, original):
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
                index_keys.get(attribute.name),
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
    index_key: BlindIndexKey | None,
) -> None:
    at = f"{at}, {attribute.name}"
    rows = select_rows(before, dataset, attribute, at)
    kept = pc.invert(rows.selected)
    cells = written.cells if written else 0
    if rows.count != cells:
        raise VerificationError(f"{at}: {cells} cells encrypted, {rows.count} selected on re-read")
    old_value, new_value = raw_path(before, attribute.path, at), raw_path(after, attribute.path, at)
    old_ct, new_ct = existing_ciphertext(before, attribute), after.column(attribute.ciphertext_column)
    new_dek = after.column(attribute.wrapped_key_column)
    old_dek_at = before.schema.get_field_index(attribute.wrapped_key_column)
    old_dek = before.column(old_dek_at) if old_dek_at >= 0 else pa.nulls(before.num_rows, pa.binary())
    compared = [("value", old_value, new_value), ("ciphertext", old_ct, new_ct), ("wrapped key", old_dek, new_dek)]
    if attribute.blind_index_column is not None:
        old_index_at = before.schema.get_field_index(attribute.blind_index_column)
        old_index = before.column(old_index_at) if old_index_at >= 0 else pa.nulls(before.num_rows, pa.binary())
        new_index = after.column(attribute.blind_index_column)
        compared.append(("blind index", old_index, new_index))
    for name, old, new in compared:
        # Filtered first, so a wrapped-key dictionary is decoded for the kept rows only.
        if not _decoded(pc.filter(new, kept)).equals(_decoded(pc.filter(old, kept))):
            raise VerificationError(f"{at}: {name} of a row that was not to be encrypted changed")
    if rows.count == 0:
        return
    # Every mask is the one computed when the row was encrypted (digest), and a random sample
    # of them is recomputed from the original value below.
    if written is None or values_digest(pc.filter(new_value, rows.selected)) != written.mask_digest:
        raise VerificationError(f"{at}: an encrypted row does not hold its mask")
    # Lengths and validity are compared per row; the ciphertext bytes are not copied out of the column.
    ct_lengths = pc.filter(pc.binary_length(new_ct), rows.selected)
    if ct_lengths.null_count or pc.filter(new_dek, rows.selected).null_count:
        raise VerificationError(f"{at}: an encrypted row lacks its ciphertext or wrapped key")
    plain_lengths = pc.filter(pc.binary_length(rows.values), rows.selected)
    if attribute.pad_to:  # format 2: the padded plaintext's length (fieldcrypt.format.padding)
        plain_lengths = pa.array(padded_length(plain_lengths.to_numpy(zero_copy_only=False), attribute.pad_to))
    lengths_ok = pc.equal(ct_lengths, pc.add(plain_lengths, CELL_OVERHEAD))
    if not pc.all(lengths_ok).as_py():
        raise VerificationError(f"{at}: a ciphertext has the wrong length")
    if _selected_digest(new_ct, rows.selected, ct_lengths) != written.ciphertext_digest:
        raise VerificationError(f"{at}: ciphertexts read back differ from those written")
    for wrapped in used_wrapped_keys(new_dek):
        cache.cipher_for(wrapped, dataset.name, attribute.path, partition)
    # Sampled by position among the selected rows (no Python object per selected row).
    positions = pc.indices_nonzero(rows.selected).to_numpy()
    chosen = sorted(rng.sample(range(len(positions)), min(sample, len(positions))))
    picked = pa.array(positions[chosen], pa.int64())
    original = rows.values.take(picked)
    if not new_value.take(picked).equals(mask_values(original, attribute.mask)):
        raise VerificationError(f"{at}: an encrypted row does not hold its mask")
    if attribute.blind_index_column is not None:
        if index_key is None or ciphertext_digest(pc.filter(new_index, rows.selected)) != written.index_digest:
            raise VerificationError(f"{at}: blind indexes read back differ from those written")
        if not new_index.take(picked).equals(index_key.index(original)):
            raise VerificationError(f"{at}: a sampled blind index is not the index of its value")
    decrypted = decrypt_rows(after, dataset, attribute, cache, picked, at, partition)
    if not decrypted.equals(original.cast(decrypted.type)):
        raise VerificationError(f"{at}: a sampled cell did not decrypt to its original value")


def _selected_digest(column: pa.Array, selected: pa.BooleanArray, lengths: pa.Array) -> bytes:
    """ciphertext_digest of the selected cells of a binary column (`lengths`: theirs, none null).

    When the selected cells hold every byte of the column's data span (the other rows are null or empty,
    as in a file's first protection), that span is their concatenation, hashed in place; otherwise they are
    copied out first."""
    if column.type == pa.binary() and len(column):
        offsets = np.frombuffer(column.buffers()[1], dtype=np.int32, count=len(column) + 1, offset=column.offset * 4)
        if int(pc.sum(lengths, min_count=0).as_py()) == int(offsets[-1]) - int(offsets[0]):
            data = column.buffers()[2]
            return hashlib.sha256(b"" if data is None else memoryview(data)[offsets[0] : offsets[-1]]).digest()
    return ciphertext_digest(pc.filter(column, selected))


def _decoded(column: pa.Array) -> pa.Array:
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
