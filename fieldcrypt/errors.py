"""The one exception family of fieldcrypt.

Messages name the thing that is wrong (attribute, key id, file) and never a secret:
no plaintext value, no key bytes, no KMS response body.
"""

from __future__ import annotations


class FieldcryptError(Exception):
    """Base class of every error fieldcrypt raises on purpose."""


class InputError(FieldcryptError):
    """Bad input: unknown attribute, missing column, wrong type, corrupt Parquet."""


class ConfigError(FieldcryptError):
    """The catalog or a setting is invalid: the message names the key (or variable) and the problem."""


class RowNotFoundError(InputError):
    """Rows asked for by primary key (reveal) that the partition does not hold; the message names the keys."""


class PolicyError(FieldcryptError):
    """A policy change that is not allowed (dropping or altering an enabled attribute)."""


class KeyMaterialError(FieldcryptError):
    """A malformed key: wrong length, bad encoding, loose keystore permissions."""


class KeyProviderError(FieldcryptError):
    """The master key is unusable: wrong key, refused key properties, KMS failure."""


class AccessDeniedError(KeyProviderError):
    """The KMS refused access to the master key (revoked grant or key policy)."""


class ThrottledError(KeyProviderError):
    """The KMS kept throttling after the configured retries."""


class IntegrityError(FieldcryptError):
    """A ciphertext or wrapped key failed authentication: tampered, moved or wrong key."""


class VerificationError(FieldcryptError):
    """A freshly written file did not verify; the original was left in place."""


class ConcurrentUpdateError(VerificationError):
    """Another worker changed a stored file between this one's read and its replace; nothing was replaced."""


class WrongMasterKeyError(KeyProviderError):
    """The master key does not match its key check value: altered bytes or another key under the same id."""


class KeyVersionError(KeyMaterialError, IntegrityError):
    """A local master-key version that is not in its one canonical form (ASCII digits, no leading zero)."""


class KernelError(FieldcryptError):
    """The requested cell kernel cannot be used (FIELDCRYPT_KERNEL=native without the extension) or failed."""


class SpliceUnsupported(InputError):
    """A Parquet file the column-chunk splice cannot rewrite (Parquet Modular Encryption, a footer field the
    IDL does not know, row groups that do not line up, ...); the caller takes the full rewrite instead."""
