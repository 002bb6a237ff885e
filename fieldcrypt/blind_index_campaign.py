"""A workspace's blind-index re-index campaigns: a new index key, every index recomputed, the old key forgotten.

`Workspace` delegates its re-index methods here; each function takes the workspace it works on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fieldcrypt.blind_index import INDEX_KEYS_PATH
from fieldcrypt.errors import (
    ConcurrentUpdateError,
    PolicyError,
)
from fieldcrypt.reindex import IndexKeys, ReindexReport, reindex_file

if TYPE_CHECKING:
    from fieldcrypt.workspace import Workspace


def attributes_reindexing(workspace: Workspace) -> list[str]:
    """Attributes whose re-index campaign is under way (an old key kept that differs from the current one)."""
    current = workspace.index_keys.load()
    return sorted(name for name, old in workspace.retiring_index_keys.load().items() if current.get(name) != old)


def start_reindex(workspace: Workspace, attribute: str) -> None:
    """Give a blind-indexed attribute a new index key; new rows are indexed under it from now on.

    The old key is kept (`_fieldcrypt/blind_index_retiring.json`, written first) until
    `complete_reindex`. Run `reindex` on every partition of the dataset in between.
    """
    entry = workspace.policy().attributes.get(attribute)
    if entry is None or not entry.blind_index:
        raise PolicyError(f"{attribute} is not an enabled attribute with a blind index; nothing to re-index")
    binding = workspace.bindings.load()
    if binding is not None and binding.active_campaign is not None:
        raise PolicyError("a master-key rotation is under way; complete it before a blind-index re-index")
    if attribute in attributes_reindexing(workspace):
        raise PolicyError(f"a re-index of {attribute} is already under way: run it, then complete it")
    current = workspace.index_keys.load()
    if attribute not in current:
        raise PolicyError(f"blind-index key of {attribute} is missing from {INDEX_KEYS_PATH}")
    retiring = workspace.retiring_index_keys.load()
    retiring[attribute] = current[attribute]
    workspace.retiring_index_keys.save(retiring)  # first: a crash after it leaves no campaign (old == current)
    old_key, new_key = current[attribute], workspace.key_cache().new_index_key(entry.dataset, entry.path)

    def switch(stored: dict[str, bytes]) -> dict[str, bytes]:
        if stored.get(attribute) != old_key:  # another worker re-indexed or rotated it meanwhile
            raise ConcurrentUpdateError(
                f"{INDEX_KEYS_PATH} changed while starting a re-index of {attribute}; run again"
            )
        return {**stored, attribute: new_key}

    workspace.index_keys.update(switch)
    workspace.audit.record("reindex_start", dataset=entry.dataset, attribute=entry.path)


def reindex(workspace: Workspace, dataset: str, partition: str | None) -> ReindexReport:
    """Recompute, in every file of a partition, the blind indexes of the attributes being re-indexed."""
    return reindex_files(workspace, dataset, partition, dry_run=False)


def reindex_files(workspace: Workspace, dataset: str, partition: str | None, *, dry_run: bool) -> ReindexReport:
    spec, attributes = workspace._dataset(dataset)
    names = set(attributes_reindexing(workspace))
    targets = [a for a in attributes if a.name in names]
    where = workspace.partition_display(dataset, partition)
    if not targets:
        raise PolicyError(f"no blind-index re-index of {dataset} is under way (start one first)")
    cache = workspace.key_cache()
    current, retiring = workspace.index_keys.load(), workspace.retiring_index_keys.load()
    keys = IndexKeys(
        new={a.name: cache.index_key_for(current[a.name], a.dataset, a.path).normalized(a.normalize) for a in targets},
        old={a.name: cache.index_key_for(retiring[a.name], a.dataset, a.path).normalized(a.normalize) for a in targets},
    )
    ledger = workspace.ledger_step(partition, spec, attributes)
    reports = workspace._each_file(
        dataset,
        partition,
        lambda rel: reindex_file(
            workspace.store,
            rel,
            spec,
            attributes,
            targets,
            keys,
            cache,
            dataset_root=workspace.layout(dataset).path,
            partition=partition,
            dry_run=dry_run,
            ledger=ledger,
        ),
    )
    return ReindexReport.total(where, reports)


def complete_reindex(workspace: Workspace, attribute: str) -> int:
    """Prove every blind index of `attribute` is under the new key (decrypting each protected value), then
    forget the old key. Returns the partitions checked."""
    if attribute not in attributes_reindexing(workspace):
        raise PolicyError(f"no re-index of {attribute} is under way")
    dataset = attribute.partition(".")[0]
    left = []
    partitions = workspace.partitions(dataset)
    for partition in partitions:
        report = reindex_files(workspace, dataset, partition, dry_run=True)
        if report.reindexed.get(attribute):
            left.append(workspace.partition_display(dataset, partition))
    if left:
        raise PolicyError(
            f"re-index of {attribute} incomplete: {len(left)} partitions still hold indexes under the old key: "
            + ", ".join(left[:20])
        )
    retiring = workspace.retiring_index_keys.load()
    retiring.pop(attribute, None)
    workspace.retiring_index_keys.save(retiring)
    workspace.audit.record(
        "reindex_complete",
        dataset=dataset,
        attribute=attribute.partition(".")[2],
        detail=f"{len(partitions)} partitions checked",
    )
    return len(partitions)
