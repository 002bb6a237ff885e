"""What a file-by-file operation over one partition is handed: the dataset under the policy, the partition's
files, where to record them in the protection ledger, and how many files are worked on at once.

The `Workspace` builds these (checking the catalog against the policy, sweeping dead runs' temporary
files); the campaigns (fieldcrypt.campaigns.rotation_campaign, fieldcrypt.campaigns.blind_index_campaign)
work on them, so they need neither the `Workspace` nor its internals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from fieldcrypt.engine.rewrite import Commit, lake_commit
from fieldcrypt.errors import FieldcryptError
from fieldcrypt.policy.layout import DatasetLayout
from fieldcrypt.policy.ledger import LedgerStep
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec

Result = TypeVar("Result")


@dataclass(frozen=True)
class EnabledDataset:
    """A declared dataset and its enabled attributes, the catalog checked against the policy."""

    name: str
    layout: DatasetLayout  # where its partitions are
    spec: DatasetSpec  # how to read it (ingestion column, primary key), as enabled
    attributes: list[AttributePolicy]


@dataclass(frozen=True)
class PartitionJob:
    """One partition of an enabled dataset, to work on file by file."""

    dataset: EnabledDataset
    partition: str | None
    files: list[str]  # listed after the sweep of dead runs' temporary files
    where: str  # the partition, for messages
    ledger: LedgerStep
    file_workers: int
    # How each rewritten file is committed: replaced in place (a Hive folder), or staged for the table's
    # one transaction per partition (kind: delta / iceberg; the Workspace finishes it).
    commit: Commit = lake_commit

    def each_file(self, work: Callable[[str], Result]) -> list[Result]:
        return each_file(self.files, work, self.file_workers, self.where)


def each_file(files: Sequence[str], work: Callable[[str], Result], workers: int, where: str) -> list[Result]:
    """`work(rel)` for each of `files` (of the partition at `where`), `workers` at a time; every file is tried.

    Files are independent (each verified and replaced on its own), so one failing file
    does not stop the others; the first failure is raised afterwards, naming how many failed.
    """
    if len(files) <= 1:
        return [work(rel) for rel in files]
    results: list[Result] = []
    failures: list[FieldcryptError] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fieldcrypt-file") as pool:
        for future in [pool.submit(work, rel) for rel in files]:
            try:
                results.append(future.result())
            except FieldcryptError as exc:
                failures.append(exc)
    if failures:
        first = failures[0]
        raise type(first)(
            f"{len(failures)} of {len(files)} files of {where} failed (the others are done); first: {first}"
        ) from first
    return results
