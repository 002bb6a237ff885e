"""What a protected partition must look like when it is read: the one rule of `verify`, `reveal` and `dispatch`.

Before any plaintext of a partition exists (`check_partition`, on the footers, primary keys
and wrapped-key columns of its files):

- every file's `fieldcrypt` metadata agrees with the policy (policy_auth.check_file_protection);
- no primary key repeats among the protected rows of the partition's files. The associated
  data binds a cell to its dataset, attribute and row key, not to its file (docs/FORMAT.md
  section 3), so a row copied with its key into another file of the partition would
  decrypt; only one row per key per partition is accepted. (A copy into another partition
  cannot be told from the same user's row in the next daily snapshot here.)

Then, for each attribute of each batch read (`read_attribute`, docs/FORMAT.md sections 1, 7, 8):

- the protection columns are whole (select.protection_columns);
- in a file whose metadata says the attribute is protected, a row ingested at or after its
  enablement whose value is not null holds a ciphertext: one without had its ciphertext
  removed, and its value (the mask, or whatever replaced it) is never returned as the value;
- every protected cell decrypts (reveal.decrypt_rows: authentication, row key, data key);
- the stored value of a protected row is the mask of its decrypted value;
- with a blind index, a protected row's index is the index of its decrypted value under the
  attribute's index key (or the old one while a re-index is under way), and a row that is
  not protected has none.

Everything refused names the file and row, never a value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fieldcrypt.errors import InputError, IntegrityError, PolicyError, VerificationError
from fieldcrypt.format.columns import at_or_after, read_path
from fieldcrypt.format.mask import mask_values
from fieldcrypt.keys.blind_index import BlindIndexKey
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.keys.policy_auth import check_file_protection
from fieldcrypt.lake.parquet_io import open_parquet, row_group
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec
from fieldcrypt.policy.select import UniqueRowKeys, protection_columns
from fieldcrypt.reads.reveal import decrypt_rows


@dataclass(frozen=True)
class ReadKeys:
    """What reading needs: the data-key cache, and the index keys a stored blind index may be under."""

    cache: DataKeyCache
    # attribute name -> its index key, then the old one while a re-index of it is under way
    index_keys: Mapping[str, Sequence[BlindIndexKey]] = field(default_factory=dict)


@dataclass(frozen=True)
class RowChoice:
    """The rows a read returns, when not all: the row groups it reads, and its rows in each."""

    row_groups: Callable[[pq.ParquetFile], Iterable[int]]
    rows: Callable[[pa.RecordBatch], pa.BooleanArray]  # of a batch holding the primary-key columns


def read_attribute(
    batch: pa.RecordBatch,
    dataset: DatasetSpec,
    attribute: AttributePolicy,
    keys: ReadKeys,
    where: str,
    partition: str | None = None,
) -> tuple[pa.Array, pa.BooleanArray]:
    """The attribute's real values (string or large_string), decrypted where protected and as
    stored where not (historical), and which rows are protected; refuses what the rule refuses.

    `batch` holds the attribute, its protection columns and, where the file says the attribute
    is protected, the dataset's ingestion-time column.
    """
    values = read_path(batch, attribute.path, where)
    stored = protection_columns(batch, attribute, where)
    protected = pc.is_valid(stored.ciphertext)
    if stored.declared:
        _refuse_removed_ciphertext(batch, dataset, attribute, values, protected, where)
    index = _stored_index(batch, attribute, protected, stored.declared, where)
    rows = pc.indices_nonzero(protected)
    if len(rows) == 0:
        return values, protected
    plaintext = decrypt_rows(batch, dataset, attribute, keys.cache, rows, where, partition)
    wrong_mask = pc.fill_null(pc.not_equal(values.take(rows), mask_values(plaintext, attribute.mask)), True)
    if wrong_mask.true_count:
        row = rows[pc.indices_nonzero(wrong_mask)[0].as_py()].as_py()
        raise VerificationError(
            f"{where} row {row}: a protected {attribute.name} value does not hold the mask of its decrypted value"
        )
    if index is not None:
        _check_blind_index(index.take(rows), plaintext, rows, attribute, keys, where)
    revealed: pa.Array = pc.replace_with_mask(values, protected, plaintext)
    return revealed, protected


def _refuse_removed_ciphertext(
    batch: pa.RecordBatch,
    dataset: DatasetSpec,
    attribute: AttributePolicy,
    values: pa.Array,
    protected: pa.BooleanArray,
    where: str,
) -> None:
    """A value without a ciphertext on a row the policy says was protected, in a file that says so.

    Rows ingested before the enablement (historical plaintext, also under `encrypt_history`
    until a run encrypts them) are left to be read as stored. Protection (select.select_rows)
    refuses only a mask form here, and encrypts any other value as pending.
    """
    unprotected = pc.and_(pc.is_valid(values), pc.invert(protected))
    if not unprotected.true_count:
        return
    if dataset.ingested_at not in batch.schema.names:
        raise InputError(f"{where}: ingestion-time column {dataset.ingested_at!r} of {dataset.name} not found")
    ingested = batch.column(batch.schema.get_field_index(dataset.ingested_at))
    after = at_or_after(ingested, attribute.enabled_at, f"{where}: {dataset.name}.{dataset.ingested_at}")
    removed = pc.and_(unprotected, after)
    if removed.true_count:
        row = pc.indices_nonzero(removed)[0].as_py()
        raise IntegrityError(
            f"{where} row {row}: {attribute.name} holds a value but no ciphertext on a row ingested after its "
            "enablement, in a file whose metadata says it is protected; its ciphertext was removed (the value is "
            "not returned)"
        )


def _stored_index(
    batch: pa.RecordBatch, attribute: AttributePolicy, protected: pa.BooleanArray, declared: bool, where: str
) -> pa.Array | None:
    """The attribute's blind-index column (None without a blind index); refuses an index on an unprotected row."""
    if attribute.blind_index_column is None:
        return None
    at = batch.schema.get_field_index(attribute.blind_index_column)
    if at < 0:
        if declared or protected.true_count:
            raise IntegrityError(
                f"{where}: {attribute.name} is protected with a blind index, but its column "
                f"{attribute.blind_index_column} is missing"
            )
        return None
    index = batch.column(at)
    stray = pc.and_(pc.is_valid(index), pc.invert(protected))
    if stray.true_count:
        row = pc.indices_nonzero(stray)[0].as_py()
        raise IntegrityError(f"{where} row {row}: {attribute.name} is not protected but has a blind index")
    return index


