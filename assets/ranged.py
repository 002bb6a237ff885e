"""Runs that cover a range of partitions: how many per run, how many at once, and what each one reports.

A backfill over thousands of partitions launches `ceil(partitions / N)` runs
(`BackfillPolicy.multi_run(max_partitions_per_run=N)`, N from FIELDCRYPT_MAX_PARTITIONS_PER_RUN,
default 100), not one run per partition. A run costs ~4-8 s before its first partition (queue,
run worker start-up; bench/backfill_latency.py) and a small partition ~0.05-0.15 s, so N=25 spent
more time starting runs than working (1,000 small partitions: 175 s in 40 runs, 115 s in 10 runs of
100). Dagster 1.13 fixes N per asset definition when the code location loads (the backfill daemon cuts
the selection into ranges of N, with no hook per backfill) and loading makes no lake call, so N cannot
follow partition sizes; for large partitions lower it so a run stays well under the run monitor's
`max_runtime_seconds` (a run takes about N x seconds per partition / partition threads). Inside a run a small
thread pool (FIELDCRYPT_PARTITION_THREADS, default 4) works through the run's partitions;
each partition's work is the core's, unchanged: every file is verified, then replaced
atomically, so a partition that fails leaves its files as they were, and the partitions
that succeeded stay done whatever happens to the others.

What a user sees per partition, although Dagster 1.13 lets an asset return one
`MaterializeResult` per run (it has no partition argument): the asset does not return an
output (`output_required=False`); it logs one `AssetMaterialization` per partition that is
done, with that partition's metadata. A partition that failed gets no materialization, so
it shows as failed in the asset's partition bar, and "missing and failed" in the launch
dialog selects it again; the run then fails with a `dg.Failure` naming each failed
partition and why.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from threading import Lock
from typing import Any, Generic, TypeVar

import dagster as dg

from assets.checks import aggregate_check_results, failed_check_names
from assets.partitions import dataset_partition
from assets.scope import WorkspaceScope
from fieldcrypt.errors import ConfigError
from fieldcrypt.policy.layout import partition_label

MAX_PARTITIONS_PER_RUN_ENV = "FIELDCRYPT_MAX_PARTITIONS_PER_RUN"
PARTITION_THREADS_ENV = "FIELDCRYPT_PARTITION_THREADS"
DEFAULT_MAX_PARTITIONS_PER_RUN = 100
DEFAULT_PARTITION_THREADS = 4

# A failure's description lists at most this many problems; its metadata lists all.
LISTED_PROBLEMS = 20


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ConfigError(f"{name}={raw!r} is not a positive whole number")
    return int(raw)


def max_partitions_per_run() -> int:
    """N of `BackfillPolicy.multi_run(N)`: read when the code location loads."""
    return _positive_int(MAX_PARTITIONS_PER_RUN_ENV, DEFAULT_MAX_PARTITIONS_PER_RUN)


def partition_threads() -> int:
    """Partitions worked on at once inside one run (sharing the run's data-key cache: assets.ranged.OncePerRun)."""
    return _positive_int(PARTITION_THREADS_ENV, DEFAULT_PARTITION_THREADS)


def backfill_policy(partitions_def: dg.PartitionsDefinition | None) -> dg.BackfillPolicy | None:
    return dg.BackfillPolicy.multi_run(max_partitions_per_run()) if partitions_def is not None else None


# Only throttling (and errors that are not fieldcrypt's, e.g. a dropped S3 connection) is retried, as each
# asset's report_partitions decides: a re-run is safe (nothing half-written, done work is skipped).
RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)


def ranged_asset(
    scope: WorkspaceScope, partitions_def: dg.PartitionsDefinition | None, **asset_args: Any
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """`dg.asset` with what the workspace's protection, rotation and re-index assets share: the workspace's key
    prefix, resource and KMS pool, ranges of partitions per run, the retry policy, and one materialization per
    partition done instead of an output (`report_partitions`)."""

    def decorate(fn: Callable[..., Any]) -> dg.AssetsDefinition:
        with warnings.catch_warnings():
            # `backfill_policy` is marked beta in Dagster 1.13; multi_run(N) is what we mean.
            warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)
            decorator = dg.asset(
                key_prefix=scope.key_prefix,
                partitions_def=partitions_def,
                backfill_policy=backfill_policy(partitions_def),
                pool=scope.pool,
                required_resource_keys={scope.resource_key},
                retry_policy=RETRY_POLICY,
                output_required=False,
                kinds={"parquet"},
                **asset_args,
            )
            asset: dg.AssetsDefinition = decorator(fn)
            return asset

    return decorate


