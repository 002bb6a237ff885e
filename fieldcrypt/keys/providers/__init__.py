"""Key providers: where the master key lives. One interface, `KeyProvider`."""

from fieldcrypt.keys.providers.base import EncryptionContext, KeyProvider, MasterKeyInfo

__all__ = ["EncryptionContext", "KeyProvider", "MasterKeyInfo"]
