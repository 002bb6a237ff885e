"""Which rows of a batch get encrypted for one attribute, and the integrity of those already protected.

A row is selected when it was ingested at or after the attribute's enablement, its
value is not null and it is not protected yet (its ciphertext column is null).
Everything else is left exactly as it is.

A protected row is whole: ciphertext and wrapped key both present. A row with only one
of them, a file whose fieldcrypt metadata names an attribute whose columns are gone,
and a row that would be selected although it already holds the attribute's mask in a
file that says the attribute is protected (its ciphertext was dropped) are
IntegrityErrors: never re-encrypted, never "repaired" into ciphertexts without a key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.errors import FieldcryptError, InputError, IntegrityError
from fieldcrypt.format.columns import at_or_after, check_attribute_type, read_path, row_key_bytes
from fieldcrypt.format.file_metadata import FILE_METADATA_KEY
from fieldcrypt.format.mask import is_mask_form
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec


@dataclass(frozen=True)
class RowSelection:
    """The rows of one batch to encrypt for one attribute, and how the others stand."""

    selected: pa.BooleanArray
    values: pa.Array = field(repr=False)  # plaintext
    existing_ciphertext: pa.Array = field(repr=False)
    count: int
    already_protected: int
    historical_plaintext: int
    null_values: int


@dataclass(frozen=True)
class ProtectionColumns:
    """An attribute's ciphertext and wrapped-key cells in one batch (all null where the file has no such column)."""

    ciphertext: pa.Array = field(repr=False)
    wrapped_key: pa.Array = field(repr=False)
    declared: bool  # the file's fieldcrypt metadata says the attribute is protected in it


def declared_attributes(schema: pa.Schema, where: str) -> set[str]:
    """The attributes a file's fieldcrypt metadata (written with its protection columns) names."""
    raw = (schema.metadata or {}).get(FILE_METADATA_KEY)
    if raw is None:
        return set()
    try:
        described = json.loads(raw)["attributes"]
        return {str(name) for name in described}
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{where}: the file's fieldcrypt metadata is not JSON naming its attributes") from None


def protection_columns(batch: pa.RecordBatch, attribute: AttributePolicy, where: str) -> ProtectionColumns:
    """The attribute's protection columns, refusing a protected row with missing parts."""
    declared = attribute.name in declared_attributes(batch.schema, where)
    ct_at = batch.schema.get_field_index(attribute.ciphertext_column)
    dek_at = batch.schema.get_field_index(attribute.wrapped_key_column)
    if declared:
        columns = ((attribute.ciphertext_column, ct_at), (attribute.wrapped_key_column, dek_at))
        missing = [column for column, at in columns if at < 0]
        if missing:
            raise IntegrityError(
                f"{where}: the file's metadata says {attribute.name} is protected, but its column "
                f"{' and '.join(missing)} is missing"
            )
    ciphertext = batch.column(ct_at) if ct_at >= 0 else pa.nulls(batch.num_rows, pa.binary())
    if dek_at < 0:
        if ciphertext.null_count != len(ciphertext):
            raise IntegrityError(
                f"{where}: {attribute.name} has ciphertexts but no wrapped-key column {attribute.wrapped_key_column}"
            )
        wrapped = pa.nulls(batch.num_rows, pa.binary())
    else:
        wrapped = batch.column(dek_at)
    has_ciphertext = pc.is_valid(ciphertext)
    half = pc.xor(has_ciphertext, pc.is_valid(wrapped))
    if half.true_count:
        row = pc.indices_nonzero(half)[0].as_py()
        lacking = "wrapped key" if has_ciphertext[row].as_py() else "ciphertext"
        raise IntegrityError(f"{where} row {row}: protected {attribute.name} has no {lacking}")
    return ProtectionColumns(ciphertext, wrapped, declared)


