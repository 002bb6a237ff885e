"""Assets of the fieldcrypt code location, generated from the catalog: per declared dataset, its landed
snapshot, its protection, its key rotation and its blind-index re-index, partitioned as the catalog declares it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import dagster as dg

from assets.partitions import PartitionGroup, partition_groups, partitions_of
from assets.protection import landed_snapshot, protected_snapshot
from assets.reindex import reindexed_index
from assets.rotation import rotated_keys
from fieldcrypt.layout import DatasetLayout


@dataclass
class DatasetAssets:
    """Every asset of the catalog's datasets, with the partition groups they fall into."""

    groups: list[PartitionGroup]
    landed: dict[str, dg.AssetSpec]
    protected: dict[str, dg.AssetsDefinition]
    rotated: dict[str, dg.AssetsDefinition]
    reindexed: dict[str, dg.AssetsDefinition]

    def definitions(self) -> dg.Definitions:
        return dg.Definitions(
            assets=[*self.landed.values(), *self.protected.values(), *self.rotated.values(), *self.reindexed.values()]
        )


def build_assets(datasets: Mapping[str, DatasetLayout]) -> DatasetAssets:
    groups = partition_groups(datasets)
    return DatasetAssets(
        groups=groups,
        landed={name: landed_snapshot(layout, partitions_of(groups, name)) for name, layout in datasets.items()},
        protected={name: protected_snapshot(layout, partitions_of(groups, name)) for name, layout in datasets.items()},
        rotated={name: rotated_keys(layout, partitions_of(groups, name)) for name, layout in datasets.items()},
        reindexed={name: reindexed_index(layout, partitions_of(groups, name)) for name, layout in datasets.items()},
    )


__all__ = ["DatasetAssets", "build_assets"]
