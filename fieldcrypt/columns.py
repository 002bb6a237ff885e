"""Reading and replacing an attribute (a column or a field inside struct columns) in Arrow."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.errors import InputError

TEXT_TYPES = (pa.string(), pa.large_string())
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def field_type(schema: pa.Schema, path: str, where: str) -> pa.DataType:
    """The Arrow type at a dot path; a clear error when the path does not exist."""
    names = path.split(".")
    if names[0] not in schema.names:
        raise InputError(f"{where}: column {names[0]!r} not found (columns: {', '.join(schema.names)})")
    current: pa.DataType = schema.field(names[0]).type
    for depth, name in enumerate(names[1:], start=1):
        parent = ".".join(names[:depth])
        if not pa.types.is_struct(current):
            raise InputError(f"{where}: {parent} is {current}, not a struct, so it has no field {name!r}")
        index = current.get_field_index(name)
        if index < 0:
            raise InputError(f"{where}: struct {parent} has no field {name!r}")
        current = current.field(index).type
    return current


def read_path(batch: pa.RecordBatch, path: str) -> pa.Array:
    """The attribute's values; null wherever the value or any enclosing struct is null."""
    names = path.split(".")
    array = batch.column(batch.schema.get_field_index(names[0]))
    for name in names[1:]:
        array = pc.struct_field(array, name)
    return array


def replace_path(batch: pa.RecordBatch, path: str, values: pa.Array) -> pa.RecordBatch:
    """A batch with the attribute replaced; enclosing structs keep their validity and other fields."""
    names = path.split(".")
    index = batch.schema.get_field_index(names[0])
    column = _replace_in(batch.column(index), names[1:], values)
    return batch.set_column(index, batch.schema.field(index), column)


def _replace_in(array: pa.Array, names: list[str], values: pa.Array) -> pa.Array:
    if not names:
        return values
    struct: pa.StructArray = array
    fields = [struct.type.field(i) for i in range(struct.type.num_fields)]
    children = [struct.field(i) for i in range(len(fields))]
    target = struct.type.get_field_index(names[0])
    children[target] = _replace_in(children[target], names[1:], values)
    return pa.StructArray.from_arrays(children, fields=fields, mask=struct.is_null() if struct.null_count else None)


def raw_path(batch: pa.RecordBatch, path: str) -> pa.Array:
    """The attribute's stored child values, ignoring enclosing struct validity."""
    names = path.split(".")
    array = batch.column(batch.schema.get_field_index(names[0]))
    for name in names[1:]:
        array = array.field(name)
    return array


def at_or_after(ingested: pa.Array, moment: datetime, where: str) -> pa.BooleanArray:
    """Rows whose ingestion time is at or after `moment`, exact to the column's unit.

    Naive timestamps are taken as UTC. A row 1 µs before the moment is false.
    """
    if not pa.types.is_timestamp(ingested.type):
        raise InputError(f"{where}: ingestion-time column is {ingested.type}, expected a timestamp")
    if ingested.null_count:
        raise InputError(f"{where}: ingestion-time column has {ingested.null_count} null values")
    unit = ingested.type.unit
    delta = moment.astimezone(UTC) - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    per_second = _PER_SECOND[unit]
    if per_second >= 1_000_000:
        threshold = micros * (per_second // 1_000_000)
    else:
        threshold = -(-micros // (1_000_000 // per_second))  # ceiling: a row at 12:00:00.000 is before 12:00:00.0005
    result: pa.BooleanArray = pc.greater_equal(ingested.view(pa.int64()), pa.scalar(threshold, pa.int64()))
    return result


def row_key_text(batch: pa.RecordBatch, column: str, where: str) -> pa.Array:
    """The primary key as UTF-8 text (integers in decimal), the row key bound into each cell."""
    if column not in batch.schema.names:
        raise InputError(f"{where}: primary-key column {column!r} not found")
    keys = batch.column(batch.schema.get_field_index(column))
    if pa.types.is_integer(keys.type):
        keys = pc.cast(keys, pa.string())
    elif keys.type not in TEXT_TYPES:
        raise InputError(f"{where}: primary-key column {column!r} is {keys.type}; expected an integer or string type")
    return keys
