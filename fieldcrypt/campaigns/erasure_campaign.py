"""A dataset's erasure requests applied to one partition: its files rewritten without the erased keys' cells, and
each request's progress (and, once, its end) recorded.

`Workspace` delegates here (`erase_partition`, `erase`, and every protection run while a request is open);
it hands in the partition job (fieldcrypt.access.partition_job: the dataset under the policy, the partition's
files, the ledger step), the data-key cache (whose audit log the transform and the records below write to),
and the lake's erasure requests (fieldcrypt.policy.erasure)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from fieldcrypt.access.partition_job import PartitionJob
from fieldcrypt.engine.erase import ClearKeys, ErasedKeys, EraseReport, TaggedKeys, erase_file
from fieldcrypt.erasure_keys import KeysFile
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.erasure import ErasureRequest, ErasureRequests, PartitionProgress
from fieldcrypt.policy.layout import partition_label


def erase_partition(
    job: PartitionJob,
    cache: DataKeyCache,
    store: LakeStore,
    erasures: ErasureRequests,
    requests: Sequence[ErasureRequest],
    keys: KeysFile | None = None,
    committed: Callable[[Callable[[], EraseReport]], EraseReport] = lambda work: work(),
) -> EraseReport:
    """Erase the keys of `requests` from every file of the partition, then record the partition in each.

    `keys`: the keys of the one request in `requests`, in clear (the run that recorded it): files whose key
    statistics exclude them are skipped by their footer. Without: the requests' keyed tags.
    Each rewritten file is committed by `job.commit`; `committed(work)` runs the rewrites and, for a Delta or
    Iceberg table, then commits the partition's one table transaction (the Workspace's `_committed`). The
    requests' progress is recorded only after that returned: a refused table commit records nothing.
    """
    if not requests:
        return EraseReport.total(job.where, [])
    erased: ErasedKeys
    if keys is not None:
        erased = ClearKeys(keys.canonical, keys.components, job.dataset.name)
    else:
        erased = TaggedKeys(frozenset().union(*(r.tags for r in requests)), erasures.key())
    ids = [r.request_id for r in requests]
    report = committed(
        lambda: EraseReport.total(
            job.where,
            job.each_file(
                lambda rel: erase_file(
                    store,
                    rel,
                    job.dataset.spec,
                    job.dataset.attributes,
                    erased,
                    cache,
                    dataset_root=job.dataset.layout.path,
                    partition=job.partition,
                    ledger=job.ledger,
                    requests=ids,
                    commit=job.commit,
                )
            ),
        )
    )
    label = partition_label(job.partition)
    progress = PartitionProgress(
        report.files,
        report.files_rewritten,
        report.files_skipped_by_statistics,
        report.cells,
        datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )
    for request in requests:
        if not report.files_rewritten and erasures.has_progress(request.dataset, request.request_id, label):
            continue  # nothing new: the partition's record stays as the run that erased it left it
        if erasures.record_progress(request, label, progress):
            note_done(erasures, cache, erasures.load(request.dataset, request.request_id))
    return report


def note_done(erasures: ErasureRequests, cache: DataKeyCache, request: ErasureRequest) -> None:
    """Audit the end of a done request, once (whoever sees it done first: the run that erased its last
    partition, or a status)."""
    if request.done and erasures.mark_done(request) and cache.audit is not None:
        cache.audit.record(
            "erasure_done",
            dataset=request.dataset,
            reason=request.reason,
            cells=request.cells_erased,
            detail=f"{request.request_id}: {len(request.partitions)} partitions, {request.files_rewritten} files "
            f"rewritten, {request.files_skipped_by_statistics} skipped by their key statistics",
        )
