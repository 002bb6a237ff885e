"""Assets whose every partition is one call of the core on the run's shared `Workspace` (erasure, re-index).

No `from __future__ import annotations` here: Dagster reads the asset function's `context` annotation
as a type, not as a string.
"""

from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg

from assets.ranged import OncePerRun, PartitionDone, ranged_asset, report_partitions, run_dataset_partitions
from assets.scope import WorkspaceScope
from fieldcrypt import ThrottledError, Workspace


def workspace_partitions_asset(
    scope: WorkspaceScope,
    partitions_def: dg.PartitionsDefinition | None,
    *,
    action: str,
    dataset: str,
    work: Callable[[Workspace, str | None], dict[str, Any]],
    **asset_args: Any,
) -> dg.AssetsDefinition:
    """A `ranged_asset` whose every partition is one call of the core: `work(workspace, partition)` returns the
    partition's metadata. The run's partitions share one `Workspace` (one data-key cache, `OncePerRun`); a
    throttled KMS is retryable, any other failure names its partition (`report_partitions`, `action`: "erasing")."""

    @ranged_asset(scope, partitions_def, **asset_args)
    def each_partition(context: dg.AssetExecutionContext) -> Iterator[dg.AssetCheckResult]:
        fieldcrypt = scope.resource(context)
        actor = f"dagster:{context.run.run_id}"
        shared = OncePerRun(lambda: fieldcrypt.workspace(actor))
        outcomes = run_dataset_partitions(context, lambda partition: PartitionDone(work(shared.get(), partition)))
        yield from report_partitions(context, action, dataset, outcomes, lambda exc: isinstance(exc, ThrottledError))

    return each_partition
