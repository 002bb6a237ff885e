"""Hadoop checksum files (`.<name>.crc`) beside a lake's data files, kept true when a file is replaced.

Spark, and any Hadoop job, writing to a local (`file://`) path goes through Hadoop's
ChecksumFileSystem: it leaves `.<name>.crc` beside every file it writes and checks it on
every read. A wrong checksum fails the read (ChecksumException, Spark's
CANNOT_READ_FILE_FOOTER); a missing one is accepted (the read is then unchecked).

Layout, version 1 (checked against the files Spark 4.3 writes):

    offset  size  field
    0       4     magic b"crc\\0"
    4       4     bytesPerChecksum: big-endian int32 (Hadoop's `file.bytes-per-checksum`, 512)
    8       4*n   CRC-32 (the zlib / IEEE 802.3 polynomial, not CRC-32C) of each bytesPerChecksum
                  chunk of the data file in order, the last chunk shorter: big-endian uint32;
                  n = ceil(size / bytesPerChecksum), 0 for an empty file

`replace_data_file` is the one replace of a data file (protect, rotate, re-index): a file
without a `.crc` is replaced as before, and a `.crc` is never created. With one, the data
file's current bytes are first checked against it (a file damaged on disk is refused, not
laundered into a fresh checksum), then, under the directory lock: the old `.crc` is deleted,
the data file replaced, and the new `.crc` (computed from the new bytes, with the old
bytesPerChecksum) written atomically (temp + rename). A crash at any moment leaves the old
pair, a data file without `.crc` (accepted), or the new pair: never a `.crc` that does not
match its file. S3 (s3a://) is not a checksum file system: nothing writes or reads `.crc`
there, and the same code finds none.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from fieldcrypt.errors import ConcurrentUpdateError, IntegrityError
from fieldcrypt.lake.store import FileVersion, LakeStore

MAGIC = b"crc\0"
HEADER = struct.Struct(">4si")
MAX_BYTES_PER_CHECKSUM = 1 << 24  # Hadoop's default is 512; anything near this bound is not a checksum file
_READ_BLOCK = 1 << 20  # bytes read at a time while checksumming a file


def checksum_path(rel: str) -> str:
    """The Hadoop checksum file of a lake file: `dir/name` -> `dir/.name.crc`."""
    head, _, name = rel.rpartition("/")
    return f"{head}/.{name}.crc" if head else f".{name}.crc"


@dataclass(frozen=True)
class HadoopChecksums:
    """The content of a `.crc` file: the chunk size and one CRC-32 per chunk."""

    bytes_per_checksum: int
    checksums: tuple[int, ...]

    @classmethod
    def parse(cls, raw: bytes, where: str) -> HadoopChecksums:
        """The checksums in `raw`, the bytes of the `.crc` file `where`; IntegrityError if malformed."""
        if len(raw) < HEADER.size or raw[:4] != MAGIC:
            raise IntegrityError(f"{where} is not a Hadoop checksum file (no 'crc\\0' header)")
        _, bytes_per_checksum = HEADER.unpack_from(raw)
        if not 0 < bytes_per_checksum <= MAX_BYTES_PER_CHECKSUM:
            raise IntegrityError(f"{where}: bytesPerChecksum {bytes_per_checksum} is out of bounds")
        if (len(raw) - HEADER.size) % 4:
            raise IntegrityError(f"{where}: {len(raw) - HEADER.size} checksum bytes is not a whole number of CRC-32s")
        count = (len(raw) - HEADER.size) // 4
        return cls(bytes_per_checksum, struct.unpack_from(f">{count}I", raw, HEADER.size))

    @classmethod
    def of(cls, blocks: Iterable[bytes], bytes_per_checksum: int = 512) -> HadoopChecksums:
        """The checksums of the data read as `blocks` (any sizes; chunks span block boundaries)."""
        checksums: list[int] = []
        pending = b""
        for block in blocks:
            data = memoryview(pending + block if pending else block)
            whole = len(data) - len(data) % bytes_per_checksum
            checksums.extend(zlib.crc32(data[i : i + bytes_per_checksum]) for i in range(0, whole, bytes_per_checksum))
            pending = bytes(data[whole:])
        if pending:
            checksums.append(zlib.crc32(pending))
        return cls(bytes_per_checksum, tuple(checksums))

    @classmethod
    def of_file(cls, store: LakeStore, rel: str, bytes_per_checksum: int = 512) -> HadoopChecksums:
        """The checksums of a stored file, read in blocks (bounded memory)."""
        with store.open_input(rel) as handle:
            return cls.of(iter(lambda: bytes(handle.read(_READ_BLOCK)), b""), bytes_per_checksum)

    def encode(self) -> bytes:
        return HEADER.pack(MAGIC, self.bytes_per_checksum) + struct.pack(f">{len(self.checksums)}I", *self.checksums)


def replace_data_file(store: LakeStore, temp: str, rel: str, expected: FileVersion, what: str) -> None:
    """Atomically make the data file `rel` hold `temp`, only if it is still at `expected`, with its `.crc` kept true.

    `what` completes "changed while ..." in the ConcurrentUpdateError of a lost race.
    """
    sibling = checksum_path(rel)
    stored = store.read_versioned(sibling)
    if stored is None:
        store.replace_if(temp, rel, expected, what)
        return
    where = store.display(rel)
    old = HadoopChecksums.parse(stored[0], store.display(sibling))
    if HadoopChecksums.of_file(store, rel, old.bytes_per_checksum) != old:
        raise IntegrityError(
            f"{where} does not match its Hadoop checksum file {store.display(sibling)}: the file or its checksum "
            "was damaged on disk (or an older fieldcrypt rewrote the file without it); nothing was replaced. "
            "Restore the file, or delete the .crc if the file is known good (docs/OPERATIONS.md)"
        )
    new = HadoopChecksums.of_file(store, temp, old.bytes_per_checksum).encode()
    with store.exclusive(rel):
        # Checked before the old .crc goes, so a lost race leaves the winner's pair alone (local lake).
        if store.version_or_none(rel) != expected or store.version_or_none(sibling) != stored[1]:
            raise ConcurrentUpdateError(
                f"{where} changed while {what} (another worker wrote it); nothing was replaced, run again"
            )
        store.delete(sibling)
        store.replace_if(temp, rel, expected, what)
        store.write_bytes(sibling, new)
