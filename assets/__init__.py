"""Assets of the fieldcrypt code location, generated from the catalog: per workspace and declared dataset,
its landed snapshot, its protection, its key rotation, its blind-index re-index and its erasure, partitioned as the
catalog declares it, under the workspace's key prefix (assets/scope.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import dagster as dg

from assets.erasure import erased_rows
from assets.partitions import PartitionGroup, partition_groups, partitions_of
from assets.protection import landed_snapshot, protected_snapshot
from assets.reindex import reindexed_index
from assets.rotation import rotated_keys
from assets.scope import WorkspaceScope
from fieldcrypt.policy.layout import DatasetLayout
from fieldcrypt.workspace import WorkspaceConfig

T = TypeVar("T")


@dataclass
class DatasetAssets:
    """Every asset of one workspace's datasets, with the partition groups they fall into."""

    scope: WorkspaceScope
    groups: list[PartitionGroup]
    landed: dict[str, dg.AssetsDefinition]
    protected: dict[str, dg.AssetsDefinition]
    rotated: dict[str, dg.AssetsDefinition]
    reindexed: dict[str, dg.AssetsDefinition]
    erased: dict[str, dg.AssetsDefinition]

    def definitions(self) -> dg.Definitions:
        return dg.Definitions(
            assets=[
                *self.landed.values(),
                *self.protected.values(),
                *self.rotated.values(),
                *self.reindexed.values(),
                *self.erased.values(),
            ]
        )


def build_assets(workspace: WorkspaceConfig | WorkspaceScope) -> DatasetAssets:
    """The assets of one workspace's declared datasets."""
    scope = workspace if isinstance(workspace, WorkspaceScope) else WorkspaceScope.of(workspace)
    datasets = scope.datasets
    groups = partition_groups(datasets, scope.name)

    def each(factory: Callable[[WorkspaceScope, DatasetLayout, dg.PartitionsDefinition | None], T]) -> dict[str, T]:
        return {name: factory(scope, layout, partitions_of(groups, name)) for name, layout in datasets.items()}

    return DatasetAssets(
        scope=scope,
        groups=groups,
        landed=each(landed_snapshot),
        protected=each(protected_snapshot),
        rotated=each(rotated_keys),
        reindexed=each(reindexed_index),
        erased=each(erased_rows),
    )


__all__ = ["DatasetAssets", "WorkspaceScope", "build_assets"]