def select_rows(batch: pa.RecordBatch, dataset: DatasetSpec, attribute: AttributePolicy, where: str) -> RowSelection:
    check_attribute_type(batch.schema, attribute.path, attribute.name, where)
    values = read_path(batch, attribute.path, where)
    if dataset.ingested_at not in batch.schema.names:
        raise InputError(f"{where}: ingestion-time column {dataset.ingested_at!r} of {dataset.name} not found")
    ingested = batch.column(batch.schema.get_field_index(dataset.ingested_at))
    after = at_or_after(ingested, attribute.enabled_at, f"{where}: {dataset.name}.{dataset.ingested_at}")
    if attribute.encrypt_history:  # opted in: rows ingested before the enablement are encrypted too
        after = pc.fill_null(pa.nulls(batch.num_rows, pa.bool_()), True)
    stored = protection_columns(batch, attribute, where)
    protected = pc.is_valid(stored.ciphertext)
    has_value = pc.is_valid(values)
    unprotected_value = pc.and_(has_value, pc.invert(protected))
    selected = pc.and_(unprotected_value, after)
    if stored.declared and selected.true_count:
        stripped = pc.and_(selected, is_mask_form(values, attribute.mask))
        if stripped.true_count:
            row = pc.indices_nonzero(stripped)[0].as_py()
            raise IntegrityError(
                f"{where} row {row}: {attribute.name} holds a mask but no ciphertext, in a file that says it is "
                "protected; its ciphertext was removed (the mask is not re-encrypted)"
            )
    return RowSelection(
        selected=selected,
        values=values,
        existing_ciphertext=stored.ciphertext,
        count=selected.true_count,
        already_protected=protected.true_count,
        historical_plaintext=pc.and_(unprotected_value, pc.invert(after)).true_count,
        null_values=values.null_count,
    )


def existing_ciphertext(batch: pa.RecordBatch, attribute: AttributePolicy) -> pa.Array:
    """The attribute's ciphertext column, or all nulls when the file predates its enablement."""
    index = batch.schema.get_field_index(attribute.ciphertext_column)
    if index < 0:
        return pa.nulls(batch.num_rows, pa.binary())
    return batch.column(index)


class UniqueRowKeys:
    """Refuses null or repeated primary keys among the rows a caller marks as involved.

    Protection marks a file's protected and to-be-protected rows; a read (fieldcrypt.reads.read_rule)
    marks the protected rows of every file of a partition. A repeated key would let two
    rows' cells be swapped undetected (the key is what binds a cell to its row, and not the
    file: docs/FORMAT.md section 3). Fed batch by batch, each from a numbered *source*
    (a row group of the file, or of one of the partition's files); `check` at the end.

    Memory: 8 bytes and 1 bit per row fed (a keyed 64-bit hash of each involved row's key,
    and which rows are involved), never the keys. Equal keys always hash equal, so no repeat
    is missed. Only when hashes repeat are the keys re-read, through `load_keys(source)` (the
    primary-key columns of that source, its rows as fed), to confirm on the keys themselves
    and name the rows: a hash collision never refuses a valid file.
    """

    def __init__(
        self,
        dataset: DatasetSpec,
        where: str,
        rows: int,
        load_keys: Callable[[int], pa.RecordBatch],
        *,
        name_source: Callable[[int], str] = "row group {}".format,
        error: type[FieldcryptError] = InputError,
    ) -> None:
        self.dataset = dataset
        self.where = where
        self._load_keys = load_keys
        self._name_source = name_source
        self._error = error
        self._seed = np.frombuffer(os.urandom(16), dtype=np.uint64)
        self._hashes = np.empty(rows if dataset.primary_key else 0, dtype=np.uint64)
        self._count = 0
        self._involved: list[tuple[int, int, np.ndarray]] = []  # (source, rows, packed involvement bits)

    def add(self, batch: pa.RecordBatch, selections: Sequence[RowSelection], row_group: int) -> None:
        """Protection: a row group's protected and to-be-protected rows."""
        if not self.dataset.primary_key or not selections:
            return
        involved = selections[0].selected
        for rows in selections:
            involved = pc.or_(involved, pc.or_(rows.selected, pc.is_valid(rows.existing_ciphertext)))
        self.add_rows(batch, involved, row_group)

    def add_rows(self, batch: pa.RecordBatch, involved: pa.BooleanArray, source: int) -> None:
        """The `involved` rows of `batch` (which holds at least the primary-key columns)."""
        if not self.dataset.primary_key or not involved.true_count:
            return
        at = f"{self.where} {self._name_source(source)}"
        hashes = self._hashed(batch, involved, at)
        if self._count + len(hashes) > len(self._hashes):  # a partition's row count is not known up front
            grown = np.empty(max(2 * len(self._hashes), self._count + len(hashes)), dtype=np.uint64)
            grown[: self._count] = self._hashes[: self._count]
            self._hashes = grown
        self._hashes[self._count : self._count + len(hashes)] = hashes
        self._count += len(hashes)
        self._involved.append((source, batch.num_rows, np.packbits(involved.to_numpy(zero_copy_only=False))))

    def _hashed(self, batch: pa.RecordBatch, involved: pa.BooleanArray, at: str) -> np.ndarray:
        """The hashes of the involved rows' keys, in row order; a null key is refused."""
        single = self.dataset.primary_key[0] if len(self.dataset.primary_key) == 1 else None
        if single is not None and pa.types.is_integer(batch.schema.field(single).type):
            keys = pc.filter(batch.column(single), involved)  # the common case, hashed without text
        else:
            keys = pc.filter(row_key_bytes(batch, self.dataset.primary_key, at), involved)
        if keys.null_count:
            row = pc.indices_nonzero(involved)[pc.indices_nonzero(pc.is_null(keys))[0].as_py()].as_py()
            raise self._error(
                f"{at} row {row}: primary key ({', '.join(self.dataset.primary_key)}) of {self.dataset.name} is null "
                "on a row that is protected or to be encrypted"
            )
        return _integer_hashes(keys, self._seed) if pa.types.is_integer(keys.type) else _keyed_hashes(keys, self._seed)

    def check(self) -> None:
        hashes = self._hashes[: self._count]
        hashes.sort()
        repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        self._hashes = np.empty(0, dtype=np.uint64)
        if not len(repeated):
            return
        seen: dict[bytes, tuple[int, int]] = {}
        for source, count, packed in self._involved:
            involved = pa.array(np.unpackbits(packed, count=count).astype(bool))
            batch = self._load_keys(source)
            rows = pc.indices_nonzero(involved).to_numpy()
            suspect = np.isin(self._hashed(batch, involved, self.where), repeated)
            canonical = row_key_bytes(batch, self.dataset.primary_key, self.where)
            for row in rows[suspect]:
                key = canonical[int(row)].as_py()
                if key in seen:
                    first = seen[key]
                    raise self._error(
                        f"{self.where}: primary key ({', '.join(self.dataset.primary_key)}) of {self.dataset.name} "
                        f"repeats on {self._name_source(first[0])} row {first[1]} and {self._name_source(source)} "
                        f"row {row}; a repeated key would let two rows' cells be swapped undetected"
                    )
                seen[key] = (source, int(row))


