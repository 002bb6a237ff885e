"""Analyst masks, computed with Arrow kernels. No mask reveals a value's length.

- `full`  -> `****`
- `email` -> `****@` + lowercased domain, or `****` when the value is not an email
- `last4` -> `****` + last four digits, or `****` when the value has fewer than five digits

Nulls stay null.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HIDDEN = "****"
_EMAIL = r"^[^@\s]+@(?P<domain>[^@\s]+\.[^@\s]+)$"


def mask_values(values: pa.Array, style: str) -> pa.Array:
    """The mask of each value, same type as `values`."""
    hidden = pa.scalar(HIDDEN, values.type)
    # Literals typed like the values: the join kernel has no mixed string/large_string form.
    no_separator = pa.scalar("", values.type)
    if style == "full":
        masked = pc.if_else(pc.is_valid(values), hidden, pa.scalar(None, values.type))
    elif style == "email":
        # A match has exactly one "@", so the domain is what follows it; split is ~4x cheaper
        # than extracting a regex capture group.
        is_email = pc.fill_null(pc.match_substring_regex(values, _EMAIL), False)
        domain = pc.list_element(pc.split_pattern(pc.filter(values, is_email), "@", max_splits=1), 1)
        # ASCII domains (the common case) take ascii_lower, the same mapping at a small part of the cost.
        lower = pc.ascii_lower if pc.all(pc.string_is_ascii(domain)).as_py() is not False else pc.utf8_lower
        at_domain = pc.binary_join_element_wise(pa.scalar(HIDDEN + "@", values.type), lower(domain), no_separator)
        masked = pc.replace_with_mask(
            pc.if_else(pc.is_valid(values), hidden, pa.scalar(None, values.type)), is_email, at_domain.cast(values.type)
        )
    elif style == "last4":
        if values.type in (pa.string(), pa.large_string()):
            return _last4(values)
        digits = pc.replace_substring_regex(values, r"[^0-9]", "")
        last4 = pc.binary_join_element_wise(hidden, pc.utf8_slice_codeunits(digits, start=-4), no_separator)
        masked = pc.if_else(pc.greater_equal(pc.utf8_length(digits), 5), last4, hidden)
    else:
        raise ValueError(f"unknown mask style {style!r}")
    result: pa.Array = pc.if_else(pc.is_valid(values), masked, pa.scalar(None, values.type)).cast(values.type)
    return result


def _last4(values: pa.Array) -> pa.Array:
    """The `last4` mask of string or large_string values, on the UTF-8 bytes with numpy.

    The same result as removing every character that is not an ASCII digit (the regex
    `[^0-9]`) and keeping the last four of at least five: ASCII digits are single bytes that
    never occur inside a multi-byte UTF-8 character, so the digits are the bytes 0x30-0x39.
    A regex replace over every value was most of the cost of protecting a phone column.
    """
    count = len(values)
    large = values.type == pa.large_string()
    offset_type = np.int64 if large else np.int32
    offsets = np.frombuffer(
        values.buffers()[1], dtype=offset_type, count=count + 1, offset=values.offset * (8 if large else 4)
    ).astype(np.int64)
    data = values.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]] if data is not None else np.empty(0, np.uint8)
    digit_at = np.flatnonzero((raw >= 0x30) & (raw <= 0x39))  # byte positions of the digits, ascending
    digits_before = np.searchsorted(digit_at, offsets - offsets[0])  # digits before each value's start
    ends = digits_before[1:]  # and before its end
    valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
    shown = valid & (ends - digits_before[:-1] >= 5)
    lengths = np.where(shown, 8, np.where(valid, len(HIDDEN), 0))
    out_offsets = np.concatenate((np.zeros(1, np.int64), np.cumsum(lengths, dtype=np.int64)))
    # Every mask is the first `lengths` bytes of its row of "********", the last four stars replaced by the
    # digits where shown: laid out as rows of 8 bytes, then the rows' first bytes taken in one pass.
    four = np.arange(4)
    rows = np.full((count, 8), ord("*"), dtype=np.uint8)
    rows[shown, 4:] = raw[digit_at[ends[shown][:, None] - 4 + four]]
    out = rows[np.arange(8) < lengths[:, None]]
    validity = None if values.null_count == 0 else pa.py_buffer(np.packbits(valid, bitorder="little"))
    buffers = [validity, pa.py_buffer(out_offsets.astype(offset_type)), pa.py_buffer(out)]
    return pa.Array.from_buffers(values.type, count, buffers, null_count=values.null_count)


# What a stored mask of each style looks like (docs/FORMAT.md, section 7).
_MASK_FORMS = {
    "full": r"^\*\*\*\*$",
    "email": r"^\*\*\*\*(@[^@\s]+\.[^@\s]+)?$",
    "last4": r"^\*\*\*\*([0-9]{4})?$",
}


def is_mask_form(values: pa.Array, style: str) -> pa.BooleanArray:
    """Which values look exactly like a mask of `style` (false for nulls)."""
    if style not in _MASK_FORMS:
        raise ValueError(f"unknown mask style {style!r}")
    result: pa.BooleanArray = pc.fill_null(pc.match_substring_regex(values, _MASK_FORMS[style]), False)
    return result
