"""The protection ledger: what each data file fieldcrypt wrote holds, so a removed or replaced one is named.

A file's own metadata only says what the file claims; an attribute dropped from it
together with its columns, or a file rewritten by another writer, looks like any other
file. The ledger keeps, for each file version fieldcrypt wrote, its identity (size, a digest
of its Parquet footer and one of its protection columns' chunk bytes) and, per protected
attribute, the number of protected cells and a digest of their (row key, ciphertext,
wrapped key, blind index) cells.

Sharded so that no file is hot: one shard per dataset partition,
`_fieldcrypt/ledger/<dataset>/<partition>.json` (docs/FORMAT.md section 6d), MAC'd under
a key derived from the policy MAC key (so rotation, which rewraps that key, needs nothing
here) and replaced by compare-and-swap (LakeStore.update, local and S3). A replace is
recorded in two steps around it (`recorded`): the new entry is staged before the replace
and committed after, so a crash in between leaves the file readable either way.

Checked by status, protect, reveal and dispatch (the partition's files against its shard:
one shard read, and per file its footer and protection-column chunks) and by verify, which
also recomputes the cell digests. Files fieldcrypt never wrote are not in the ledger:
pending, not errors; a file whose metadata carries fieldcrypt's ledger mark but is not in
the ledger is an error. The rules, and the exact bytes: docs/FORMAT.md section 6d.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fieldcrypt.errors import InputError, IntegrityError
from fieldcrypt.format.columns import row_key_bytes
from fieldcrypt.format.file_metadata import FILE_METADATA_KEY
from fieldcrypt.keys.policy_auth import MacKey
from fieldcrypt.lake.parquet_io import open_parquet, row_groups
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec
from fieldcrypt.policy.rollback import RESTORE_HINT, canonical

LEDGER_DIR = "_fieldcrypt/ledger"
LEDGER_FORMAT = "fieldcrypt-ledger-v1"
LEDGER_KEY_LABEL = b"fieldcrypt-ledger-key-v1"
LEDGER_MAC_LABEL = b"fieldcrypt-ledger-v1\n"
CELLS_LABEL = b"fieldcrypt-ledger-cells-v1\n"
LEDGER_MARK = "ledgered"  # member of a file's fieldcrypt metadata: written by a fieldcrypt that ledgers it
UNPARTITIONED = "@none"  # '@' is escaped in every partition name, so this never collides


class LedgerError(IntegrityError):
    """A data file does not match the protection ledger (or is missing from it); names the file."""

    def __init__(self, message: str, rel: str | None = None, replaced: bool = False) -> None:
        super().__init__(message)
        self.rel = rel
        self.replaced = replaced  # the file is there but differs: its cells can be diagnosed


@dataclass(frozen=True)
class FileEntry:
    """One file version fieldcrypt wrote: size, footer digest, and per attribute (cells, cell digest)."""

    size: int
    footer: str
    chunks: str  # SHA-256 of the protection columns' column-chunk bytes (file_identity)
    attributes: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def identity(self) -> tuple[int, str, str]:
        return self.size, self.footer, self.chunks

    def to_doc(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "footer": self.footer,
            "chunks": self.chunks,
            "attributes": {n: {"cells": c, "digest": d} for n, (c, d) in sorted(self.attributes.items())},
        }

    @classmethod
    def from_doc(cls, doc: Any) -> FileEntry:
        attributes = {str(n): (int(a["cells"]), str(a["digest"])) for n, a in doc["attributes"].items()}
        return cls(int(doc["size"]), str(doc["footer"]), str(doc["chunks"]), attributes)


@dataclass
class Shard:
    """The ledger of one partition: committed entries, entries staged around a replace, a version."""

    workspace: str
    dataset: str
    partition: str | None
    version: int = 0
    files: dict[str, FileEntry] = field(default_factory=dict)
    staged: dict[str, FileEntry] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "workspace": self.workspace,
            "dataset": self.dataset,
            "partition": self.partition,
            "version": self.version,
            "files": {rel: e.to_doc() for rel, e in sorted(self.files.items())},
            "staged": {rel: e.to_doc() for rel, e in sorted(self.staged.items())},
        }

    def sealed(self, key: MacKey) -> bytes:
        body = self.body()
        mac = key.mac_bytes(LEDGER_MAC_LABEL, canonical(body))
        return (json.dumps({**body, "mac": base64.b64encode(mac).decode()}, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def opened(cls, raw: bytes, key: MacKey, expect: tuple[str, str, str | None], where: str) -> Shard:
        bad = LedgerError(f"{where} is not a valid protection-ledger shard, or failed authentication; refused")
        try:
            doc = json.loads(raw)
            body = {k: v for k, v in doc.items() if k != "mac"}
            mac = base64.b64decode(str(doc["mac"]), validate=True)
            shard = cls(
                str(body["workspace"]),
                str(body["dataset"]),
                None if body["partition"] is None else str(body["partition"]),
                int(body["version"]),
                {str(rel): FileEntry.from_doc(e) for rel, e in body["files"].items()},
                {str(rel): FileEntry.from_doc(e) for rel, e in body["staged"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise bad from None
        if body.get("format") != LEDGER_FORMAT or shard.body() != body:
            raise bad
        if not key.verify_bytes(LEDGER_MAC_LABEL, canonical(body), mac):
            raise bad
        if (shard.workspace, shard.dataset, shard.partition) != expect:
            raise LedgerError(
                f"{where} is the ledger of {shard.dataset} partition {shard.partition!r} of workspace "
                f"{shard.workspace!r}, not of this partition (moved or copied); refused"
            )
        return shard


def shard_path(dataset: str, partition: str | None) -> str:
    name = UNPARTITIONED if partition is None else quote(partition, safe="")
    return f"{LEDGER_DIR}/{dataset}/{name}.json"


# -- what identifies a file version ----------------------------------------------------------


PROTECTION_SUFFIXES = ("__fc_ct", "__fc_dek", "__fc_bidx")


def file_identity(store: LakeStore, rel: str) -> tuple[int, str, str]:
    """What identifies a file version without decoding it: (size, SHA-256 of its footer, SHA-256 of the raw
    bytes of its protection columns' column chunks). Reads the footer and those chunks only.

    The footer digest covers its bytes, its 4-byte length and the trailing magic; the chunk digest the
    bytes of every column chunk whose column name ends in `__fc_ct`, `__fc_dek` or `__fc_bidx`, row group
    by row group, in footer order (docs/FORMAT.md section 6d). A footer alone is not enough: rewrapping
    keys of the same length leaves it byte-identical.
    """
    where = store.display(rel)
    with store.open_input(rel) as handle:
        size = handle.size()
        tail = handle.read_at(8, size - 8) if size >= 12 else b""
        length = int.from_bytes(tail[:4], "little") if tail else 0
        if tail[4:] != b"PAR1" or length + 12 > size:
            raise InputError(f"{where} is not a readable Parquet file (it does not end with a Parquet footer)")
        footer = handle.read_at(length, size - 8 - length)
        try:
            metadata = pq.ParquetFile(handle).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{where} is not a readable Parquet file ({type(exc).__name__})") from None
        chunks = hashlib.sha256()
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            for index in range(row_group.num_columns):
                column = row_group.column(index)
                if not column.path_in_schema.endswith(PROTECTION_SUFFIXES):
                    continue
                start = column.data_page_offset
                if column.has_dictionary_page and column.dictionary_page_offset is not None:
                    start = min(start, column.dictionary_page_offset)
                if start < 0 or column.total_compressed_size < 0 or start + column.total_compressed_size > size:
                    raise IntegrityError(f"{where}: column chunk {column.path_in_schema} lies outside the file")
                chunks.update(handle.read_at(column.total_compressed_size, start))
    return size, hashlib.sha256(footer + tail).hexdigest(), chunks.hexdigest()


class _ColumnDigest:
    """Row-group independent digest of one column's cells: one hash of the lengths, one of the bytes."""

    def __init__(self) -> None:
        self.lengths = hashlib.sha256()
        self.values = hashlib.sha256()

    def update(self, column: pa.Array) -> None:
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        lengths, data = _cells(column)
        self.lengths.update(lengths)
        self.values.update(data)

    def update_valid(self, column: pa.Array) -> None:
        """`update` with the column's non-null cells alone (as `update(pc.drop_null(column))`), read in place
        when no bytes lie behind its nulls: a ciphertext column's nulls are the rows it does not protect, and
        copying its protected cells out (most of a protected file's bytes) only to hash them cost CPU."""
        offset_type = _OFFSET_TYPES.get(column.type)
        if offset_type is None or column.null_count == 0 or column.null_count == len(column):
            self.update(column.drop_null())
            return
        width = np.dtype(offset_type).itemsize
        offsets = np.frombuffer(
            column.buffers()[1], dtype=offset_type, count=len(column) + 1, offset=column.offset * width
        )
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
        lengths = np.diff(offsets)[valid].astype("<i8")
        if int(lengths.sum()) != int(offsets[-1] - offsets[0]):  # bytes behind a null: copy the cells out
            self.update(column.drop_null())
            return
        data = column.buffers()[2]
        self.lengths.update(lengths.tobytes())
        self.values.update(b"" if data is None else memoryview(data)[int(offsets[0]) : int(offsets[-1])])

    def digest(self) -> bytes:
        return self.lengths.digest() + self.values.digest()


_OFFSET_TYPES = {pa.binary(): "<i4", pa.string(): "<i4", pa.large_binary(): "<i8", pa.large_string(): "<i8"}


def _cells(column: pa.Array) -> tuple[bytes, memoryview | bytes]:
    """A column's cell lengths (little-endian int64, -1 for null) and its non-null cells concatenated, read
    from its offsets and data buffers (no copy of the values)."""
    offset_type = _OFFSET_TYPES.get(column.type)
    if offset_type is None:  # a type the buffers cannot be read as: the values, cast
        column = column.cast(pa.large_binary())
        offset_type = "<i8"
    count = len(column)
    if count == 0:
        return b"", b""
    if column.null_count == count:
        return np.full(count, -1, dtype="<i8").tobytes(), b""
    width = np.dtype(offset_type).itemsize
    offsets = np.frombuffer(column.buffers()[1], dtype=offset_type, count=count + 1, offset=column.offset * width)
    lengths = np.diff(offsets).astype("<i8")
    if column.null_count:
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
        if int(lengths[~valid].sum()) != 0:  # bytes behind null slots: concatenate the non-null cells alone
            return np.where(valid, lengths, -1).astype("<i8").tobytes(), _cells(pc.drop_null(column))[1]
        lengths = np.where(valid, lengths, -1).astype("<i8")
    data = column.buffers()[2]
    values = b"" if data is None else memoryview(data)[int(offsets[0]) : int(offsets[-1])]
    return lengths.tobytes(), values


class CellDigester:
    """The cell digests of one file (`cell_digests`), fed its row groups in file order by whoever decodes them.

    A rewrite's verification decodes the new file's protection columns anyway: fed those batches, this gives
    the ledger entry's digests without a second decode (fieldcrypt.engine.rewrite). The hashing runs on one
    helper thread (hashlib and Arrow's kernels release the GIL), at most two row groups behind the feeder.
    `result` is None unless it was fed every row group, each with every column it needs (`columns`);
    `close` (also done by `result`) stops the helper.
    """

    _BEHIND = 2

    def __init__(
        self, dataset: DatasetSpec, attributes: Sequence[AttributePolicy], names: Sequence[str], where: str
    ) -> None:
        self.dataset = dataset
        self.where = where
        self.present = [a for a in attributes if a.ciphertext_column in names]
        wanted = set(dataset.primary_key) if self.present else set()
        for a in self.present:
            wanted |= {a.ciphertext_column, a.wrapped_key_column, a.blind_index_column or a.ciphertext_column}
        self.columns = [n for n in names if n in wanted]
        self.counts = {a.name: 0 for a in self.present}
        self.digests = {a.name: [_ColumnDigest() for _ in range(4)] for a in self.present}
        self.groups = 0
        self.rows = 0
        self.complete = True
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def add(self, batch: pa.RecordBatch) -> None:
        """The next row group (it may hold more columns than needed)."""
        index = self.groups
        self.groups += 1
        self.rows += batch.num_rows
        if not self.present or not self.complete:
            return
        if any(batch.schema.get_field_index(name) < 0 for name in self.columns):
            self.complete = False
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fieldcrypt-ledger")
        while len(self._pending) >= self._BEHIND:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._digest, batch, index))

    def _digest(self, batch: pa.RecordBatch, index: int) -> None:
        # A dataset without a primary key binds no row key into its cells: its key column counts as all null.
        keys = (
            row_key_bytes(batch, self.dataset.primary_key, f"{self.where} row group {index}")
            if self.dataset.primary_key
            else pa.nulls(batch.num_rows, pa.binary())
        )
        for a in self.present:
            ciphertext = batch.column(a.ciphertext_column)
            protected = pc.is_valid(ciphertext)
            protected_count = protected.true_count
            self.counts[a.name] += protected_count
            columns = [keys, ciphertext]
            for column in (a.wrapped_key_column, a.blind_index_column):
                at = batch.schema.get_field_index(column) if column else -1
                columns.append(batch.column(at) if at >= 0 else pa.nulls(batch.num_rows, pa.binary()))
            every = protected_count == batch.num_rows
            for position, (digest, column) in enumerate(zip(self.digests[a.name], columns, strict=True)):
                if every:
                    digest.update(column)
                elif position == 1:  # the ciphertexts: the protected rows are its non-null cells
                    digest.update_valid(column)
                else:
                    digest.update(pc.filter(column, protected))

    def close(self) -> None:
        """Stop the helper thread (waiting for the row group it is on); nothing is returned after this."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if pending:
            self.complete = False

    def result(self, row_groups: int, rows: int) -> dict[str, tuple[int, str]] | None:
        """The digests, if fed exactly `row_groups` row groups of `rows` rows with every column needed."""
        try:
            for future in self._pending:
                future.result()
            self._pending = []
        finally:
            self.close()
        if not self.complete or (self.groups, self.rows) != (row_groups, rows):
            return None
        out = {}
        for a in self.present:
            h = hashlib.sha256(CELLS_LABEL + struct.pack("<Q", self.counts[a.name]))
            for digest in self.digests[a.name]:
                h.update(digest.digest())
            out[a.name] = (self.counts[a.name], h.hexdigest())
        return out


def cell_digests(
    parquet: pq.ParquetFile, dataset: DatasetSpec, attributes: Sequence[AttributePolicy], where: str
) -> dict[str, tuple[int, str]]:
    """Per attribute whose ciphertext column the file has: (protected cells, digest of their cells).

    The digest (docs/FORMAT.md section 6d) covers, for the protected rows in file order, the
    row key, ciphertext, wrapped key and blind index of each: a cell removed, added, moved or
    replaced changes it.
    """
    digester = CellDigester(dataset, attributes, parquet.schema_arrow.names, where)
    if not digester.present:
        return {}
    for batch in row_groups(parquet, where, columns=digester.columns):
        digester.add(batch)
    found = digester.result(parquet.num_row_groups, parquet.metadata.num_rows)
    assert found is not None  # fed every row group with the columns it asked for
    return found


def entry_of(
    store: LakeStore,
    rel: str,
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    cells: Mapping[str, tuple[int, str]] | None = None,
) -> FileEntry:
    """The ledger entry of a file; `cells`: its cell digests when already taken from its decoded bytes
    (CellDigester), else they are read here."""
    size, footer, chunks = file_identity(store, rel)
    if cells is not None:
        return FileEntry(size, footer, chunks, dict(cells))
    with open_parquet(store, rel) as parquet:
        return FileEntry(size, footer, chunks, cell_digests(parquet, dataset, attributes, store.display(rel)))


def is_marked(store: LakeStore, rel: str) -> bool:
    """Whether a file's fieldcrypt metadata says a ledgering fieldcrypt wrote it."""
    with open_parquet(store, rel) as parquet:
        raw = (parquet.schema_arrow.metadata or {}).get(FILE_METADATA_KEY)
    if raw is None:
        return False
    try:
        return json.loads(raw).get(LEDGER_MARK) is True
    except (ValueError, AttributeError):
        return False  # malformed metadata is refused, by name, where the file is read


