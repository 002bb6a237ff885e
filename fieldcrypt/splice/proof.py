"""Proof that a spliced file holds the copied bytes unchanged: SHA-256 of each source range against the
same-length destination range, so a verifier decodes only the changed columns."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import pyarrow as pa

from fieldcrypt.errors import VerificationError
from fieldcrypt.splice.footer import RandomAccess, Source
from fieldcrypt.splice.splice import CopiedRange

_BLOCK = 8 << 20


def range_digest(file: RandomAccess, start: int, end: int) -> bytes:
    """SHA-256 of bytes [start, end) of `file`, read a block at a time."""
    digest = hashlib.sha256()
    for block in range(start, end, _BLOCK):
        digest.update(file.read(block, min(block + _BLOCK, end)))
    return digest.digest()


def prove_copied(
    origin: Source | str | os.PathLike[str], destination: Source | str | os.PathLike[str], ranges: Iterable[CopiedRange]
) -> int:
    """Raise VerificationError unless every range of `origin` is byte-identical (by SHA-256) at its place in
    `destination`; returns the number of bytes proven. Paths are opened and closed here."""
    with _opened(origin, "splice origin") as origin_file, _opened(destination, "spliced file") as destination_file:
        proven = 0
        for copied in ranges:
            if copied.source[1] - copied.source[0] != copied.destination[1] - copied.destination[0]:
                raise VerificationError(
                    f"{copied.part} of {copied.column} row group {copied.row_group}: ranges differ in length"
                )
            if range_digest(origin_file, *copied.source) != range_digest(destination_file, *copied.destination):
                raise VerificationError(
                    f"{copied.part} of {copied.column} row group {copied.row_group}: bytes {copied.destination} of "
                    f"the spliced file differ from bytes {copied.source} they were copied from (SHA-256)"
                )
            proven += copied.source[1] - copied.source[0]
        return proven


class _opened:
    """A RandomAccess over a path (opened and closed here) or over a file or buffer the caller owns."""

    def __init__(self, source: Source | str | os.PathLike[str], name: str) -> None:
        self._owned: pa.NativeFile | None = None
        if isinstance(source, str | os.PathLike):
            name = os.fspath(source)
            self._owned = source = pa.OSFile(name, "rb")
        self._file = RandomAccess(source, name)

    def __enter__(self) -> RandomAccess:
        return self._file

    def __exit__(self, *_: object) -> None:
        if self._owned is not None:
            self._owned.close()
