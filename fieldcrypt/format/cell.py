"""Cell ciphertext and associated data, format version 1 (see docs/FORMAT.md).

Cell layout::

    offset  size  field
    0       1     format version, 0x01
    1       12    nonce, 96 fresh random bits for every cell (os.urandom, or RAND_bytes in the native kernel)
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

import itertools
import os
import struct
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fieldcrypt.errors import IntegrityError, KeyMaterialError

CELL_VERSION = 1
AD_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
DEK_SIZE = 32
CELL_OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
_MAX_NAME = 0xFFFF
_MAX_ROW_KEY = 0xFFFFFFFF


def new_cipher(dek: bytes) -> AESGCM:
    """An AES-256-GCM cipher for a data key; anything but 32 bytes is refused."""
    if len(dek) != DEK_SIZE:
        raise KeyMaterialError(f"data key must be {DEK_SIZE} bytes, got {len(dek)}")
    return AESGCM(dek)


class DataKey:
    """A data key as both cell kernels use it: its 32 bytes (handed to the native kernel for
    the duration of one call, which keeps no copy) and the AESGCM object of the pure-Python
    kernel. Its repr hides the bytes, and it refuses to be pickled or copied out of process.
    """

    __slots__ = ("_key_bytes", "aead")

    def __init__(self, key_bytes: bytes) -> None:
        self.aead = new_cipher(key_bytes)
        self._key_bytes = bytes(key_bytes)

    @property
    def key_bytes(self) -> bytes:
        return self._key_bytes

    def __repr__(self) -> str:
        return "DataKey(<32 bytes hidden>)"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a DataKey holds key material and cannot be pickled")


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
    """Encrypt UTF-8 values, each under a fresh random nonce; returns version-1 cells."""
    keys = None if row_keys is None else pa.array(row_keys, pa.binary())
    cells: list[bytes] = encrypt_array(cipher, prefix, pa.array(values, pa.binary()), keys).to_pylist()
    return cells


def encrypt_array(cipher: AESGCM, prefix: bytes, values: pa.Array, row_keys: pa.Array | None) -> pa.Array:
    """Encrypt a non-null binary array (UTF-8 values) into a binary array of version-1 cells.

    Nonces come from one os.urandom call per batch, cut into 12-byte slices: each slice
    is an independent uniformly random 96-bit nonce. Everything but the AES-GCM call
    itself is vectorised: the associated data is assembled by Arrow kernels, and the
    version byte and nonce are joined to each `ciphertext || tag` by one Arrow kernel,
    so the only per-cell Python is a `map` over `cipher.encrypt`.
    """
    n = len(values)
    if values.null_count:
        raise ValueError("only non-null values can be encrypted")
    if row_keys is not None and (len(row_keys) != n or row_keys.null_count):
        raise ValueError("row keys must be non-null, one per value")
    if n == 0:
        return pa.array([], pa.binary())
    nonce_bytes = os.urandom(NONCE_SIZE * n)
    nonces = _fixed_width(nonce_bytes, NONCE_SIZE, n).to_pylist()
    plain = values.to_pylist()
    if row_keys is None:
        bodies = list(map(cipher.encrypt, nonces, plain, itertools.repeat(prefix, n)))
    else:
        bodies = list(map(cipher.encrypt, nonces, plain, associated_data_array(prefix, row_keys).to_pylist()))
    del plain, nonces
    header = np.empty((n, 1 + NONCE_SIZE), dtype=np.uint8)
    header[:, 0] = CELL_VERSION
    header[:, 1:] = np.frombuffer(nonce_bytes, dtype=np.uint8).reshape(n, NONCE_SIZE)
    cells: pa.Array = pc.binary_join_element_wise(
        _fixed_width(header.tobytes(), 1 + NONCE_SIZE, n), pa.array(bodies, pa.binary()), b""
    )
    return cells


def associated_data_array(prefix: bytes, row_keys: pa.Array) -> pa.Array:
    """`associated_data(prefix, key)` for each (non-null, binary) row key, as a binary array."""
    lengths = pc.binary_length(row_keys).to_numpy(zero_copy_only=False)
    if len(lengths) and int(lengths.max()) > _MAX_ROW_KEY:
        raise ValueError("row key longer than 2^32-1 bytes")
    packed = lengths.astype(">u4").tobytes()
    result: pa.Array = pc.binary_join_element_wise(
        pa.scalar(prefix, pa.binary()), _fixed_width(packed, 4, len(row_keys)), row_keys.cast(pa.binary()), b""
    )
    return result


def _fixed_width(data: bytes, width: int, count: int) -> pa.Array:
    """`count` consecutive `width`-byte values of `data` as a binary array (no copy)."""
    offsets = np.arange(0, width * count + 1, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def decrypt_cell(cipher: AESGCM, cell: bytes, ad: bytes, where: str) -> bytes:
    """Authenticate and decrypt one cell; `where` names it in errors (never its value)."""
    malformed = cell_format_problem(cell)
    if malformed is not None:
        raise IntegrityError(f"{where}: {malformed}")
    try:
        return cipher.decrypt(cell[1 : 1 + NONCE_SIZE], cell[1 + NONCE_SIZE :], ad)
    except InvalidTag:
        raise IntegrityError(f"{where}: {AUTHENTICATION_FAILED}") from None


AUTHENTICATION_FAILED = "ciphertext failed authentication (tampered, moved to another row or column, or wrong data key)"


def cell_format_problem(cell: bytes) -> str | None:
    """Why a cell cannot be a version-1 cell before it is authenticated (too short, unknown version), or None."""
    if len(cell) < CELL_OVERHEAD:
        return short_cell(len(cell))
    if cell[0] != CELL_VERSION:
        return unknown_version(cell[0])
    return None


def short_cell(length: int) -> str:
    return f"ciphertext is {length} bytes, shorter than the {CELL_OVERHEAD}-byte minimum"


def unknown_version(version: int) -> str:
    return f"unknown cell format version {version}"
