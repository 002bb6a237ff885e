"""Cell ciphertext and associated data, format version 1 (see docs/FORMAT.md).

Cell layout::

    offset  size  field
    0       1     format version, 0x01
    1       12    nonce, fresh from os.urandom for every cell
    13      n     AES-256-GCM ciphertext of the UTF-8 value (n = len(value))
    13+n    16    GCM tag

Associated data layout (all lengths unsigned big-endian)::

    1 byte   AD format version, 0x01
    2 bytes  len(dataset)   || dataset, UTF-8
    2 bytes  len(attribute) || attribute path, UTF-8, dot-separated
    1 byte   row-key flag: 0x00 no primary key, 0x01 row key follows
    4 bytes  len(row_key)   || row key, UTF-8 of its canonical text (only if flag 0x01)
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fieldcrypt.errors import IntegrityError, KeyMaterialError

CELL_VERSION = 1
AD_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
DEK_SIZE = 32
CELL_OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
_VERSION_BYTE = bytes([CELL_VERSION])
_MAX_NAME = 0xFFFF
_MAX_ROW_KEY = 0xFFFFFFFF


def new_cipher(dek: bytes) -> AESGCM:
    """An AES-256-GCM cipher for a data key; anything but 32 bytes is refused."""
    if len(dek) != DEK_SIZE:
        raise KeyMaterialError(f"data key must be {DEK_SIZE} bytes, got {len(dek)}")
    return AESGCM(dek)


def ad_prefix(dataset: str, attribute: str, has_row_key: bool) -> bytes:
    """The constant head of the associated data for one column of one dataset."""
    ds, attr = dataset.encode(), attribute.encode()
    if len(ds) > _MAX_NAME or len(attr) > _MAX_NAME:
        raise ValueError("dataset or attribute name longer than 65535 bytes")
    return b"".join(
        (
            bytes([AD_VERSION]),
            struct.pack(">H", len(ds)),
            ds,
            struct.pack(">H", len(attr)),
            attr,
            b"\x01" if has_row_key else b"\x00",
        )
    )


def associated_data(prefix: bytes, row_key: bytes | None) -> bytes:
    """Associated data for one cell; `row_key` is None exactly when the prefix says so."""
    if row_key is None:
        return prefix
    if len(row_key) > _MAX_ROW_KEY:
        raise ValueError("row key longer than 2^32-1 bytes")
    return prefix + struct.pack(">I", len(row_key)) + row_key


def encrypt_cells(
    cipher: AESGCM,
    prefix: bytes,
    values: Sequence[bytes],
    row_keys: Sequence[bytes] | None,
) -> list[bytes]:
    """Encrypt UTF-8 values, each under a fresh random nonce; returns version-1 cells.

    Nonces come from one os.urandom call per batch, cut into 12-byte slices: each
    slice is an independent uniformly random 96-bit nonce.
    """
    n = len(values)
    nonces = os.urandom(NONCE_SIZE * n)
    encrypt = cipher.encrypt
    out: list[bytes] = []
    append = out.append
    if row_keys is None:
        for i, value in enumerate(values):
            nonce = nonces[i * NONCE_SIZE : (i + 1) * NONCE_SIZE]
            append(_VERSION_BYTE + nonce + encrypt(nonce, value, prefix))
        return out
    pack = struct.Struct(">I").pack
    for i, value in enumerate(values):
        nonce = nonces[i * NONCE_SIZE : (i + 1) * NONCE_SIZE]
        key = row_keys[i]
        append(_VERSION_BYTE + nonce + encrypt(nonce, value, prefix + pack(len(key)) + key))
    return out


def decrypt_cell(cipher: AESGCM, cell: bytes, ad: bytes, where: str) -> bytes:
    """Authenticate and decrypt one cell; `where` names it in errors (never its value)."""
    if len(cell) < CELL_OVERHEAD:
        raise IntegrityError(f"{where}: ciphertext is {len(cell)} bytes, shorter than the {CELL_OVERHEAD}-byte minimum")
    if cell[0] != CELL_VERSION:
        raise IntegrityError(f"{where}: unknown cell format version {cell[0]}")
    try:
        return cipher.decrypt(cell[1 : 1 + NONCE_SIZE], cell[1 + NONCE_SIZE :], ad)
    except InvalidTag:
        raise IntegrityError(
            f"{where}: ciphertext failed authentication (tampered, moved to another row or column, or wrong data key)"
        ) from None
