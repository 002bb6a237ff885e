"""Blind index: HMAC-SHA256 of a protected value under a per-attribute index key, truncated.

Lets analysts join and count distinct on a protected attribute without decrypting:
equal values of one attribute get equal indexes; nothing else about a value shows.
The index key of an attribute is a 32-byte key generated and wrapped by the master key
under the encryption context attribute `<path>#blind-index` (so it is rotated with the
master key, and revoking the master key stops new indexes). Its wrapped value lives in
`_fieldcrypt/blind_index_keys.json`. Format: docs/FORMAT.md, section "Blind index".
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.errors import IntegrityError, PolicyError
from fieldcrypt.lake.store import LakeStore

INDEX_SIZE = 16
INDEX_KEYS_PATH = "_fieldcrypt/blind_index_keys.json"
INDEX_KEYS_FORMAT = "fieldcrypt-blind-index-keys-v1"


# Value normalisation before indexing, chosen at enablement (docs/FORMAT.md section 8).
NORMALIZATIONS = ("none", "trim", "email", "e164")


def normalize(values: pa.Array, how: str) -> pa.Array:
    """The values as indexed: `trim` strips surrounding whitespace, `email` also lower-cases, `e164` drops
    spaces, dashes, dots and parentheses and turns a leading 00 into + (no country code is inferred)."""
    if how == "none":
        return values
    if how not in NORMALIZATIONS:
        raise PolicyError(f"blind-index normalisation {how!r} is not one of {', '.join(NORMALIZATIONS)}")
    if how == "e164":
        digits = pc.replace_substring_regex(values, r"[\s\-\.\(\)]", "")
        result: pa.Array = pc.replace_substring_regex(digits, r"^00", "+")
        return result
    trimmed = pc.utf8_trim_whitespace(values)
    return pc.utf8_lower(trimmed) if how == "email" else trimmed


def index_context_attribute(path: str) -> str:
    """The encryption-context attribute of an index key ('#' cannot appear in a real path)."""
    return f"{path}#blind-index"


class BlindIndexKey:
    """An unwrapped index key; its bytes never show in a repr or a traceback's locals."""

    __slots__ = ("_key", "_normalization")

    def __init__(self, key: bytes, normalization: str = "none") -> None:
        self._key = key
        self._normalization = normalization

    def __repr__(self) -> str:
        return f"BlindIndexKey(<hidden>, normalization={self._normalization!r})"

    def same_key(self, other: BlindIndexKey) -> bool:
        """Whether both hold the same key bytes (a rewrap under another master key keeps them)."""
        return hmac.compare_digest(self._key, other._key)

    def normalized(self, how: str) -> BlindIndexKey:
        """The same key, indexing values after the attribute's normalisation."""
        return self if how == self._normalization else BlindIndexKey(self._key, how)

    def index(self, values: pa.Array) -> pa.Array:
        """The 16-byte index of each non-null text value (UTF-8 bytes, after the key's normalisation)."""
        values = normalize(values, self._normalization)
        plain = values.cast(pa.large_binary() if values.type == pa.large_string() else pa.binary()).to_pylist()
        key, digest = self._key, hmac.digest
        return pa.array([digest(key, value, "sha256")[:INDEX_SIZE] for value in plain], pa.binary())


class IndexKeyStore:
    """Wrapped index keys of a workspace, by attribute name (`dataset.path`)."""

    def __init__(self, store: LakeStore) -> None:
        self.store = store

    def load(self) -> dict[str, bytes]:
        if not self.store.exists(INDEX_KEYS_PATH):
            return {}
        return self._parse(self.store.read_bytes(INDEX_KEYS_PATH))

    def _parse(self, data: bytes) -> dict[str, bytes]:
        where = self.store.display(INDEX_KEYS_PATH)
        try:
            doc = json.loads(data)
            if doc.get("format") != INDEX_KEYS_FORMAT:
                raise IntegrityError(f"{where}: unknown format {doc.get('format')!r}")
            return {name: base64.b64decode(value, validate=True) for name, value in doc["keys"].items()}
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise IntegrityError(f"{where} is not a valid blind-index key file") from None

    def update(self, change: Callable[[dict[str, bytes]], dict[str, bytes] | None]) -> bool:
        """Read-modify-write that never loses another worker's key (LakeStore.update).

        `change` gets the stored keys and returns the new set (None: nothing to write); on
        S3 it may be called again with a newer set, so it must depend only on what it gets.
        """

        def change_bytes(stored: bytes | None) -> bytes | None:
            keys = change({} if stored is None else self._parse(stored))
            if keys is None:
                return None
            encoded = {n: base64.b64encode(v).decode() for n, v in sorted(keys.items())}
            return (json.dumps({"format": INDEX_KEYS_FORMAT, "keys": encoded}, indent=2) + "\n").encode()

        return self.store.update(INDEX_KEYS_PATH, change_bytes, "this run was updating it")
