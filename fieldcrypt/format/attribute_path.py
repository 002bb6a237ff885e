"""Attribute paths: where a protected value lives in a row (see docs/FORMAT.md, section 1).

Grammar (the whole path, no spaces)::

    path     = name ("." name)* [ "['" map_key "']" ]
    name     = [A-Za-z_][A-Za-z0-9_]*
    map_key  = 1..255 characters, none of them ', \\, [, ] or a control character

`email` is a column, `context.device.email` a field of nested structs, and
`properties['email']` the value under key `email` of a `map<string, string>` column
(which may itself sit inside structs: `context.props['email']`).

The ciphertext columns of an attribute are named from its *stem*: the names joined by
`__`, then for a map key `[` + the key percent-encoded (every byte outside
`[A-Za-z0-9_-]` as `%XX`) + `]`. Struct stems hold only `[A-Za-z0-9_]`, so a map stem
(which holds `[`) never equals a struct stem, and percent-encoding is injective, so two
keys never share a stem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fieldcrypt.errors import PolicyError

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PATH = re.compile(rf"(?P<names>{_NAME}(?:\.{_NAME})*)(?:\['(?P<key>[^'\\\[\]\x00-\x1f\x7f]{{1,255}})'\])?")
_STEM_SAFE = re.compile(r"[A-Za-z0-9_-]")
MAX_MAP_KEY_BYTES = 255


@dataclass(frozen=True)
class AttributePath:
    """A parsed attribute path: struct names from the top-level column down, and an optional map key."""

    names: tuple[str, ...]
    map_key: str | None = None

    @classmethod
    def parse(cls, path: str) -> AttributePath:
        match = _PATH.fullmatch(path)
        if match is None:
            raise PolicyError(
                f"attribute path {path!r} must be column, struct.field (any depth) or map_column['key'] "
                "(names: letters, digits and underscores, not starting with a digit; a key: 1-255 characters "
                "without quotes, backslashes, brackets or control characters)"
            )
        key = match.group("key")
        if key is not None and len(key.encode()) > MAX_MAP_KEY_BYTES:
            raise PolicyError(f"attribute path {path!r}: map key longer than {MAX_MAP_KEY_BYTES} bytes")
        return cls(tuple(match.group("names").split(".")), key)

    @property
    def column(self) -> str:
        """The top-level column that holds the attribute."""
        return self.names[0]

    @property
    def stem(self) -> str:
        stem = "__".join(self.names)
        if self.map_key is None:
            return stem
        encoded = "".join(
            ch if _STEM_SAFE.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode()) for ch in self.map_key
        )
        return f"{stem}[{encoded}]"

    def __str__(self) -> str:
        joined = ".".join(self.names)
        return joined if self.map_key is None else f"{joined}['{self.map_key}']"
