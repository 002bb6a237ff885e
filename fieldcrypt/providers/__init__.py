"""Key providers: where the master key lives. One interface, `KeyProvider`."""

from fieldcrypt.providers.base import EncryptionContext, KeyProvider, MasterKeyInfo

__all__ = ["EncryptionContext", "KeyProvider", "MasterKeyInfo"]
