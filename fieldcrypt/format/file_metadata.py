"""The fieldcrypt entry of a protected Parquet file's metadata: its key, and what a writer needs of an attribute.

Kept apart from the policy and the row selection so that the Parquet reader and writer
(fieldcrypt.lake.parquet_io) name it without importing them (docs/FORMAT.md describes the entry).
"""

from __future__ import annotations

from typing import Protocol

FILE_METADATA_KEY = b"fieldcrypt"


class ProtectedColumns(Protocol):
    """What a file writer needs of a protected attribute (fieldcrypt.policy.policy.AttributePolicy has it)."""

    @property
    def name(self) -> str: ...

    @property
    def mask(self) -> str: ...

    @property
    def ciphertext_column(self) -> str: ...

    @property
    def wrapped_key_column(self) -> str: ...

    @property
    def blind_index_column(self) -> str | None: ...
