"""The `local` provider: data keys wrapped with AES-256-GCM under a keystore master key.

Wrapped bytes (inside the WrappedKey value) are `nonce(12) || ciphertext(32) || tag(16)`;
the associated data binds the master key id, its version and the encryption context
(see docs/FORMAT.md, "local key wrapping").
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fieldcrypt.errors import IntegrityError, KeyProviderError
from fieldcrypt.format.cell import DEK_SIZE, NONCE_SIZE
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys.keystore import Keystore, parse_key_version
from fieldcrypt.keys.providers.base import EncryptionContext, KeyProvider, MasterKeyInfo

PROVIDER_ID = "local"
_WRAPPED_SIZE = NONCE_SIZE + DEK_SIZE + 16


class LocalKeyProvider(KeyProvider):
    provider_id = PROVIDER_ID

    def __init__(self, keystore: Keystore) -> None:
        self._keystore = keystore

    def __repr__(self) -> str:
        return f"LocalKeyProvider({self._keystore!r})"

    def describe(self) -> MasterKeyInfo:
        return MasterKeyInfo(PROVIDER_ID, self._keystore.key_id, str(self._keystore.current))

    def generate_data_key(self, context: EncryptionContext) -> tuple[bytes, WrappedKey]:
        dek = os.urandom(DEK_SIZE)
        return dek, self._wrap(dek, self._keystore.current, context)

    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> bytes:
        version = self._own_version(wrapped)
        master = AESGCM(self._keystore.key_for(version))
        body = wrapped.wrapped
        if len(body) != _WRAPPED_SIZE:
            raise IntegrityError(f"local wrapped key is {len(body)} bytes, expected {_WRAPPED_SIZE}")
        try:
            return master.decrypt(body[:NONCE_SIZE], body[NONCE_SIZE:], _wrap_ad(wrapped.key_id, version, context))
        except InvalidTag:
            raise IntegrityError(
                f"wrapped data key for {context.dataset}.{context.attribute} failed authentication under "
                f"master key {wrapped.master_key_ref} (tampered, or wrapped for another dataset or attribute)"
            ) from None

    def rewrap(self, wrapped: WrappedKey, context: EncryptionContext) -> WrappedKey:
        return self._wrap(self.unwrap(wrapped, context), self._keystore.current, context)

    def _wrap(self, dek: bytes, version: int, context: EncryptionContext) -> WrappedKey:
        nonce = os.urandom(NONCE_SIZE)
        body = nonce + AESGCM(self._keystore.key_for(version)).encrypt(
            nonce, dek, _wrap_ad(self._keystore.key_id, version, context)
        )
        return WrappedKey(PROVIDER_ID, self._keystore.key_id, str(version), body)

    def _own_version(self, wrapped: WrappedKey) -> int:
        if wrapped.provider != PROVIDER_ID or wrapped.key_id != self._keystore.key_id:
            raise KeyProviderError(
                f"data key is wrapped by {wrapped.provider} master key {wrapped.key_id}, "
                f"not by this workspace's local master key {self._keystore.key_id}"
            )
        return parse_key_version(wrapped.key_version, "local wrapped key version")

    def check_value(self, version: int) -> str:
        """The key check value of one version (docs/FORMAT.md section 5); never key bytes."""
        return self._keystore.check_value(version)

    def forget(self, version: int) -> None:
        """Drop a retired version's key material from this provider's keystore copy."""
        entry = self._keystore.versions.get(version)
        if entry is not None and version != self._keystore.current:
            entry.state, entry.key = "retired", b""


def _wrap_ad(key_id: str, version: int, context: EncryptionContext) -> bytes:
    kid = key_id.encode()
    return b"\x01" + struct.pack(">H", len(kid)) + kid + struct.pack(">I", version) + context.canonical()