_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX_1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX_2
    mixed: np.ndarray = x ^ (x >> np.uint64(31))
    return mixed


def _keyed_hashes(keys: pa.Array, seed: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each (non-null, binary) key under a per-file random seed.

    Equal keys give equal hashes. A key's hash mixes its length with the wrapping sum of
    (byte + 1) * m[position] over its bytes (m: random odd multipliers from the seed), so
    distinct keys rarely collide; a collision costs a re-read, never a wrong answer.
    """
    if keys.type != pa.binary():
        keys = keys.cast(pa.binary())
    count = len(keys)
    offsets = np.frombuffer(keys.buffers()[1], dtype=np.int32, count=count + 1, offset=keys.offset * 4).astype(np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    data = keys.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8)[start:end] if data is not None else np.empty(0, np.uint8)
    lengths = np.diff(offsets)
    longest = int(lengths.max()) if count else 0
    multipliers = _mix(np.arange(longest, dtype=np.uint64) ^ seed[0]) | np.uint64(1)
    positions = np.arange(end - start, dtype=np.int64) - np.repeat(offsets[:-1] - start, lengths)
    terms = (raw.astype(np.uint64) + np.uint64(1)) * multipliers[positions]
    sums = np.concatenate((np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)))
    per_key = sums[offsets[1:] - start] - sums[offsets[:-1] - start]
    return _mix(per_key ^ _mix(lengths.astype(np.uint64) ^ seed[1]))


def _integer_hashes(values: pa.Array, seed: np.ndarray) -> np.ndarray:
    """The hash of each (non-null) integer key: a bijection of its 64 bits, so no two distinct keys collide."""
    as_int64 = values.cast(pa.uint64() if pa.types.is_unsigned_integer(values.type) else pa.int64())
    bits = as_int64.to_numpy(zero_copy_only=False).view(np.uint64)
    return _mix(bits ^ seed[0])
