"""A Delta or Iceberg table's protection ledger brought up to date after a run died around its table commit.

fieldcrypt.engine.table_commit stages each new file's ledger entry, publishes the file
(`part-fc-<uuid>.parquet`), commits the partition's replacements in one table transaction and
only then records the new files in the ledger and retires the old ones. A kill in between
leaves one of two states, each settled here by the next run that reads the partition:

- **Committed, not recorded**: the table lists the new files, the ledger the old ones. The
  commit's metadata carries its (old, new) pairs and `proof`, the ledger key's MAC over them
  and the new files' staged entries; only fieldcrypt holds that key. When a commit of this
  dataset partition authenticates, every new file is live in the table and is, byte for byte
  as the ledger defines a file's identity, the file its staged entry describes, the ledger
  step is completed (`recover`, audited `table_commit_recovered`). A new file that differs
  from its staged entry is refused by name; anything else not provable this way (a file
  another writer added or removed) is left to the ledger check, which refuses it as before.
- **Published, not committed**: a `part-fc-*` file no version of the table references, whose
  entry is staged and not committed, written by a run that is gone (its flock is free; on S3,
  older than store.STALE_TEMP_SECONDS). It may hold ciphertext, and plaintext of historical
  rows: deleted, its staged entry withdrawn (`sweep_published`).

The exact bytes of the proof: docs/FORMAT.md section 6d.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence

from fieldcrypt.lake.audit import AuditLog
from fieldcrypt.lake.inventory import Entry
from fieldcrypt.lake.store import DELETED, HELD, LakeStore
from fieldcrypt.lake.tables.base import NEW_FILE_PREFIX, PROOF_KEY, REPLACED_KEY, TableFormat
from fieldcrypt.policy.ledger import FileEntry, Ledger, LedgerError, Shard, file_identity, shard_path
from fieldcrypt.policy.rollback import canonical

PROOF_LABEL = b"fieldcrypt-table-commit-v1\n"

Pairs = Sequence[tuple[str, str]]


def _proof_body(
    ledger: Ledger, dataset: str, partition: str | None, pairs: Pairs, entries: Mapping[str, FileEntry]
) -> bytes:
    return canonical(
        {
            "workspace": ledger.workspace,
            "dataset": dataset,
            "partition": partition,
            "replaced": [[old, new, entries[new].to_doc()] for old, new in pairs],
        }
    )


def commit_proof(
    ledger: Ledger, dataset: str, partition: str | None, pairs: Pairs, entries: Mapping[str, FileEntry]
) -> str:
    """The MAC a table commit carries over its (old, new) pairs and the new files' staged entries."""
    return base64.b64encode(
        ledger.key().mac_bytes(PROOF_LABEL, _proof_body(ledger, dataset, partition, pairs, entries))
    ).decode()


def _pairs(metadata: Mapping[str, str]) -> list[tuple[str, str]]:
    try:
        found = json.loads(metadata.get(REPLACED_KEY, "[]"))
        return [(str(old), str(new)) for old, new in found]
    except (ValueError, TypeError):
        return []  # not a commit this recovery can prove: the ledger check decides


def _proved(
    ledger: Ledger,
    dataset: str,
    partition: str | None,
    pairs: Pairs,
    entries: Mapping[str, FileEntry],
    proof: str,
) -> bool:
    try:
        mac = base64.b64decode(proof, validate=True)
    except (ValueError, binascii.Error):
        return False
    return ledger.key().verify_bytes(PROOF_LABEL, _proof_body(ledger, dataset, partition, pairs, entries), mac)


def _ours(table: TableFormat, dataset: str, partition: str | None) -> list[list[tuple[str, str]]]:
    """The (old, new) pairs of fieldcrypt's commits of this dataset partition, newest first."""
    found = []
    for metadata in table.operations():
        if metadata.get("fieldcrypt.dataset") == dataset and metadata.get("fieldcrypt.partition") == (partition or ""):
            pairs = _pairs(metadata)
            if pairs:
                found.append(pairs)
    return found


