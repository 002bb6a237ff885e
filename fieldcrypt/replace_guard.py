"""What is checked and recorded right before a partition file is replaced, and after.

Before the replace: the file's own protection metadata against the policy in hand
(irreversibility, fieldcrypt.policy_auth), the lake's master key against the one this
process wraps under (a rotation by another process stops it), and an audit intent. After
it: the confirmation. A crash between the two leaves an unconfirmed intent that
`fieldcrypt audit --unconfirmed` lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fieldcrypt.cache import DataKeyCache
from fieldcrypt.policy import AttributePolicy
from fieldcrypt.policy_auth import check_stored_file
from fieldcrypt.store import LakeStore


def before_replace(
    store: LakeStore,
    rel: str,
    attributes: Sequence[AttributePolicy],
    cache: DataKeyCache,
    dataset: str,
    partition: str | None,
    expected: Sequence[Mapping[str, Any]] | None = None,
    operation: str = "encrypt",
) -> str | None:
    """Refuse, or record the intent to replace `rel`; returns the intent id (None without an audit log)."""
    check_stored_file(store, rel, attributes)
    cache.check_current()
    if cache.audit is None:
        return None
    cells = sum(getattr(e, "cells", 0) for group in expected for e in group.values()) if expected else None
    return cache.audit.intent(
        operation,
        dataset=dataset,
        partition=partition,
        master_key=cache.master_key.ref,
        cells=cells,
        detail=store.display(rel),
    )


def confirm_replace(cache: DataKeyCache, intent: str | None, dataset: str, partition: str | None, cells: int) -> None:
    """Confirm an intent no per-attribute event confirmed (a rewrite that encrypted nothing)."""
    if cache.audit is not None and intent is not None and cells == 0:
        cache.audit.record("replace_confirmed", dataset=dataset, partition=partition, intent=intent, cells=0)
