"""fieldcrypt: bring-your-own-key field-level encryption for a Parquet data lake.

The safe layer is `Workspace` (enable, protect, status, verify, reveal, rotate);
cell formats, nonces, key bytes and wrapping stay internal. Formats: docs/FORMAT.md.
"""

from fieldcrypt.access.workspace_config import KeyConfig, WorkspaceConfig
from fieldcrypt.errors import (
    AccessDeniedError,
    ConcurrentUpdateError,
    ConfigError,
    FieldcryptError,
    InputError,
    IntegrityError,
    KeyMaterialError,
    KeyProviderError,
    KeyVersionError,
    PolicyError,
    RowNotFoundError,
    ThrottledError,
    VerificationError,
    WrongMasterKeyError,
)
from fieldcrypt.workspace import Workspace

__all__ = [
    "AccessDeniedError",
    "ConcurrentUpdateError",
    "ConfigError",
    "FieldcryptError",
    "InputError",
    "IntegrityError",
    "KeyConfig",
    "KeyMaterialError",
    "KeyProviderError",
    "KeyVersionError",
    "PolicyError",
    "RowNotFoundError",
    "ThrottledError",
    "VerificationError",
    "Workspace",
    "WorkspaceConfig",
    "WrongMasterKeyError",
]
