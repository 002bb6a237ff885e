"""What is checked, removed and recorded right before a partition file is replaced, and after.

Before the replace: the file's own protection metadata against the policy in hand
(irreversibility, fieldcrypt.keys.policy_auth), the lake's master key against the one this
process wraps under (a rotation by another process stops it), the removal of the summary
files the replace would make stale (fieldcrypt.lake.summary_files), and an audit intent. After
it: the confirmation. A crash between the two leaves an unconfirmed intent that
`fieldcrypt audit --unconfirmed` lists.

Protection, rotation, re-index and the encryption of history all replace files through here,
so no replace can skip one of these steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.keys.policy_auth import check_stored_file
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.lake.summary_files import remove_before_replace
from fieldcrypt.policy.policy import AttributePolicy


class Replacing(NamedTuple):
    """What before_replace did: the audit intent id (None without an audit log) and the summary files
    it removed (lake paths)."""

    intent: str | None
    summary_files_removed: list[str]


def before_replace(
    store: LakeStore,
    rel: str,
    attributes: Sequence[AttributePolicy],
    cache: DataKeyCache,
    dataset: str,
    partition: str | None,
    expected: Sequence[Mapping[str, Any]] | None = None,
    operation: str = "encrypt",
    *,
    dataset_root: str,
) -> Replacing:
    """Refuse, or remove the summary files describing `rel` (below `dataset_root`, the dataset's
    directory) and record the intent to replace it. Runs under `rel`'s lock."""
    check_stored_file(store, rel, attributes)
    cache.check_current()
    # Removed before the intent: their removal is audited on its own and must not confirm the intent.
    removed = remove_before_replace(store, rel, dataset_root, cache.audit, dataset, partition)
    if cache.audit is None:
        return Replacing(None, removed)
    cells = sum(getattr(e, "cells", 0) for group in expected for e in group.values()) if expected else None
    intent = cache.audit.intent(
        operation,
        dataset=dataset,
        partition=partition,
        master_key=cache.master_key.ref,
        cells=cells,
        detail=store.display(rel),
    )
    return Replacing(intent, removed)


def confirm_replace(cache: DataKeyCache, intent: str | None, dataset: str, partition: str | None, cells: int) -> None:
    """Confirm an intent no per-attribute event confirmed (a rewrite that encrypted nothing)."""
    if cache.audit is not None and intent is not None and cells == 0:
        cache.audit.record("replace_confirmed", dataset=dataset, partition=partition, intent=intent, cells=0)
