"""Wrapped data key value, format version 1 (see docs/FORMAT.md).

Stored once per distinct data key in the dictionary of a `<attr>__fc_dek` column.
It names the provider, master key and key version that wrapped it, so an operator
(or the rotation check) can tell which master key a file depends on without a KMS call.

Layout (lengths unsigned big-endian)::

    1 byte   format version, 0x01
    1 byte   len(provider)    || provider id, ASCII ("local" or "aws-kms")
    2 bytes  len(key_id)      || master key id, UTF-8 (keystore key id or KMS key ARN)
    2 bytes  len(key_version) || master key version, UTF-8 ("" when the KMS versions the key itself)
    2 bytes  len(wrapped)     || wrapped data key bytes (provider-specific)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fieldcrypt.errors import IntegrityError

WRAPPED_KEY_VERSION = 1
_MAX_SHORT = 0xFF
_MAX_U16 = 0xFFFF


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped by one version of one master key."""

    provider: str
    key_id: str
    key_version: str
    wrapped: bytes

    @property
    def master_key_ref(self) -> str:
        """`key_id` or `key_id#version`: the master key this value depends on."""
        return f"{self.key_id}#{self.key_version}" if self.key_version else self.key_id

    def to_bytes(self) -> bytes:
        provider = self.provider.encode("ascii")
        key_id = self.key_id.encode()
        version = self.key_version.encode()
        if len(provider) > _MAX_SHORT or max(len(key_id), len(version), len(self.wrapped)) > _MAX_U16:
            raise ValueError("wrapped key field too long for format version 1")
        return b"".join(
            (
                bytes([WRAPPED_KEY_VERSION, len(provider)]),
                provider,
                struct.pack(">H", len(key_id)),
                key_id,
                struct.pack(">H", len(version)),
                version,
                struct.pack(">H", len(self.wrapped)),
                self.wrapped,
            )
        )

    @classmethod
    def from_bytes(cls, value: bytes) -> WrappedKey:
        """Parse a stored value; every length is checked against what is left."""
        reader = _Reader(value)
        version = reader.take(1)[0]
        if version != WRAPPED_KEY_VERSION:
            raise IntegrityError(f"unknown wrapped key format version {version}")
        provider = reader.take(reader.take(1)[0])
        key_id = reader.take(reader.u16())
        key_version = reader.take(reader.u16())
        wrapped = reader.take(reader.u16())
        if reader.remaining:
            raise IntegrityError(f"wrapped key has {reader.remaining} trailing bytes")
        try:
            return cls(provider.decode("ascii"), key_id.decode(), key_version.decode(), wrapped)
        except UnicodeDecodeError:
            raise IntegrityError("wrapped key has a non-text provider, key id or version") from None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        if n > self.remaining:
            raise IntegrityError(f"wrapped key truncated: needs {n} more bytes, has {self.remaining}")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value
