"""Analyst masks, computed with Arrow kernels. No mask reveals a value's length.

- `full`  -> `****`
- `email` -> `****@` + lowercased domain, or `****` when the value is not an email
- `last4` -> `****` + last four digits, or `****` when the value has fewer than five digits

Nulls stay null.
"""

from __future__ import annotations

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
        at_domain = pc.binary_join_element_wise(
            pa.scalar(HIDDEN + "@", values.type), pc.utf8_lower(domain), no_separator
        )
        masked = pc.replace_with_mask(
            pc.if_else(pc.is_valid(values), hidden, pa.scalar(None, values.type)), is_email, at_domain.cast(values.type)
        )
    elif style == "last4":
        digits = pc.replace_substring_regex(values, r"[^0-9]", "")
        last4 = pc.binary_join_element_wise(hidden, pc.utf8_slice_codeunits(digits, start=-4), no_separator)
        masked = pc.if_else(pc.greater_equal(pc.utf8_length(digits), 5), last4, hidden)
    else:
        raise ValueError(f"unknown mask style {style!r}")
    result: pa.Array = pc.if_else(pc.is_valid(values), masked, pa.scalar(None, values.type)).cast(values.type)
    return result


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