def _check_blind_index(
    stored: pa.Array,
    plaintext: pa.Array,
    rows: pa.Array,
    attribute: AttributePolicy,
    keys: ReadKeys,
    where: str,
) -> None:
    """Each protected row's stored index is the index of its decrypted value under one accepted key."""
    accepted = keys.index_keys.get(attribute.name)
    if not accepted:
        raise PolicyError(f"{where}: the blind-index key of {attribute.name} was not loaded; its indexes are unchecked")
    if stored.null_count:
        row = rows[pc.indices_nonzero(pc.is_null(stored))[0].as_py()].as_py()
        raise IntegrityError(f"{where} row {row}: protected {attribute.name} has no blind index")
    wrong = pc.invert(pc.equal(stored, accepted[0].index(plaintext)))
    for older in accepted[1:]:  # a re-index under way: rows not yet re-indexed hold the old key's index
        if not wrong.true_count:
            break
        wrong = pc.and_(wrong, pc.invert(pc.equal(stored, older.index(plaintext))))
    if wrong.true_count:
        row = rows[pc.indices_nonzero(wrong)[0].as_py()].as_py()
        raise IntegrityError(
            f"{where} row {row}: the blind index of {attribute.name} is not the index of its value "
            "(tampered, or written under another key)"
        )


def check_partition(
    store: LakeStore,
    files: Sequence[str],
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    where: str,
    choice: RowChoice | None = None,
) -> None:
    """Refuse a partition whose files disagree with the policy, or whose protected rows (of
    `choice`, when given) repeat a primary key, before any of its plaintext exists.

    Reads each file's footer and, with a primary key, its key columns and wrapped-key columns
    (dictionary-encoded: small), never a ciphertext.
    """
    sources: list[tuple[str, int]] = []  # (file, row group) of each source fed to the key check

    def load_keys(source: int) -> pa.RecordBatch:
        rel, index = sources[source]
        with open_parquet(store, rel) as parquet:
            return row_group(parquet, index, store.display(rel), list(dataset.primary_key))

    def name_source(source: int) -> str:
        rel, index = sources[source]
        return f"{store.display(rel)} row group {index}"

    row_keys = UniqueRowKeys(dataset, where, 0, load_keys, name_source=name_source, error=IntegrityError)
    for rel in files:
        at = store.display(rel)
        with open_parquet(store, rel) as parquet:
            check_file_protection(parquet, attributes, at)
            schema = parquet.schema_arrow
            wrapped_keys = [a.wrapped_key_column for a in attributes if a.wrapped_key_column in schema.names]
            if not dataset.primary_key or not wrapped_keys:
                continue
            missing = [name for name in dataset.primary_key if name not in schema.names]
            if missing:
                raise InputError(f"{at}: primary-key column {', '.join(missing)} of {dataset.name} is missing")
            columns = list(dataset.primary_key) + wrapped_keys
            chosen = range(parquet.num_row_groups) if choice is None else choice.row_groups(parquet)
            for index in chosen:
                batch = row_group(parquet, index, at, columns)
                protected = pc.is_valid(batch.column(wrapped_keys[0]))
                for column in wrapped_keys[1:]:
                    protected = pc.or_(protected, pc.is_valid(batch.column(column)))
                if choice is not None:
                    protected = pc.and_(protected, choice.rows(batch))
                sources.append((rel, index))
                row_keys.add_rows(batch, protected, len(sources) - 1)
    row_keys.check()
