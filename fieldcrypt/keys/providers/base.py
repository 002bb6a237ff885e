"""The key provider interface: generate, unwrap and rewrap data keys; describe the key."""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass

from fieldcrypt.format.wrapped_key import WrappedKey


@dataclass(frozen=True)
class EncryptionContext:
    """What a data key is for. Bound to the wrapped key (AAD locally, KMS encryption context)."""

    workspace: str
    dataset: str
    attribute: str

    def as_kms_context(self) -> dict[str, str]:
        return {
            "fieldcrypt:workspace": self.workspace,
            "fieldcrypt:dataset": self.dataset,
            "fieldcrypt:attribute": self.attribute,
        }

    def canonical(self) -> bytes:
        """Length-prefixed encoding of the context, for local AES-GCM key wrapping."""
        parts = []
        for name, value in sorted(self.as_kms_context().items()):
            for text in (name.encode(), value.encode()):
                parts.append(struct.pack(">H", len(text)) + text)
        return b"".join(parts)


@dataclass(frozen=True)
class MasterKeyInfo:
    """A master key (and version) by id, e.g. the one in force for new data keys; never key material."""

    provider: str
    key_id: str
    key_version: str = ""

    @property
    def ref(self) -> str:
        return f"{self.key_id}#{self.key_version}" if self.key_version else self.key_id


class KeyProvider(ABC):
    """Wraps data keys under a master key. Implementations never log or raise key bytes."""

    provider_id: str

    @abstractmethod
    def describe(self) -> MasterKeyInfo:
        """The current master key; validated when the provider was constructed."""

    @abstractmethod
    def generate_data_key(self, context: EncryptionContext) -> tuple[bytes, WrappedKey]:
        """A fresh 32-byte data key and its wrapping under the current master key."""

    @abstractmethod
    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> bytes:
        """The plaintext data key; refuses keys that are not (or no longer) this workspace's."""

    @abstractmethod
    def rewrap(self, wrapped: WrappedKey, context: EncryptionContext) -> WrappedKey:
        """The same data key wrapped under the current master key."""

    def is_current(self, wrapped: WrappedKey) -> bool:
        """Whether a wrapped key is already under the current master key (no KMS call)."""
        info = self.describe()
        return (wrapped.provider, wrapped.key_id, wrapped.key_version) == (info.provider, info.key_id, info.key_version)
