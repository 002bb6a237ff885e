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
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.columns import at_or_after, check_attribute_type, read_path, row_key_bytes
from fieldcrypt.errors import InputError, IntegrityError
from fieldcrypt.mask import is_mask_form
from fieldcrypt.policy import AttributePolicy, DatasetSpec

FILE_METADATA_KEY = b"fieldcrypt"


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
    """Refuses null or repeated primary keys among a file's protected and to-be-protected rows.

    A repeated key would let two rows' cells be swapped undetected (the key is what binds
    a cell to its row). Fed row group by row group; `check` at the end of the file.
    Holds the canonical keys of those rows only (not their values).
    """

    def __init__(self, dataset: DatasetSpec, where: str) -> None:
        self.dataset = dataset
        self.where = where
        self._keys: list[pa.Array] = []
        self._places: list[tuple[int, pa.Array]] = []

    def add(self, batch: pa.RecordBatch, selections: Sequence[RowSelection], row_group: int) -> None:
        if not self.dataset.primary_key or not selections:
            return
        involved = selections[0].selected
        for rows in selections:
            involved = pc.or_(involved, pc.or_(rows.selected, pc.is_valid(rows.existing_ciphertext)))
        if not involved.true_count:
            return
        at = f"{self.where} row group {row_group}"
        keys = pc.filter(row_key_bytes(batch, self.dataset.primary_key, at), involved)
        places = pc.indices_nonzero(involved)
        if keys.null_count:
            row = places[pc.indices_nonzero(pc.is_null(keys))[0].as_py()].as_py()
            raise InputError(
                f"{at} row {row}: primary key ({', '.join(self.dataset.primary_key)}) of {self.dataset.name} is null "
                "on a row that is protected or to be encrypted"
            )
        self._keys.append(keys)
        self._places.append((row_group, places))

    def check(self) -> None:
        if not self._keys:
            return
        keys = pa.chunked_array(self._keys, pa.binary()).combine_chunks()
        if len(pc.unique(keys)) == len(keys):  # the common case, and the cheap test (~0.1 s per million keys)
            return
        counts = pc.value_counts(keys)
        repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        if not len(repeated):
            return
        first, second = pc.indices_nonzero(pc.equal(keys, repeated[0])).to_pylist()[:2]
        raise InputError(
            f"{self.where}: primary key ({', '.join(self.dataset.primary_key)}) of {self.dataset.name} repeats on "
            f"{self._place(first)} and {self._place(second)}; a repeated key would let two rows' cells be swapped "
            "undetected"
        )

    def _place(self, index: int) -> str:
        for row_group, places in self._places:
            if index < len(places):
                return f"row group {row_group} row {places[index].as_py()}"
            index -= len(places)
        raise AssertionError("index beyond the keys added")