@dataclass
class PartitionDone:
    """What one partition's work reports: its materialization metadata and its check results."""

    metadata: dict[str, Any]
    checks: list[dg.AssetCheckResult] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # e.g. the landed version consumed (assets/landed.py)


@dataclass
class Outcome:
    """One partition's result, or the error it failed with. `key` is the Dagster partition key
    (None: unpartitioned), `label` the dataset partition it stands for, as people read it."""

    key: str | None
    label: str
    done: PartitionDone | None = None
    error: Exception | None = None


T = TypeVar("T")


class OncePerRun(Generic[T]):
    """A value the run's partitions share (the run's `Workspace`, so its data-key cache and its policy MAC
    key serve every partition: KMS calls follow distinct keys, not partitions), built by the first
    partition that needs it. Thread-safe; a failure to build it is that partition's failure, and the
    next partition tries again."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._lock = Lock()
        self._value: T | None = None

    def get(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._build()
            return self._value


def run_keys(context: dg.AssetExecutionContext) -> list[str | None]:
    """The run's partition keys: one for a single-partition run, the range of a ranged backfill run."""
    if context.assets_def.partitions_def is None:
        return [None]
    return list(context.partition_keys)


def run_partitions(
    keys: Sequence[str | None], label: Callable[[str | None], str], work: Callable[[str | None], PartitionDone]
) -> list[Outcome]:
    """`work` on every partition, a few at once; every partition is attempted whatever the others do."""

    def attempt(key: str | None) -> Outcome:
        try:
            return Outcome(key, label(key), done=work(key))
        except Exception as exc:  # reported per partition; the run fails after all were attempted
            return Outcome(key, label(key), error=exc)

    if len(keys) <= 1:
        return [attempt(key) for key in keys]
    with ThreadPoolExecutor(max_workers=min(partition_threads(), len(keys))) as pool:
        return list(pool.map(attempt, keys))


def run_dataset_partitions(
    context: dg.AssetExecutionContext, work: Callable[[str | None], PartitionDone]
) -> list[Outcome]:
    """`run_partitions` over the run's keys, `work` given the core's partition of each (None for an unpartitioned
    dataset: a Hive dataset's None key, a table's `(unpartitioned)`; assets.partitions.dataset_partition)."""
    return run_partitions(
        run_keys(context), lambda key: partition_label(dataset_partition(key)), lambda key: work(dataset_partition(key))
    )


def report_partitions(
    context: dg.AssetExecutionContext,
    action: str,
    dataset: str,
    outcomes: list[Outcome],
    retryable: Callable[[Exception], bool],
) -> Iterator[dg.AssetCheckResult]:
    """Log a materialization per partition done with passing checks, yield the run's check results, and
    fail the run naming every partition that failed or whose checks failed (the others stay done)."""
    problems: dict[str, str] = {}
    for outcome in outcomes:
        if outcome.error is not None:
            exc = outcome.error
            problems[outcome.label] = (
                f"{action} {dataset} partition {outcome.label} failed: {type(exc).__name__}: {exc}"
            )
            continue
        assert outcome.done is not None
        failed = failed_check_names(outcome.done.checks)
        if failed:
            context.log_event(
                dg.AssetObservation(
                    asset_key=context.asset_key,
                    partition=outcome.key,
                    metadata={
                        "partition": outcome.label,
                        "failed_checks": dg.MetadataValue.json(failed),
                        **{
                            f"{result.check_name}.{name}": value
                            for result in outcome.done.checks
                            if not result.passed
                            for name, value in result.metadata.items()
                        },
                    },
                )
            )
            problems[outcome.label] = "; ".join(
                f"check {name} failed for {dataset} partition {outcome.label}" for name in failed
            )
        else:
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=context.asset_key,
                    partition=outcome.key,
                    metadata=outcome.done.metadata,
                    tags=outcome.done.tags or None,
                )
            )
    checked = {o.key: o.done.checks for o in outcomes if o.done is not None and o.done.checks}
    if checked:
        yield from aggregate_check_results(checked)
    if not problems:
        return
    listed = [problems[label] for label in sorted(problems)]
    if len(outcomes) == 1:
        description = listed[0]
    else:
        description = (
            f"{len(problems)} of {len(outcomes)} partitions of {dataset} failed (the other partitions are done): "
            + "; ".join(listed[:LISTED_PROBLEMS])
            + ("; ..." if len(listed) > LISTED_PROBLEMS else "")
            + '. Re-run them: a backfill of the asset with "missing and failed" selects exactly these.'
        )
    raise dg.Failure(
        description=description,
        metadata={
            "failed_partitions": dg.MetadataValue.json(sorted(problems)),
            "problems": dg.MetadataValue.json(problems),
        },
        allow_retries=any(retryable(o.error) for o in outcomes if o.error is not None),
    )
