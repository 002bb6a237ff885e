"""Reading and replacing an attribute in Arrow, row keys, and exact comparison of columns.

An attribute (fieldcrypt.format.attribute_path) is a text column, a text field at any depth of
nested structs, or the text value under one key of a `map<string, string>` column. Its
values are handled as plain `string`/`large_string` (the *text view*: dictionaries
decoded, `string_view` as `large_string`) and written back in the stored type.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.errors import InputError, PolicyError
from fieldcrypt.format.attribute_path import AttributePath

TEXT_TYPES = (pa.string(), pa.large_string(), pa.string_view())
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_LENGTH = 4  # bytes of the big-endian length before each component of a composite row key


# -- types --------------------------------------------------------------------------------


def is_text_type(value_type: pa.DataType) -> bool:
    """string, large_string, string_view, or a dictionary of one of them (any index type)."""
    if pa.types.is_dictionary(value_type):
        return bool(value_type.value_type in TEXT_TYPES)
    return value_type in TEXT_TYPES


def text_type(value_type: pa.DataType) -> pa.DataType:
    """The type of the text view of a stored text type."""
    if pa.types.is_dictionary(value_type):
        value_type = value_type.value_type
    return pa.large_string() if value_type in (pa.large_string(), pa.string_view()) else pa.string()


def as_text(values: pa.Array) -> pa.Array:
    """The text view of stored text values: dictionary decoded, string_view as large_string."""
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if values.type == pa.string_view():
        values = values.cast(pa.large_string())
    return values


def as_stored(values: pa.Array, stored_type: pa.DataType) -> pa.Array:
    """Text-view values back in the stored type (a dictionary re-encoded with its index type)."""
    if pa.types.is_dictionary(stored_type):
        encoded = pc.dictionary_encode(values.cast(stored_type.value_type))
        index_type = stored_type.index_type
        signed = pa.types.is_signed_integer(index_type)
        if len(encoded.dictionary) > (1 << (index_type.bit_width - (1 if signed else 0))) - 1:
            raise InputError(f"dictionary of {len(encoded.dictionary)} values does not fit {stored_type.index_type}")
        result: pa.Array = pa.DictionaryArray.from_arrays(
            encoded.indices.cast(stored_type.index_type), encoded.dictionary
        )
        return result
    return values if values.type == stored_type else values.cast(stored_type)


def field_type(schema: pa.Schema, path: str, where: str) -> pa.DataType:
    """The stored Arrow type of an attribute (for a map key: the map's value type); a clear
    error when the path does not exist or a map's keys are not text."""
    parsed = _parse(path, where)
    names = parsed.names
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
    if parsed.map_key is not None:
        holder = ".".join(names)
        if not pa.types.is_map(current):
            raise InputError(f"{where}: {holder} is {current}, not a map, so it has no key {parsed.map_key!r}")
        if not is_text_type(current.key_type):
            raise InputError(f"{where}: map {holder} has {current.key_type} keys; only text keys can be looked up")
        current = current.item_type
    return current


def check_attribute_type(schema: pa.Schema, path: str, attribute: str, where: str) -> None:
    """Refuse an attribute whose stored type cannot be protected, naming it and its type."""
    value_type = field_type(schema, path, where)
    if not is_text_type(value_type):
        raise InputError(
            f"{where}: {attribute} is {value_type}; only string columns can be protected (string, large_string, "
            "string_view or a dictionary of strings; a column, a struct field at any depth, or a map<string, string> "
            "value by key)"
        )


def _parse(path: str, where: str) -> AttributePath:
    try:
        return AttributePath.parse(path)
    except PolicyError as exc:
        raise InputError(f"{where}: {exc}") from None


# -- reading and replacing an attribute ------------------------------------------------------


def read_path(batch: pa.RecordBatch, path: str, where: str = "batch") -> pa.Array:
    """The attribute's text values; null wherever the value, its map key or any enclosing struct or map is null."""
    parsed = _parse(path, where)
    array = batch.column(batch.schema.get_field_index(parsed.names[0]))
    for name in parsed.names[1:]:
        array = pc.struct_field(array, name)
    if parsed.map_key is None:
        return as_text(array)
    values = _map_values(array, parsed.map_key, f"{where}: {path}")
    if array.null_count:
        values = pc.if_else(array.is_valid(), values, pa.scalar(None, values.type))
    return values


def raw_path(batch: pa.RecordBatch, path: str, where: str = "batch") -> pa.Array:
    """The attribute's stored text values, ignoring enclosing struct validity (a map row
    without the key, or a null map row, gives null)."""
    parsed = _parse(path, where)
    array = batch.column(batch.schema.get_field_index(parsed.names[0]))
    for name in parsed.names[1:]:
        array = array.field(name)
    if parsed.map_key is None:
        return as_text(array)
    return _map_values(array, parsed.map_key, f"{where}: {path}")


def replace_path(batch: pa.RecordBatch, path: str, values: pa.Array, where: str = "batch") -> pa.RecordBatch:
    """A batch with the attribute's stored values replaced by `values` (text view, one per row).

    Enclosing structs keep their validity and other fields; a map keeps its keys, its
    other entries and its validity, and only the value under the attribute's key
    changes (a row whose map lacks the key must have a null value here)."""
    parsed = _parse(path, where)
    index = batch.schema.get_field_index(parsed.names[0])
    column = _replace_in(batch.column(index), list(parsed.names[1:]), parsed.map_key, values, f"{where}: {path}")
    return batch.set_column(index, batch.schema.field(index), column)


def _replace_in(array: pa.Array, names: list[str], map_key: str | None, values: pa.Array, where: str) -> pa.Array:
    if not names:
        if map_key is None:
            return as_stored(values, array.type)
        return _map_replaced(array, map_key, values, where)
    struct: pa.StructArray = array
    fields = [struct.type.field(i) for i in range(struct.type.num_fields)]
    children = [struct.field(i) for i in range(len(fields))]
    target = struct.type.get_field_index(names[0])
    children[target] = _replace_in(children[target], names[1:], map_key, values, where)
    return pa.StructArray.from_arrays(children, fields=fields, mask=struct.is_null() if struct.null_count else None)


def _map_entries(array: pa.MapArray, key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows whose map holds `key`, position of that entry in the map's child arrays); a row
    holding the key twice is refused (which of its values is the attribute would be ambiguous)."""
    offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    keys = as_text(array.keys.slice(start, end - start))
    hits = pc.fill_null(pc.equal(keys, pa.scalar(key, keys.type)), False).to_numpy(zero_copy_only=False)
    positions = np.flatnonzero(hits).astype(np.int64) + start
    rows = np.searchsorted(offsets, positions, side="right") - 1
    if len(rows) > 1:
        repeated = np.flatnonzero(rows[1:] == rows[:-1])
        if len(repeated):
            raise InputError(f"{where}: row {int(rows[repeated[0]])} holds the map key twice")
    return rows, positions


def _map_values(array: pa.MapArray, key: str, where: str) -> pa.Array:
    rows, positions = _map_entries(array, key, where)
    take = np.zeros(len(array), dtype=np.int64)
    take[rows] = positions
    missing = np.ones(len(array), dtype=bool)
    missing[rows] = False
    values: pa.Array = array.items.take(pa.array(take, pa.int64(), mask=missing))
    return as_text(values)


def _map_replaced(array: pa.MapArray, key: str, values: pa.Array, where: str) -> pa.Array:
    rows, positions = _map_entries(array, key, where)
    absent = np.ones(len(array), dtype=bool)
    absent[rows] = False
    if pc.filter(values, pa.array(absent)).null_count != int(absent.sum()):
        raise InputError(f"{where}: a value was given for a row whose map has no such key")
    items = array.items
    at = np.zeros(len(items), dtype=bool)
    at[positions] = True
    replacement = as_stored(values.take(pa.array(rows, pa.int64())), items.type)
    if len(positions):
        items = pc.replace_with_mask(items, pa.array(at), replacement)
    return pa.MapArray.from_arrays(
        array.offsets,
        array.keys,
        items,
        type=array.type,
        mask=array.is_null() if array.null_count else None,
    )


# -- ingestion time ---------------------------------------------------------------------------


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


# -- row keys (docs/FORMAT.md, section 3) ---------------------------------------------------


def is_row_key_type(key_type: pa.DataType) -> bool:
    """Integer or text primary-key columns (a dictionary of text included)."""
    return bool(pa.types.is_integer(key_type)) or is_text_type(key_type)


def row_key_bytes(batch: pa.RecordBatch, columns: str | Sequence[str], where: str) -> pa.Array:
    """The canonical row key bound into each cell, as one binary array (null where any component is null).

    One column: integers in decimal ASCII, text as UTF-8 (the encoding of every file
    written before composite keys). Several columns: for each in order,
    u32 big-endian byte length || that canonical form.
    """
    names = (columns,) if isinstance(columns, str) else tuple(columns)
    parts = [_key_component(batch, name, where) for name in names]
    if len(parts) == 1:
        return parts[0]
    pieces: list[pa.Array] = []
    for part in parts:
        lengths = pc.fill_null(pc.binary_length(part), 0).to_numpy(zero_copy_only=False)
        if len(lengths) and int(lengths.max()) > 0xFFFFFFFF:
            raise InputError(f"{where}: a primary-key component is longer than 2^32-1 bytes")
        packed = lengths.astype(">u4").tobytes()
        offsets = np.arange(0, _LENGTH * len(part) + 1, _LENGTH, dtype=np.int32)
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(packed)]
        pieces.append(pa.Array.from_buffers(pa.binary(), len(part), buffers))
        pieces.append(part)
    # A null component makes the joined key null (binary_join_element_wise's null handling: emit_null).
    joined: pa.Array = pc.binary_join_element_wise(*pieces, pa.scalar(b"", pa.binary()))
    return joined


def _key_component(batch: pa.RecordBatch, column: str, where: str) -> pa.Array:
    if column not in batch.schema.names:
        raise InputError(f"{where}: primary-key column {column!r} not found")
    keys = batch.column(batch.schema.get_field_index(column))
    if pa.types.is_integer(keys.type):
        return pc.cast(keys, pa.string()).cast(pa.binary())
    if not is_text_type(keys.type):
        raise InputError(f"{where}: primary-key column {column!r} is {keys.type}; expected an integer or string type")
    text = as_text(keys)
    return text.cast(pa.large_binary() if text.type == pa.large_string() else pa.binary()).cast(pa.binary())


def row_key_text(batch: pa.RecordBatch, column: str, where: str) -> pa.Array:
    """The canonical key of a single-column primary key (kept for existing callers: bench/encrypt.py)."""
    return row_key_bytes(batch, column, where)


# -- exact comparison -------------------------------------------------------------------------


def identical(a: pa.Array | pa.RecordBatch, b: pa.Array | pa.RecordBatch) -> bool:
    """Same type and the same values bit for bit: NaN equals the same NaN, -0.0 differs from 0.0.

    Floating-point values (at any depth) are compared as their IEEE-754 bit patterns and
    dictionaries by their decoded values; everything else with Arrow's exact equality
    (validity respected, bytes under null slots ignored, offsets and slicing respected).
    """
    if isinstance(a, pa.RecordBatch) or isinstance(b, pa.RecordBatch):
        if not isinstance(a, pa.RecordBatch) or not isinstance(b, pa.RecordBatch):
            return False
        if a.schema.names != b.schema.names or a.num_rows != b.num_rows:
            return False
        return all(identical(a.column(i), b.column(i)) for i in range(a.num_columns))
    if a.type != b.type or len(a) != len(b):
        return False
    return bool(_comparable(a).equals(_comparable(b)))


def _comparable(array: pa.Array) -> pa.Array:
    decoded = _decoded_type(array.type)
    if decoded != array.type:
        # A nesting Arrow cannot cast keeps its dictionaries, compared as stored.
        with contextlib.suppress(pa.ArrowNotImplementedError):
            array = array.cast(decoded)
    bits = _bits_type(array.type)
    return array if bits == array.type else array.view(bits)


def _decoded_type(value_type: pa.DataType) -> pa.DataType:
    """The type with every dictionary replaced by its value type."""
    return _map_type(value_type, lambda t: _decoded_type(t.value_type) if pa.types.is_dictionary(t) else None)


def _bits_type(value_type: pa.DataType) -> pa.DataType:
    """The type with every float replaced by the unsigned integer of its width (same buffers)."""
    widths = {pa.float16(): pa.uint16(), pa.float32(): pa.uint32(), pa.float64(): pa.uint64()}
    return _map_type(value_type, lambda t: widths.get(t))


def _map_type(value_type: pa.DataType, leaf: Callable[[pa.DataType], pa.DataType | None]) -> pa.DataType:
    """`value_type` rebuilt with `leaf(t)` substituted wherever it returns a type."""
    replaced = leaf(value_type)
    if replaced is not None:
        return replaced
    t = value_type
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_map_type(t.field(i).type, leaf)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(
            t.key_field.with_type(_map_type(t.key_type, leaf)),
            t.item_field.with_type(_map_type(t.item_type, leaf)),
            keys_sorted=t.keys_sorted,
        )
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_map_type(t.value_type, leaf)), t.list_size)
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_map_type(t.value_type, leaf)))
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_map_type(t.value_type, leaf)))
    if pa.types.is_list_view(t):
        return pa.list_view(t.value_field.with_type(_map_type(t.value_type, leaf)))
    if pa.types.is_large_list_view(t):
        return pa.large_list_view(t.value_field.with_type(_map_type(t.value_type, leaf)))
    return t
