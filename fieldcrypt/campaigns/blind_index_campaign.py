"""A workspace's blind-index re-index campaigns: a new index key, every index recomputed, the old key forgotten.

`Workspace` delegates its re-index methods here; each function is handed the workspace's master-key access
(fieldcrypt.access.master_key_access: its cache, the lake's control files), the old index keys kept while a
re-index is under way, and, to work on data files, partition jobs (fieldcrypt.access.partition_job)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fieldcrypt.access.master_key_access import MasterKeyAccess
from fieldcrypt.access.partition_job import PartitionJob
from fieldcrypt.engine.reindex import IndexKeys, ReindexReport, RetiringIndexKeys, reindex_file
from fieldcrypt.errors import (
    ConcurrentUpdateError,
    PolicyError,
)
from fieldcrypt.keys.blind_index import INDEX_KEYS_PATH, IndexKeyStore
from fieldcrypt.policy.policy import Policy

# The partition jobs of a dataset, oldest partition first, each built when reached.
PartitionJobs = Callable[[str], Iterator[PartitionJob]]


def attributes_reindexing(index_keys: IndexKeyStore, retiring: RetiringIndexKeys) -> list[str]:
    """Attributes whose re-index campaign is under way (an old key kept that differs from the current one)."""
    current = index_keys.load()
    return sorted(name for name, old in retiring.load().items() if current.get(name) != old)


def start_reindex(keys: MasterKeyAccess, retiring: RetiringIndexKeys, policy: Policy, attribute: str) -> None:
    """Give a blind-indexed attribute a new index key; new rows are indexed under it from now on.

    The old key is kept (`_fieldcrypt/blind_index_retiring.json`, written first) until
    `complete_reindex`. Run `reindex` on every partition of the dataset in between.
    """
    entry = policy.attributes.get(attribute)
    if entry is None or not entry.blind_index:
        raise PolicyError(f"{attribute} is not an enabled attribute with a blind index; nothing to re-index")
    binding = keys.lake.bindings.load()
    if binding is not None and binding.active_campaign is not None:
        raise PolicyError("a master-key rotation is under way; complete it before a blind-index re-index")
    if attribute in attributes_reindexing(keys.lake.index_keys, retiring):
        raise PolicyError(f"a re-index of {attribute} is already under way: run it, then complete it")
    current = keys.lake.index_keys.load()
    if attribute not in current:
        raise PolicyError(f"blind-index key of {attribute} is missing from {INDEX_KEYS_PATH}")
    kept = retiring.load()
    kept[attribute] = current[attribute]
    retiring.save(kept)  # first: a crash after it leaves no campaign (old == current)
    old_key, new_key = current[attribute], keys.key_cache().new_index_key(entry.dataset, entry.path)

    def switch(stored: dict[str, bytes]) -> dict[str, bytes]:
        if stored.get(attribute) != old_key:  # another worker re-indexed or rotated it meanwhile
            raise ConcurrentUpdateError(
                f"{INDEX_KEYS_PATH} changed while starting a re-index of {attribute}; run again"
            )
        return {**stored, attribute: new_key}

    keys.lake.index_keys.update(switch)
    keys.lake.audit.record("reindex_start", dataset=entry.dataset, attribute=entry.path)


def reindex(keys: MasterKeyAccess, retiring: RetiringIndexKeys, job: PartitionJob) -> ReindexReport:
    """Recompute, in every file of a partition, the blind indexes of the attributes being re-indexed."""
    return reindex_files(keys, retiring, job, dry_run=False)


def reindex_files(
    keys: MasterKeyAccess, retiring: RetiringIndexKeys, job: PartitionJob, *, dry_run: bool
) -> ReindexReport:
    spec, attributes = job.dataset.spec, job.dataset.attributes
    names = set(attributes_reindexing(keys.lake.index_keys, retiring))
    targets = [a for a in attributes if a.name in names]
    if not targets:
        raise PolicyError(f"no blind-index re-index of {job.dataset.name} is under way (start one first)")
    cache = keys.key_cache()
    current, old = keys.lake.index_keys.load(), retiring.load()
    index_keys = IndexKeys(
        new={a.name: cache.index_key_for(current[a.name], a.dataset, a.path).normalized(a.normalize) for a in targets},
        old={a.name: cache.index_key_for(old[a.name], a.dataset, a.path).normalized(a.normalize) for a in targets},
    )
    reports = job.each_file(
        lambda rel: reindex_file(
            keys.lake.store,
            rel,
            spec,
            attributes,
            targets,
            index_keys,
            cache,
            dataset_root=job.dataset.layout.path,
            partition=job.partition,
            dry_run=dry_run,
            ledger=job.ledger,
            commit=job.commit,
        ),
    )
    return ReindexReport.total(job.where, reports)


def complete_reindex(
    keys: MasterKeyAccess, retiring: RetiringIndexKeys, attribute: str, partition_jobs: PartitionJobs
) -> int:
    """Prove every blind index of `attribute` is under the new key (decrypting each protected value), then
    forget the old key. Returns the partitions checked."""
    if attribute not in attributes_reindexing(keys.lake.index_keys, retiring):
        raise PolicyError(f"no re-index of {attribute} is under way")
    dataset = attribute.partition(".")[0]
    left = []
    partitions = 0
    for job in partition_jobs(dataset):
        partitions += 1
        report = reindex_files(keys, retiring, job, dry_run=True)
        if report.reindexed.get(attribute):
            left.append(job.where)
    if left:
        raise PolicyError(
            f"re-index of {attribute} incomplete: {len(left)} partitions still hold indexes under the old key: "
            + ", ".join(left[:20])
        )
    kept = retiring.load()
    kept.pop(attribute, None)
    retiring.save(kept)
    keys.lake.audit.record(
        "reindex_complete",
        dataset=dataset,
        attribute=attribute.partition(".")[2],
        detail=f"{partitions} partitions checked",
    )
    return partitions
