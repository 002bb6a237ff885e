"""Opt-in length padding of an attribute's cells: cell format version 2 (docs/FORMAT.md section 2a).

A version-1 cell's length is the value's length plus 29 bytes, so ciphertext reveals how
long each value is. An attribute enabled with `pad_to` (a block size: 16 to 4096 bytes, a
power of two) gets version-2 cells instead::

    offset  size  field
    0       1     cell format version, 0x02
    1       12    nonce
    13      n     AES-256-GCM ciphertext of P, n = len(P)
    13+n    16    GCM tag

    P = u32(len(value)) || value || 0x00 * k,   len(P) the smallest multiple of pad_to >= 4 + len(value)

and their associated data is the version-1 layout with its first byte 0x02 (AD version 2),
so a cell whose version byte is switched between 1 and 2 fails authentication instead of
decrypting to the padded plaintext (or to a truncated value). Only the bucket of the length
shows. Both kernels encrypt P as they encrypt any value; this module builds P, sets the
version byte and strips P back to the value, all vectorised.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.errors import IntegrityError, PolicyError

PADDED_CELL_VERSION = 2
PADDED_AD_VERSION = 2
MIN_PAD, MAX_PAD = 16, 4096
_LENGTH_PREFIX = 4


def check_pad_to(pad_to: int, attribute: str) -> int:
    """A valid block size (0: no padding), or a named error."""
    if pad_to and (pad_to < MIN_PAD or pad_to > MAX_PAD or pad_to & (pad_to - 1)):
        raise PolicyError(
            f"pad_to {pad_to} for {attribute} must be 0 (no padding) or a power of two from {MIN_PAD} to {MAX_PAD}"
        )
    return pad_to


def padded_ad_prefix(prefix: bytes) -> bytes:
    """The version-2 associated-data head: the version-1 head with its version byte set to 2."""
    return bytes([PADDED_AD_VERSION]) + prefix[1:]


def padded_length(lengths: np.ndarray, pad_to: int) -> np.ndarray:
    """len(P) for values of `lengths` bytes."""
    return -(-(lengths + _LENGTH_PREFIX) // pad_to) * pad_to


def pad(values: pa.Array, pad_to: int) -> pa.Array:
    """P of each (non-null, binary or string) value, as one binary array."""
    values = values.cast(pa.binary()) if values.type in (pa.string(), pa.binary()) else values.cast(pa.large_binary())
    offsets, data = _offsets_and_data(values)
    lengths = np.diff(offsets)
    sizes = padded_length(lengths, pad_to)
    out_offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(sizes, out=out_offsets[1:])
    out = np.zeros(int(out_offsets[-1]), dtype=np.uint8)
    starts = out_offsets[:-1]
    prefix = lengths.astype(">u4").view(np.uint8).reshape(-1, _LENGTH_PREFIX)
    for byte in range(_LENGTH_PREFIX):
        out[starts + byte] = prefix[:, byte]
    total = int(lengths.sum())
    if total:
        # Destination of every value byte: its value's start in P, past the length, plus its position.
        within = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], lengths)
        out[np.repeat(starts + _LENGTH_PREFIX, lengths) + within] = data[offsets[0] : offsets[-1]]
    return _binary(len(values), out_offsets, out)


def unpad(plaintexts: pa.Array, where: str) -> pa.Array:
    """The values inside decrypted P's; an IntegrityError if a length prefix does not fit its P."""
    offsets, data = _offsets_and_data(plaintexts)
    sizes = np.diff(offsets)
    if len(sizes) and int(sizes.min()) < _LENGTH_PREFIX:
        raise IntegrityError(f"{where}: a padded cell's plaintext is shorter than its length prefix")
    starts = offsets[:-1]
    heads = np.stack([data[starts + byte] for byte in range(_LENGTH_PREFIX)], axis=1) if len(starts) else None
    lengths = (
        np.zeros(0, dtype=np.int64)
        if heads is None
        else np.ascontiguousarray(heads).view(">u4").reshape(-1).astype(np.int64)
    )
    if len(lengths) and bool(np.any(lengths > sizes - _LENGTH_PREFIX)):
        raise IntegrityError(f"{where}: a padded cell's length prefix is longer than its plaintext")
    if len(lengths):  # the padding after each value is zeros (section 2a): anything else is not a cell fieldcrypt wrote
        running = np.concatenate((np.zeros(1, np.int64), np.cumsum(data.astype(np.int64))))
        padding = running[offsets[1:]] - running[starts + _LENGTH_PREFIX + lengths]
        if bool(np.any(padding)):
            raise IntegrityError(f"{where}: a padded cell's padding is not all zero bytes")
    out_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    total = int(out_offsets[-1])
    out = np.empty(total, dtype=np.uint8)
    if total:
        within = np.arange(total, dtype=np.int64) - np.repeat(out_offsets[:-1], lengths)
        out[:] = data[np.repeat(starts + _LENGTH_PREFIX, lengths) + within]
    return _binary(len(lengths), out_offsets, out)


def with_version(cells: pa.Array, version: int) -> pa.Array:
    """The same cells with their first byte (the cell format version) set to `version`."""
    offsets, data = _offsets_and_data(cells)
    out = data[: int(offsets[-1])].copy() if len(data) else data.copy()
    out[offsets[:-1]] = version
    return _binary(len(cells), offsets, out)


def first_wrong_version(cells: pa.Array, version: int) -> tuple[int, int] | None:
    """(index, version byte) of the first non-empty cell whose version is not `version`; None if all are.

    `cells` holds no null (empty cells are left to the kernel, which names them as too short).
    """
    offsets, data = _offsets_and_data(cells)
    nonempty = np.flatnonzero(np.diff(offsets) > 0)
    wrong = nonempty[data[offsets[:-1][nonempty]] != version]
    return (int(wrong[0]), int(data[offsets[wrong[0]]])) if len(wrong) else None


def _offsets_and_data(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (int64, relative to the data buffer) and the data buffer (uint8) of a binary array."""
    if array.null_count:
        array = pc.drop_null(array)
    large = array.type in (pa.large_binary(), pa.large_string())
    buffers = array.buffers()
    width = 8 if large else 4
    offsets = np.frombuffer(
        buffers[1], dtype=np.int64 if large else np.int32, count=len(array) + 1, offset=array.offset * width
    ).astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, dtype=np.uint8)
    return offsets, data


def _binary(count: int, offsets: np.ndarray, data: np.ndarray) -> pa.Array:
    base = offsets - offsets[0] if len(offsets) else offsets
    start = int(offsets[0]) if len(offsets) else 0
    body = data[start : start + int(base[-1])] if len(base) else data[:0]
    large = len(base) and int(base[-1]) >= 2**31
    return pa.Array.from_buffers(
        pa.large_binary() if large else pa.binary(),
        count,
        [None, pa.py_buffer(base.astype(np.int64 if large else np.int32)), pa.py_buffer(np.ascontiguousarray(body))],
    )
