"""Blind-index re-index as assets: `reindexed_<dataset>_index`, partitioned like the data it rewrites.

After `fieldcrypt reindex start <dataset>.<attribute>` gives an attribute's blind index a new
key, a backfill of this asset over every partition recomputes the indexes of the protected
rows under the new key (the core's `Workspace.reindex`: decrypt in memory, recompute, verify,
replace each file atomically; a file already done is skipped), and `fieldcrypt reindex
complete` proves none is left. With no re-index under way, a partition is a no-op.
Ranges of partitions per run, like the other assets (assets/ranged.py).
"""

from typing import Any

import dagster as dg

from assets.scope import WorkspaceScope
from assets.workspace_partitions import workspace_partitions_asset
from fieldcrypt import Workspace
from fieldcrypt.policy.layout import DatasetLayout, partition_label


def reindex_asset_name(dataset: str) -> str:
    return f"reindexed_{dataset}_index"


def reindexed_index(
    scope: WorkspaceScope, layout: DatasetLayout, partitions_def: dg.PartitionsDefinition | None
) -> dg.AssetsDefinition:
    dataset = layout.name

    def reindex(workspace: Workspace, partition: str | None) -> dict[str, Any]:
        report = workspace.reindex(dataset, partition)
        return {
            "partition": partition_label(partition),
            "files": report.files,
            "files_rewritten": report.files_rewritten,
            "rewrite_path": report.rewrite_path or "(not rewritten)",  # splice or full (docs/FORMAT.md)
            "rows": report.rows,
            "summary_files_removed": dg.MetadataValue.json(report.summary_files_removed),
            **{f"reindexed.{name}": count for name, count in report.reindexed.items()},
            **{f"already_reindexed.{name}": count for name, count in report.already.items()},
        }

    return workspace_partitions_asset(
        scope,
        partitions_def,
        action="re-indexing",
        dataset=dataset,
        work=reindex,
        name=reindex_asset_name(dataset),
        description=(
            f"Every blind index of the {dataset} snapshot under the current index key of its attribute. "
            "Materializing it during a re-index (fieldcrypt reindex start) recomputes the indexes of the "
            "protected rows under the new key, verifies and replaces each file atomically; otherwise a no-op."
        ),
        deps=[scope.asset_key(f"protected_{dataset}")],
        group_name="blind_index",
    )
