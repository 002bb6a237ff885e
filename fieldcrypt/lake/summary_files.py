"""Summary files (`_metadata`, `_common_metadata`): removed before a data file they describe is replaced.

pyarrow (`pq.write_metadata`), dask (`write_metadata_file=True`), fastparquet and old Spark
write, at a dataset's root or in a partition directory, a Parquet footer for the files below:
their schema and (`_metadata`) every row group's statistics. Replacing a data file makes them
stale: they miss the protection columns (dask hides them, fastparquet fails on the lake) and
their min/max statistics keep the plaintext of the cells just encrypted.

They are removed, not rewritten: a rewrite would need the footer of every file below, up to
10,000 partitions that separate runs protect in parallel, each run racing the others to write
one dataset-level file. Removal needs no other file: every summary file in the directories from
the replaced file's own up to the dataset's root is deleted under the directory lock (local) right
before the replace, and the replace does not happen if one cannot be. It is idempotent (one
already gone is not an error), and each removal is audited by name. A customer who wants them
back regenerates them from the protected files (docs/OPERATIONS.md, "Summary files").
"""

from __future__ import annotations

from collections.abc import Iterable

from fieldcrypt.errors import InputError
from fieldcrypt.lake.audit import AuditLog
from fieldcrypt.lake.store import LakeStore

SUMMARY_FILE_NAMES = ("_metadata", "_common_metadata")


def describing(rel: str, dataset_root: str) -> list[str]:
    """Where summary files describing the data file `rel` would be: its directory and each one up to
    `dataset_root` (both relative to the lake), nearest first."""
    root = dataset_root.strip("/")
    if not root or not rel.startswith(f"{root}/"):
        raise InputError(f"{rel} is not below the dataset's directory {dataset_root!r}")
    directory = rel.rpartition("/")[0]
    candidates = [f"{directory}/{name}" for name in SUMMARY_FILE_NAMES]
    while directory != root:
        directory = directory.rpartition("/")[0]
        candidates += [f"{directory}/{name}" for name in SUMMARY_FILE_NAMES]
    return candidates


def present(store: LakeStore, files: Iterable[str], dataset_root: str) -> list[str]:
    """The summary files that describe any of `files` and exist (what a replace would remove), as
    `store.display` paths, sorted."""
    candidates = {candidate for rel in files for candidate in describing(rel, dataset_root)}
    return sorted(store.display(rel) for rel in candidates if store.exists(rel))


def remove_before_replace(
    store: LakeStore,
    rel: str,
    dataset_root: str,
    audit: AuditLog | None,
    dataset: str,
    partition: str | None,
) -> list[str]:
    """Delete every summary file describing `rel`, before `rel` is replaced; the ones removed (`store.display`).

    Each is checked and deleted under its directory's lock, so of two runs racing for it one
    removes (and audits) it and the other finds it gone. On S3 there is no lock: both may delete
    (S3 deletes idempotently) and both audit it.
    """
    removed: list[str] = []
    for candidate in describing(rel, dataset_root):
        with store.exclusive(candidate):
            if not store.exists(candidate):
                continue
            try:
                store.filesystem.delete_file(store.full_path(candidate))
            except FileNotFoundError:
                continue  # another run removed it first
            except OSError as exc:
                raise InputError(
                    f"{store.display(candidate)} is a summary file that would be stale once "
                    f"{store.display(rel)} is replaced, and it cannot be removed ({type(exc).__name__}); "
                    "nothing was replaced"
                ) from None
        removed.append(store.display(candidate))
        if audit is not None:
            audit.record("summary_file_removed", dataset=dataset, partition=partition, detail=store.display(candidate))
    return removed