# -- the ledger --------------------------------------------------------------------------------


# Whether a protection run would encrypt cells of a file (fieldcrypt.engine.protect's scan): handed in by the
# workspace, as protect records into the ledger and the ledger must not import it back.
PendingCells = Callable[[LakeStore, str, DatasetSpec, Sequence[AttributePolicy]], bool]


class Ledger:
    """The protection ledger of one workspace's lake."""

    def __init__(
        self, store: LakeStore, workspace: str, policy_key: Callable[[], MacKey], pending: PendingCells
    ) -> None:
        self.store = store
        self.workspace = workspace
        self._policy_key = policy_key
        self._pending = pending
        self._key: MacKey | None = None

    def key(self) -> MacKey:
        if self._key is None:  # the policy MAC key never changes (rotation rewraps the same bytes)
            self._key = self._policy_key().derived(LEDGER_KEY_LABEL)
        return self._key

    def load(self, dataset: str, partition: str | None) -> Shard | None:
        rel = shard_path(dataset, partition)
        found = self.store.read_versioned(rel)
        if found is None:
            return None
        return Shard.opened(found[0], self.key(), (self.workspace, dataset, partition), self.store.display(rel))

    def _update(self, dataset: str, partition: str | None, change: Callable[[Shard], bool]) -> None:
        rel = shard_path(dataset, partition)
        where = self.store.display(rel)
        key = self.key()

        def rewrite(stored: bytes | None) -> bytes | None:
            shard = (
                Shard(self.workspace, dataset, partition)
                if stored is None
                else Shard.opened(stored, key, (self.workspace, dataset, partition), where)
            )
            if not change(shard):
                return None
            shard.version += 1
            return shard.sealed(key)

        self.store.update(rel, rewrite, "the protection ledger was being updated")

    def stage(self, dataset: str, partition: str | None, rel: str, entry: FileEntry) -> None:
        def change(shard: Shard) -> bool:
            shard.staged[rel] = entry
            return True

        self._update(dataset, partition, change)

    def commit(self, dataset: str, partition: str | None, rel: str, entry: FileEntry) -> None:
        def change(shard: Shard) -> bool:
            if shard.staged.get(rel) == entry:
                del shard.staged[rel]
            shard.files[rel] = entry
            return True

        self._update(dataset, partition, change)

    def unstage(self, dataset: str, partition: str | None, rel: str, entry: FileEntry) -> None:
        def change(shard: Shard) -> bool:
            if shard.staged.get(rel) != entry:
                return False
            del shard.staged[rel]
            return True

        self._update(dataset, partition, change)

    def replace_files(
        self, dataset: str, partition: str | None, added: dict[str, FileEntry], retired: Sequence[str]
    ) -> None:
        """After a table commit (fieldcrypt.engine.table_commit): the new files' staged entries become theirs and
        the files the commit removed from the table leave the ledger, in one update."""

        def change(shard: Shard) -> bool:
            for rel, entry in added.items():
                if shard.staged.get(rel) == entry:
                    del shard.staged[rel]
                shard.files[rel] = entry
            for rel in retired:
                shard.files.pop(rel, None)
                shard.staged.pop(rel, None)
            return True

        self._update(dataset, partition, change)

    def record(self, dataset: str, partition: str | None, entries: dict[str, FileEntry]) -> None:
        """Replace a partition's whole shard by `entries` (a deliberate, audited restore): the stored shard
        is not read, so one that no longer authenticates (a policy adopted under a new MAC key) is replaced."""
        rel = shard_path(dataset, partition)
        shard = Shard(self.workspace, dataset, partition, 1, dict(entries))
        self.store.update(rel, lambda _stored: shard.sealed(self.key()), "the protection ledger was being updated")

    def check(
        self,
        dataset: DatasetSpec,
        partition: str | None,
        files: Sequence[str],
        attributes: Sequence[AttributePolicy],
        *,
        deep: bool = False,
        skip_replaced: bool = False,
    ) -> None:
        """The partition's `files` (its listing) against its shard; `deep`: the cell digests too (verify).

        LedgerError naming the first file that is gone, replaced, or written by fieldcrypt but
        not in the ledger. Files never protected are pending: not in the ledger, not an error.
        `skip_replaced` (protection): a replaced file with nothing to protect is left to verify (and
        to the check right before any replace of it), so a run that leaves it alone does not stop on it.
        """
        shard = self.load(dataset.name, partition)
        ledger = self.store.display(shard_path(dataset.name, partition))
        listed = set(files)
        for rel in sorted(shard.files if shard else {}):
            if rel not in listed:
                raise LedgerError(
                    f"{self.store.display(rel)} is in the protection ledger ({ledger}) but not in the lake: "
                    "a protected file was deleted or moved",
                    rel,
                )
        for rel in files:
            try:
                self._check_file(shard, rel, ledger, dataset, attributes, deep)
            except LedgerError as exc:
                if not (skip_replaced and exc.replaced) or self._pending(self.store, rel, dataset, attributes):
                    raise

    def check_file(
        self, dataset: DatasetSpec, partition: str | None, rel: str, attributes: Sequence[AttributePolicy]
    ) -> None:
        """One file against the shard of its partition (right before fieldcrypt replaces it)."""
        shard = self.load(dataset.name, partition)
        self._check_file(shard, rel, self.store.display(shard_path(dataset.name, partition)), dataset, attributes)

    def _check_file(
        self,
        shard: Shard | None,
        rel: str,
        ledger: str,
        dataset: DatasetSpec,
        attributes: Sequence[AttributePolicy],
        deep: bool = False,
    ) -> None:
        where = self.store.display(rel)
        entries = [] if shard is None else [e for e in (shard.files.get(rel), shard.staged.get(rel)) if e]
        if shard is not None and rel not in shard.files and rel in shard.staged:
            # Only staged: a run died around its replace. Either the file is the one it wrote, or the
            # replace never happened and the file is what it was before (unledgered).
            if shard.staged[rel].identity == file_identity(self.store, rel):
                return
            entries = []
        if not entries:
            if is_marked(self.store, rel):
                raise LedgerError(
                    f"{where} was written by fieldcrypt (its metadata says so) but is not in the protection "
                    f"ledger ({ledger}): copied here from elsewhere, or {RESTORE_HINT}",
                    rel,
                )
            return  # never protected: pending
        identity = file_identity(self.store, rel)
        matching = [e for e in entries if e.identity == identity]
        if matching and not deep:
            return
        with open_parquet(self.store, rel) as parquet:
            found = cell_digests(parquet, dataset, attributes, where)
        if not matching and self._relanded(rel, entries, found, dataset, attributes):
            return
        self._compare(where, rel, entries, matching, found, ledger)

    def _relanded(
        self,
        rel: str,
        entries: list[FileEntry],
        found: dict[str, tuple[int, str]],
        dataset: DatasetSpec,
        attributes: Sequence[AttributePolicy],
    ) -> bool:
        """A ledgered file that upstream landed again: new rows to protect, and every attribute still has at
        least the protected cells fieldcrypt wrote (verify, reveal and dispatch check those cells one by
        one). Anything else that changed the file is a replacement."""
        keeps_cells = any(
            all(found.get(name, (0, ""))[0] >= count for name, (count, _) in entry.attributes.items())
            for entry in entries
        )
        return keeps_cells and self._pending(self.store, rel, dataset, attributes)

    def _compare(
        self,
        where: str,
        rel: str,
        entries: list[FileEntry],
        matching: list[FileEntry],
        found: dict[str, tuple[int, str]],
        ledger: str,
    ) -> None:
        # The cells first: their finding names what changed.
        expected = (matching or entries)[0].attributes
        for name in sorted(set(expected) | set(found)):
            was, now = expected.get(name, (0, "")), found.get(name, (0, ""))
            if was == now:
                continue
            if name not in found:
                detail = f"{name} had {was[0]} protected cells; the file has none (its columns were removed)"
            elif was[0] != now[0]:
                detail = f"{name} had {was[0]} protected cells; the file has {now[0]}"
            else:
                detail = f"a protected {name} cell was removed, added, moved or replaced"
            raise LedgerError(
                f"{where} does not hold what fieldcrypt wrote ({ledger}): {detail}; replaced by an outside "
                f"writer since fieldcrypt wrote it, or {RESTORE_HINT}",
                rel,
                replaced=True,
            )
        if not matching:
            raise LedgerError(
                f"{where} is not the file fieldcrypt wrote: its size, footer or protection columns differ from its "
                f"protection-ledger entry ({ledger}); replaced by an outside writer since fieldcrypt wrote it, "
                f"or {RESTORE_HINT}",
                rel,
                replaced=True,
            )