def recover(
    ledger: Ledger, store: LakeStore, table: TableFormat, dataset: str, partition: str | None, audit: AuditLog | None
) -> int:
    """Complete the ledger step of fieldcrypt's table commits of the partition that a dead run committed but never
    recorded; the number of files recorded. LedgerError naming a new file that is not the one fieldcrypt wrote."""
    shard = ledger.load(dataset, partition)
    if shard is None or not any(rel not in shard.files for rel in shard.staged):
        return 0  # nothing staged: the usual case, one shard read
    live = set(table.partitions(table.snapshot()).get(partition, []))
    recovered = 0
    for metadata in table.operations():
        if metadata.get("fieldcrypt.dataset") != dataset or metadata.get("fieldcrypt.partition") != (partition or ""):
            continue
        pairs = _pairs(metadata)
        staged = {new: shard.staged.get(new) for _, new in pairs}
        entries = {new: entry for new, entry in staged.items() if entry is not None and new not in shard.files}
        if not pairs or len(entries) != len(pairs) or not all(new in live for new in entries):
            continue  # recorded already, or not this recovery's to prove: the ledger check decides
        if not _proved(ledger, dataset, partition, pairs, entries, metadata.get(PROOF_KEY, "")):
            continue
        if any(store.held(new) for new in entries):
            continue  # its run is alive, between its commit and its own ledger step
        for new, entry in sorted(entries.items()):
            if file_identity(store, new) != entry.identity:
                raise LedgerError(
                    f"{store.display(new)} was committed to {table.describe()} by fieldcrypt's "
                    f"{metadata.get('fieldcrypt.operation')} (a run that died before recording it), but is not the "
                    "file that run wrote: its size, footer or protection columns differ from its staged "
                    f"protection-ledger entry ({store.display(shard_path(dataset, partition))}); replaced since by "
                    "an outside writer; not recorded",
                    new,
                    replaced=True,
                )
        ledger.replace_files(dataset, partition, entries, [old for old, _ in pairs])
        if audit is not None:
            audit.record(
                "table_commit_recovered",
                dataset=dataset,
                partition=partition,
                detail=f"{table.kind} {table.describe()}: fieldcrypt's {metadata.get('fieldcrypt.operation')} of "
                f"{len(pairs)} files was committed by a run that died before recording it; its new files match "
                "their staged protection-ledger entries and the commit's proof: recorded, the old files retired",
            )
        recovered += len(pairs)
        reloaded = ledger.load(dataset, partition)
        if reloaded is None:
            break
        shard = reloaded
    return recovered


def sweep_published(
    ledger: Ledger,
    store: LakeStore,
    table: TableFormat,
    dataset: str,
    partition: str | None,
    candidates: Sequence[Entry],
    audit: AuditLog | None,
) -> int:
    """Delete the published files (`candidates`: `part-fc-*` files not live in the table) that a dead run never
    committed, and withdraw their staged entries; how many are left because a live run may still hold them."""
    shard = ledger.load(dataset, partition)
    if shard is None:
        return 0
    _withdraw_unpublished(ledger, store, table, dataset, partition, shard, {e.rel for e in candidates})
    staged = {e.rel: shard.staged[e.rel] for e in candidates if e.rel in shard.staged and e.rel not in shard.files}
    if not staged:
        return 0  # a file an older version references (kept for time travel), or not fieldcrypt's: left alone
    named = {new for pairs in _ours(table, dataset, partition) for _, new in pairs}
    left = 0
    for entry in candidates:
        rel = entry.rel
        if rel not in staged or rel in named:
            continue

        def still_orphan(rel: str = rel) -> bool:
            """Asked once the run that published it is known gone: still unreferenced, still only staged."""
            if rel in table.partitions(table.snapshot()).get(partition, []):
                return False
            if any(rel == new for pairs in _ours(table, dataset, partition) for _, new in pairs):
                return False
            now = ledger.load(dataset, partition)
            return now is not None and now.staged.get(rel) == staged[rel] and rel not in now.files

        done = store.sweep_orphan(rel, entry.version, still_orphan)
        if done == HELD:
            left += 1
        elif done == DELETED:
            ledger.unstage(dataset, partition, rel, staged[rel])
            if audit is not None:
                audit.record(
                    "table_file_swept",
                    dataset=dataset,
                    partition=partition,
                    detail=f"{store.display(rel)}: written by a fieldcrypt run that died before committing it to "
                    f"{table.kind} {table.describe()}; no version references it: deleted, its staged "
                    "protection-ledger entry withdrawn",
                )
    return left


def _withdraw_unpublished(
    ledger: Ledger,
    store: LakeStore,
    table: TableFormat,
    dataset: str,
    partition: str | None,
    shard: Shard,
    on_disk: set[str],
) -> None:
    """Local lake: withdraw the staged entries of `part-fc-*` files that are not on storage (a run died between
    staging and publishing, or its withdrawal after a refused commit failed). Staging and publishing happen under
    the directory lock taken here, so a live run's entry is never seen without its file. S3: left (harmless)."""
    if not store.is_local:
        return
    lost = {
        rel: entry
        for rel, entry in shard.staged.items()
        if rel not in shard.files and rel.rpartition("/")[2].startswith(NEW_FILE_PREFIX) and rel not in on_disk
    }
    if not lost:
        return
    live = set(table.partitions(table.snapshot()).get(partition, []))
    for rel, entry in sorted(lost.items()):
        if rel in live:
            continue  # a table file gone from storage: the ledger check names it
        with store.exclusive(rel):
            if not store.exists(rel):
                ledger.unstage(dataset, partition, rel, entry)
