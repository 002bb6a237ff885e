"""Blind-index re-index: recompute an attribute's blind index under a new index key.

After a compromise of an index key (or of the master key that wrapped it) the stored
indexes stay attackable offline: a phone number's index is brute-forced in seconds. A
re-index gives the attribute a new index key and rewrites every file's index column
under it. Only protected rows have an index, and their values are decrypted in memory
to compute it; nothing else in a file changes.

A campaign: `Workspace.start_reindex` stores the new key as the attribute's index key
(new rows are indexed under it from then on) and keeps the old one in
`_fieldcrypt/blind_index_retiring.json`; `Workspace.reindex` rewrites the files of one
partition (verified, then replaced atomically, like protection; a file already under the
new key is left alone, so a re-run is a no-op); `Workspace.complete_reindex` proves no
index under the old key is left, then forgets the old key. While the campaign runs,
indexes of partitions not yet re-indexed do not join with the others.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fieldcrypt.engine.encrypt import ciphertext_digest
from fieldcrypt.engine.rewrite import BatchWriter, Commit, FileJob, Output, lake_commit, rewrite_file
from fieldcrypt.errors import IntegrityError, VerificationError
from fieldcrypt.keys.blind_index import INDEX_KEYS_FORMAT, BlindIndexKey
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.keys.policy_auth import check_file_protection
from fieldcrypt.lake.parquet_io import open_parquet, row_group
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.ledger import LedgerStep
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec
from fieldcrypt.policy.select import existing_ciphertext
from fieldcrypt.reads.reveal import decrypt_rows

RETIRING_PATH = "_fieldcrypt/blind_index_retiring.json"
SAMPLE_PER_ROW_GROUP = 32


class RetiringIndexKeys:
    """The old index keys of attributes being re-indexed (wrapped, by attribute name); same format as the keys file."""

    def __init__(self, store: LakeStore) -> None:
        self.store = store

    def load(self) -> dict[str, bytes]:
        if not self.store.exists(RETIRING_PATH):
            return {}
        where = self.store.display(RETIRING_PATH)
        try:
            doc = json.loads(self.store.read_bytes(RETIRING_PATH))
            if doc.get("format") != INDEX_KEYS_FORMAT:
                raise IntegrityError(f"{where}: unknown format {doc.get('format')!r}")
            return {name: base64.b64decode(value, validate=True) for name, value in doc["keys"].items()}
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise IntegrityError(f"{where} is not a valid blind-index key file") from None

    def save(self, keys: dict[str, bytes]) -> None:
        if not keys:
            self.store.delete(RETIRING_PATH)
            return
        doc = {"format": INDEX_KEYS_FORMAT, "keys": {n: base64.b64encode(v).decode() for n, v in sorted(keys.items())}}
        self.store.write_bytes(RETIRING_PATH, (json.dumps(doc, indent=2) + "\n").encode())


@dataclass
class ReindexReport:
    """Counts of one file or partition; never a value or an index."""

    path: str
    files: int = 0
    rows: int = 0
    reindexed: dict[str, int] = field(default_factory=dict)  # attribute -> indexes recomputed under the new key
    already: dict[str, int] = field(default_factory=dict)  # attribute -> indexes already under the new key
    files_rewritten: int = 0
    seconds: float = 0.0
    summary_files_removed: list[str] = field(default_factory=list)  # fieldcrypt.lake.summary_files
    rewrite_path: str = ""  # "splice" or "full" (fieldcrypt.engine.rewrite); a total "+"-joins its files'

    @property
    def pending(self) -> int:
        return sum(self.reindexed.values())

    @classmethod
    def total(cls, path: str, reports: Sequence[ReindexReport]) -> ReindexReport:
        out = cls(path)
        for report in reports:
            out.files += report.files
            out.rows += report.rows
            out.files_rewritten += report.files_rewritten
            out.seconds += report.seconds
            out.summary_files_removed = sorted({*out.summary_files_removed, *report.summary_files_removed})
            out.rewrite_path = "+".join(sorted({*out.rewrite_path.split("+"), *report.rewrite_path.split("+")} - {""}))
            for name, count in report.reindexed.items():
                out.reindexed[name] = out.reindexed.get(name, 0) + count
            for name, count in report.already.items():
                out.already[name] = out.already.get(name, 0) + count
        return out


@dataclass(frozen=True)
class IndexKeys:
    """The new (current) and old index key of each attribute being re-indexed."""

    new: Mapping[str, BlindIndexKey]
    old: Mapping[str, BlindIndexKey]


def reindex_file(
    store: LakeStore,
    rel: str,
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    targets: Sequence[AttributePolicy],
    keys: IndexKeys,
    cache: DataKeyCache,
    *,
    dataset_root: str,
    partition: str | None = None,
    dry_run: bool = False,
    ledger: LedgerStep | None = None,
    commit: Commit = lake_commit,
) -> ReindexReport:
    """Recompute the blind index of `targets` under their new key in `rel`; verify, then replace atomically.

    `attributes` are all enabled attributes of the dataset (the file's protection metadata
    is rewritten from them, as protection does). An index that is neither the old nor
    the new key's index of its decrypted value is an IntegrityError (tampered). With
    `dry_run`, only counts (the completion check).
    """
    started = time.perf_counter()
    where = store.display(rel)
    report = ReindexReport(where, files=1)
    original_version = store.version(rel)
    pending = _scan(store, rel, dataset, attributes, targets, keys, cache, partition, report)
    if not pending or dry_run:
        report.seconds = time.perf_counter() - started
        return report
    rewritten = ReindexReport(where, files=1, files_rewritten=1)
    job = FileJob(store, rel, dataset, attributes, cache, dataset_root, partition, "reindex", "re-indexed", ledger)

    # Re-indexing changes the targets' index columns only: on the splice path every other chunk is copied.
    changed = {a.blind_index_column for a in targets if a.blind_index_column}

    def write(source: pq.ParquetFile, out: Output) -> list[dict[str, bytes]]:
        rewritten.rows, rewritten.reindexed = 0, {}  # may run twice (fieldcrypt.engine.rewrite.Output)
        read = out.columns(changed | set(_columns(source.schema_arrow, dataset, targets, where)), source)
        with out.writer(source, source.schema_arrow, changed) as writer:
            return _write(writer, read, source, dataset, targets, keys, cache, partition, where, rewritten)

    def verify(source: pq.ParquetFile, written: pq.ParquetFile, out: Output, digests: list[dict[str, bytes]]) -> None:
        read = out.columns(changed | set(_columns(source.schema_arrow, dataset, targets, where)), source)
        _verify(source, written, read, dataset, targets, keys, cache, partition, where, digests)

    _, (intent, rewritten.summary_files_removed), rewritten.rewrite_path = rewrite_file(
        job, original_version, write, verify, commit=commit
    )
    if cache.audit is not None:
        for name, cells in rewritten.reindexed.items():
            cache.audit.record(
                "reindex",
                dataset=dataset.name,
                attribute=name.partition(".")[2],
                partition=partition,
                cells=cells,
                intent=intent,
            )
    rewritten.seconds = time.perf_counter() - started
    return rewritten


def _columns(schema: pa.Schema, dataset: DatasetSpec, targets: Sequence[AttributePolicy], where: str) -> list[str]:
    wanted = set(dataset.primary_key)
    for attribute in targets:
        if schema.get_field_index(attribute.ciphertext_column) < 0:
            continue  # never protected: no index to recompute
        needed = (attribute.ciphertext_column, attribute.wrapped_key_column, attribute.blind_index_column or "")
        missing = [c for c in needed if schema.get_field_index(c) < 0]
        if missing:
            raise IntegrityError(f"{where} has ciphertexts of {attribute.name} but lacks {', '.join(missing)}")
        wanted |= {attribute.column, *needed}
    return [name for name in schema.names if name in wanted]


def _new_indexes(
    batch: pa.RecordBatch,
    dataset: DatasetSpec,
    attribute: AttributePolicy,
    keys: IndexKeys,
    cache: DataKeyCache,
    at: str,
    partition: str | None,
) -> tuple[pa.Array, pa.Array, pa.Array] | None:
    """(protected rows, stored index, new index) of the protected rows; checks each stored index."""
    rows = pc.indices_nonzero(pc.is_valid(existing_ciphertext(batch, attribute)))
    if len(rows) == 0:
        return None
    assert attribute.blind_index_column is not None
    plaintext = decrypt_rows(batch, dataset, attribute, cache, rows, at, partition)
    new = keys.new[attribute.name].index(plaintext)
    stored = batch.column(attribute.blind_index_column).take(rows)
    is_new = pc.fill_null(pc.equal(stored, new), False)
    if not pc.all(is_new).as_py():
        old = keys.old[attribute.name].index(plaintext)
        is_old = pc.fill_null(pc.equal(stored, old), False)
        bad = pc.invert(pc.or_(is_new, is_old))
        if pc.any(bad).as_py():
            row = rows[pc.indices_nonzero(bad)[0].as_py()].as_py()
            raise IntegrityError(
                f"{at} row {row}: the blind index of {attribute.name} is the index of its value under neither the "
                "old nor the new index key (tampered or written under another key)"
            )
    return rows, stored, new


def _scan(
    store: LakeStore,
    rel: str,
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    targets: Sequence[AttributePolicy],
    keys: IndexKeys,
    cache: DataKeyCache,
    partition: str | None,
    report: ReindexReport,
) -> bool:
    """Count indexes already under the new key and those still to recompute; True if any is."""
    where = store.display(rel)
    with open_parquet(store, rel) as source:
        check_file_protection(source, attributes, where)
        columns = _columns(source.schema_arrow, dataset, targets, where)
        for index in range(source.num_row_groups):
            batch = row_group(source, index, where, columns)
            report.rows += batch.num_rows
            for attribute in targets:
                found = _new_indexes(batch, dataset, attribute, keys, cache, f"{where} row group {index}", partition)
                if found is None:
                    continue
                _, stored, new = found
                same = pc.fill_null(pc.equal(stored, new), False)
                already = pc.sum(same).as_py() or 0
                report.already[attribute.name] = report.already.get(attribute.name, 0) + already
                report.reindexed[attribute.name] = report.reindexed.get(attribute.name, 0) + len(new) - already
    return report.pending > 0


def _write(
    writer: BatchWriter,
    columns: list[str] | None,
    source: pq.ParquetFile,
    dataset: DatasetSpec,
    targets: Sequence[AttributePolicy],
    keys: IndexKeys,
    cache: DataKeyCache,
    partition: str | None,
    where: str,
    report: ReindexReport,
) -> list[dict[str, bytes]]:
    """Stream the source's `columns` (None: all) through `writer` with the targets' index columns
    recomputed, one batch per row group; per row group, their digests."""
    digests: list[dict[str, bytes]] = []
    for index in range(source.num_row_groups):
        batch = row_group(source, index, where, columns)
        report.rows += batch.num_rows
        at = f"{where} row group {index}"
        digest: dict[str, bytes] = {}
        for attribute in targets:
            assert attribute.blind_index_column is not None
            found = _new_indexes(batch, dataset, attribute, keys, cache, at, partition)
            column_at = batch.schema.get_field_index(attribute.blind_index_column)
            if found is not None:
                rows, stored, new = found
                changed = len(new) - (pc.sum(pc.fill_null(pc.equal(stored, new), False)).as_py() or 0)
                report.reindexed[attribute.name] = report.reindexed.get(attribute.name, 0) + changed
                mask = pc.is_valid(existing_ciphertext(batch, attribute))
                column = pc.replace_with_mask(batch.column(column_at), mask, new.cast(batch.column(column_at).type))
                batch = batch.set_column(column_at, batch.schema.field(column_at), column)
            digest[attribute.name] = ciphertext_digest(pc.drop_null(batch.column(column_at)).cast(pa.binary()))
        writer.write_batch(batch)
        digests.append(digest)
    return digests


def _verify(
    source: pq.ParquetFile,
    written: pq.ParquetFile,
    columns: list[str] | None,
    dataset: DatasetSpec,
    targets: Sequence[AttributePolicy],
    keys: IndexKeys,
    cache: DataKeyCache,
    partition: str | None,
    where: str,
    digests: list[dict[str, bytes]],
) -> None:
    """Every other column read (`columns`, None: all; a splice proved the rest copied) is unchanged, every
    index column is what was written, a sample is recomputed."""
    if written.num_row_groups != source.num_row_groups or written.schema_arrow.names != source.schema_arrow.names:
        raise VerificationError(f"{where}: the re-indexed file does not have the source's row groups and columns")
    index_columns = {a.blind_index_column for a in targets}
    rng = random.SystemRandom()
    for index in range(source.num_row_groups):
        at = f"{where} row group {index}"
        before, after = row_group(source, index, where, columns), row_group(written, index, where, columns)
        if before.num_rows != after.num_rows:
            raise VerificationError(f"{at}: {after.num_rows} rows written, {before.num_rows} read")
        for name in before.schema.names:
            if name not in index_columns and not _decoded(after.column(name)).equals(_decoded(before.column(name))):
                raise VerificationError(f"{at}: column {name} changed while re-indexing")
        for attribute in targets:
            assert attribute.blind_index_column is not None
            column = after.column(attribute.blind_index_column)
            if ciphertext_digest(pc.drop_null(column).cast(pa.binary())) != digests[index][attribute.name]:
                raise VerificationError(f"{at}: blind indexes of {attribute.name} read back differ from those written")
            protected = pc.indices_nonzero(pc.is_valid(existing_ciphertext(after, attribute))).to_pylist()
            if pc.is_valid(column).true_count != len(protected):
                raise VerificationError(f"{at}: a protected {attribute.name} row lacks its blind index")
            picked = pa.array(sorted(rng.sample(protected, min(SAMPLE_PER_ROW_GROUP, len(protected)))), pa.int64())
            if len(picked):
                values = decrypt_rows(after, dataset, attribute, cache, picked, at, partition)
                if not column.take(picked).equals(keys.new[attribute.name].index(values).cast(column.type)):
                    raise VerificationError(f"{at}: a sampled blind index of {attribute.name} is not under the new key")


def _decoded(column: pa.Array) -> pa.Array:
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