@dataclass(frozen=True)
class LedgerStep:
    """What a file rewrite records in the ledger: its partition, and how to digest its cells."""

    ledger: Ledger
    dataset: DatasetSpec
    partition: str | None
    attributes: Sequence[AttributePolicy]

    def digester(self, names: Sequence[str], where: str) -> CellDigester:
        """A digester of a new file's cells (`names`: its columns), for its verification to feed."""
        return CellDigester(self.dataset, self.attributes, names, where)


@contextlib.contextmanager
def recorded(
    step: LedgerStep | None, temp: str, rel: str, cells: Mapping[str, tuple[int, str]] | None = None
) -> Iterator[None]:
    """Around the replace of `rel` by `temp`: stage the new file's entry, then commit it.

    Staged before the replace, so a crash right after it leaves a file the ledger accepts (and
    an unconfirmed audit intent); withdrawn if the replace fails. `cells`: the temporary file's cell
    digests, taken by its verification from the bytes it decoded (a CellDigester of `step`); None: read here.
    """
    if step is None:
        yield
        return
    store, name = step.ledger.store, step.dataset.name
    step.ledger.check_file(step.dataset, step.partition, rel, step.attributes)  # never launder a replaced file
    entry = entry_of(store, temp, step.dataset, step.attributes, cells)
    step.ledger.stage(name, step.partition, rel, entry)
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # the replace's own error is the one to report
            step.ledger.unstage(name, step.partition, rel, entry)
        raise
    step.ledger.commit(name, step.partition, rel, entry)
