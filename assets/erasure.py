"""Erasure as assets: `erased_<dataset>`, partitioned like the data it rewrites.

After an erasure request is recorded (`fieldcrypt erase`, or the `<workspace>__record_erasure_request`
job), a backfill of this asset over the dataset's partitions erases the request's keys from each
partition (the core's `Workspace.erase_partition`: every request of the dataset not expired, matched
by its keyed tags; each file verified and replaced atomically; a file with nothing left to erase is
not rewritten), and records each partition in the request's progress (`fieldcrypt status`). With no
request open, a partition is a no-op. Ranges of partitions per run, like the other assets (assets/ranged.py).
"""

from typing import Any

import dagster as dg

from assets.scope import WorkspaceScope
from assets.workspace_partitions import workspace_partitions_asset
from fieldcrypt import Workspace
from fieldcrypt.policy.layout import DatasetLayout, partition_label


def erasure_asset_name(dataset: str) -> str:
    return f"erased_{dataset}"


def erased_rows(
    scope: WorkspaceScope, layout: DatasetLayout, partitions_def: dg.PartitionsDefinition | None
) -> dg.AssetsDefinition:
    dataset = layout.name

    def erase(workspace: Workspace, partition: str | None) -> dict[str, Any]:
        report = workspace.erase_partition(dataset, partition)
        return {
            "partition": partition_label(partition),
            "files": report.files,
            "files_rewritten": report.files_rewritten,
            "files_skipped_by_statistics": report.files_skipped_by_statistics,
            "rows_matched": report.rows_matched,
            "cells_erased": report.cells,
            "rewrite_path": report.rewrite_path or "(not rewritten)",  # splice or full (docs/FORMAT.md)
            "summary_files_removed": dg.MetadataValue.json(report.summary_files_removed),
            **{f"cells_erased.{name}": count for name, count in report.cells_erased.items()},
        }

    return workspace_partitions_asset(
        scope,
        partitions_def,
        action="erasing",
        dataset=dataset,
        work=erase,
        name=erasure_asset_name(dataset),
        description=(
            f"The {dataset} snapshot without the rows' cells that erasure requests name. Materializing a partition "
            "nulls the protected cells and historical plaintext of every key of the dataset's open erasure "
            "requests, verifies and replaces each file atomically, and records the partition in each request's "
            "progress; with no request open, a no-op."
        ),
        deps=[scope.asset_key(f"protected_{dataset}")],
        group_name="erasure",
    )
