"""Canonical JSON: the exact bytes fieldcrypt authenticates (policy MAC, audit records).

The form is RFC 8785 (JSON Canonicalization Scheme) restricted to what fieldcrypt stores -
objects, arrays, strings, integers, booleans and null, no floats: members sorted by key, no
whitespace, strings as UTF-8 with only `"`, `\\` and control characters escaped (`\\b \\t \\n
\\f \\r`, others as lower-case `\\u00xx`), integers in shortest decimal form. For these values
Python's `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)` writes exactly
the RFC 8785 bytes (keys here are ASCII, so code-point order is RFC 8785's UTF-16 order);
floats, whose RFC 8785 form Python does not write, are refused. docs/FORMAT.md section 6a.
"""

from __future__ import annotations

import json

from fieldcrypt.errors import InputError


def canonical_json(value: object) -> bytes:
    """The canonical UTF-8 bytes of `value` (InputError for a float or a non-JSON type)."""
    _check(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _check(value: object) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, dict):
        for key, member in value.items():
            if not isinstance(key, str):
                raise InputError(f"canonical JSON needs string member names, got {type(key).__name__}")
            _check(member)
        return
    if isinstance(value, list):
        for member in value:
            _check(member)
        return
    raise InputError(f"canonical JSON holds no {type(value).__name__} (only objects, arrays, strings, integers)")
