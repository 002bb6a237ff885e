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
        domain = pc.struct_field(pc.extract_regex(values, _EMAIL), "domain")
        prefix = pa.scalar(HIDDEN + "@", values.type)
        at_domain = pc.binary_join_element_wise(prefix, pc.utf8_lower(domain), no_separator)
        masked = pc.coalesce(at_domain, hidden)
    elif style == "last4":
        digits = pc.replace_substring_regex(values, r"[^0-9]", "")
        last4 = pc.binary_join_element_wise(hidden, pc.utf8_slice_codeunits(digits, start=-4), no_separator)
        masked = pc.if_else(pc.greater_equal(pc.utf8_length(digits), 5), last4, hidden)
    else:
        raise ValueError(f"unknown mask style {style!r}")
    result: pa.Array = pc.if_else(pc.is_valid(values), masked, pa.scalar(None, values.type)).cast(values.type)
    return result
