"""The table format of a dataset declared `kind: delta` or `kind: iceberg`."""

from __future__ import annotations

from fieldcrypt.errors import InputError
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.lake.tables.base import DELTA_KIND, ICEBERG_KIND, TableFormat, TableSource
from fieldcrypt.lake.tables.delta import DeltaTableFormat


def open_table(store: LakeStore, source: TableSource, dataset: str) -> TableFormat:
    """The table `source` names, not read yet (its log is read by `snapshot`)."""
    if source.kind == DELTA_KIND:
        return DeltaTableFormat(store, source.location, dataset)
    if source.kind == ICEBERG_KIND:
        # pyiceberg takes ~0.3 s to import: only a workspace with an Iceberg table pays it.
        from fieldcrypt.lake.tables.iceberg import IcebergTableFormat

        return IcebergTableFormat(store, source, dataset)
    raise InputError(f"{dataset}: table kind {source.kind!r} is not one of {DELTA_KIND}, {ICEBERG_KIND}")
