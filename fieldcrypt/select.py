"""Which rows of a batch get encrypted for one attribute.

A row is selected when it was ingested at or after the attribute's enablement, its
value is not null and it is not protected yet (its ciphertext column is null).
Everything else is left exactly as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.columns import TEXT_TYPES, at_or_after, read_path
from fieldcrypt.errors import InputError
from fieldcrypt.policy import AttributePolicy, DatasetSpec


@dataclass(frozen=True)
class RowSelection:
    """The rows of one batch to encrypt for one attribute, and how the others stand."""

    selected: pa.BooleanArray
    values: pa.Array
    existing_ciphertext: pa.Array
    count: int
    already_protected: int
    historical_plaintext: int
    null_values: int


def select_rows(batch: pa.RecordBatch, dataset: DatasetSpec, attribute: AttributePolicy, where: str) -> RowSelection:
    values = read_path(batch, attribute.path)
    if values.type not in TEXT_TYPES:
        raise InputError(f"{where}: {attribute.name} is {values.type}; only string columns can be protected")
    if dataset.ingested_at not in batch.schema.names:
        raise InputError(f"{where}: ingestion-time column {dataset.ingested_at!r} of {dataset.name} not found")
    ingested = batch.column(batch.schema.get_field_index(dataset.ingested_at))
    after = at_or_after(ingested, attribute.enabled_at, f"{where}: {dataset.name}.{dataset.ingested_at}")
    existing = existing_ciphertext(batch, attribute)
    protected = pc.is_valid(existing)
    has_value = pc.is_valid(values)
    unprotected_value = pc.and_(has_value, pc.invert(protected))
    selected = pc.and_(unprotected_value, after)
    return RowSelection(
        selected=selected,
        values=values,
        existing_ciphertext=existing,
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
