"""An Apache Iceberg table declared `kind: iceberg`, as fieldcrypt's table-format seam asks
(fieldcrypt.lake.tables.base.TableFormat), on fieldcrypt.lake.tables.iceberg_table (pyiceberg).

The table is loaded from its pyiceberg catalog (`iceberg_catalog:` in the catalog file: the SQL
catalog on SQLite for tests and the demo, REST or Glue; credentials from the environment). Its data
files must lie in the workspace's lake: fieldcrypt reads, locks and writes them through the lake's
store, and maps the table's locations (`file:///...`, `s3://bucket/...`) to lake-relative paths. In an
`s3://` lake pyiceberg's FileIO (pyarrow's S3 filesystem) is given the workspace's S3 endpoint and
region (`file_io_properties`), its credentials from the environment.

Before the first file of a run is written (`file_schema`), the table's schema gains the missing
`__fc_*` columns (schema evolution: pyiceberg assigns their field ids) and its metrics properties
record no statistic of them nor of the protected columns; every column of a new file then carries
the table's field id (`PARQUET:field_id`), which is how Iceberg readers match columns.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pyarrow as pa
from pyiceberg.io import S3_ENDPOINT, S3_FORCE_VIRTUAL_ADDRESSING, S3_REGION
from pyiceberg.manifest import DataFile

from fieldcrypt.errors import ConcurrentUpdateError, InputError
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.lake.tables.base import (
    ICEBERG_KIND,
    LEAVES_PLAINTEXT,
    History,
    Purge,
    Replacement,
    TableOperation,
    TableSnapshot,
    TableSource,
    commit_lock,
    is_protection_column,
)
from fieldcrypt.lake.tables.iceberg_table import (
    ERASE_OPERATION,
    IcebergCatalogConfig,
    IcebergTable,
    load_table,
    with_field_ids,
)
from fieldcrypt.lake.tables.iceberg_table import Replacement as IcebergReplacement

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True)
class IcebergSnapshot:
    """The table as read once: its live data files by lake-relative path, and their partitions."""

    table: IcebergTable
    files: dict[str, DataFile]
    partitions: dict[str | None, list[str]]

    @property
    def version(self) -> int:
        snapshot = self.table.table.current_snapshot()
        return 0 if snapshot is None else int(snapshot.snapshot_id)


class IcebergTableFormat:
    """The Iceberg table `source.identifier` of the catalog `source.catalog`, its files in `store`'s lake."""

    kind = ICEBERG_KIND

    def __init__(self, store: LakeStore, source: TableSource, dataset: str) -> None:
        self.store = store
        self.identifier = source.identifier
        self.location = source.location.strip("/")
        # The FileIO reaches the lake's files as the lake's store does (same endpoint and region); what the
        # catalog file sets itself wins.
        properties = {**file_io_properties(store), **source.catalog}
        # The name pyiceberg knows the catalog by: its SQL catalog keys tables by it, and its environment
        # variables (PYICEBERG_CATALOG__<NAME>__*) carry the credentials. pyiceberg's default is "default".
        name = properties.pop("name", "default")
        self.catalog = IcebergCatalogConfig(name, properties)
        self.dataset = dataset
        self._lock = threading.Lock()  # one schema change at a time, whatever the file workers
        self._prepared: dict[tuple[frozenset[str], tuple[str, ...]], IcebergTable] = {}

    def describe(self) -> str:
        return f"{self.identifier} (iceberg catalog {self.catalog.properties.get('type')})"

    def _load(self) -> IcebergTable:
        return IcebergTable(load_table(self.catalog, self.identifier), self.dataset)

    # -- reading --------------------------------------------------------------------------------------

    def snapshot(self) -> IcebergSnapshot:
        table = self._load()
        self._check_location(table)
        files: dict[str, DataFile] = {}
        found: dict[str | None, list[str]] = {}
        for data_file in table.live_files():
            rel = self._rel(data_file.file_path)
            files[rel] = data_file
            found.setdefault(table.partition_of(data_file), []).append(rel)
        partitions = {key: sorted(found[key]) for key in sorted(found, key=lambda k: k or "")}
        return IcebergSnapshot(table, files, partitions)

    def partitions(self, snapshot: TableSnapshot) -> dict[str | None, list[str]]:
        return dict(_snapshot(snapshot).partitions)

    def scan(self, snapshot: TableSnapshot) -> pl.LazyFrame:
        """The rows of `snapshot`'s Iceberg snapshot (polars' `scan_iceberg`: its manifests' live files, deletes
        applied)."""
        import polars as pl

        table = _snapshot(snapshot).table.table
        current = table.current_snapshot()
        return pl.scan_iceberg(table, snapshot_id=None if current is None else current.snapshot_id)

    def check_writable(self, snapshot: TableSnapshot) -> None:
        _snapshot(snapshot).table.check_writable()

    def _check_location(self, table: IcebergTable) -> None:
        """The declared `path:` is the table's location in the lake: summary files, temporary files of dead
        runs and the dataset's messages are found under it."""
        actual = self._rel(table.table.location().rstrip("/") + "/")[:-1] or "."
        if actual != self.location:
            raise InputError(
                f"{self.dataset}: iceberg table {self.identifier} is at {self.store.display(actual)}, not at the "
                f"declared path {self.location!r}; declare `path: {actual}` for it in the catalog"
            )

    def _rel(self, location: str) -> str:
        """A table location as a path relative to the lake; InputError when the file is outside the lake."""
        path = _without_scheme(location)
        root = _without_scheme(self.store.full_path("") if self.store.is_local else self.store.uri).rstrip("/")
        if not path.startswith(root + "/"):
            raise InputError(
                f"{self.dataset}: data file {location} of iceberg table {self.identifier} is outside the lake "
                f"{self.store.uri}; fieldcrypt reads and writes a table's files through the lake (put the "
                "table's warehouse inside it)"
            )
        return path[len(root) + 1 :]

    def _location(self, rel: str, like: str) -> str:
        """The table location of a lake-relative path, in the form (`file://` or not) of `like`."""
        if self.store.is_local:
            path = self.store.full_path(rel)
            return f"file://{path}" if like.startswith("file:") else path
        return self.store.display(rel)

    # -- writing --------------------------------------------------------------------------------------

    def file_schema(self, schema: pa.Schema, protected_columns: Sequence[str]) -> pa.Schema:
        key = (frozenset(n for n in schema.names if is_protection_column(n)), tuple(sorted(protected_columns)))
        with self._lock:
            table = self._prepared.get(key)
            if table is None:
                table = self._load()
                table.prepare_protection(sorted(key[0]), key[1])
                self._prepared[key] = table
        # Iceberg has no dictionary type, and pyiceberg 0.12 reads a column an `ARROW:schema` declares dictionary
        # as such, which it cannot concatenate with another file's binary: the file declares the plain type (its
        # pages stay dictionary-encoded).
        plain = pa.schema([f.with_type(_plain(f.type)) for f in schema], metadata=schema.metadata)
        return with_field_ids(plain, table.table.schema(), f"{self.dataset} (iceberg table {self.identifier})")

    def prepare_columns(self, fields: Sequence[pa.Field], protected_columns: Sequence[str]) -> None:
        """A no-op once `file_schema` prepared the table (the usual case: the field ids are needed first)."""
        names = frozenset(f.name for f in fields)
        key = (names, tuple(sorted(protected_columns)))
        with self._lock:
            if key not in self._prepared:
                table = self._load()
                table.prepare_protection(sorted(names), key[1])
                self._prepared[key] = table

    def commit(self, snapshot: TableSnapshot, replacements: Sequence[Replacement], operation: TableOperation) -> int:
        planned = _snapshot(snapshot)
        table = self._load()  # the schema the prepare committed since the plan
        ours = []
        for item in replacements:
            old = planned.files.get(item.old)
            if old is None:
                raise ConcurrentUpdateError(
                    f"{self.dataset}: {self.store.display(item.old)} is not a live file of iceberg table "
                    f"{self.identifier} at the snapshot read; nothing was committed, run again"
                )
            ours.append(IcebergReplacement(old, self._location(item.new, old.file_path)))
        with commit_lock(f"iceberg:{self.catalog.name}:{self.identifier}"):  # a run's partitions take turns
            committed = table.commit_replacements(ours, operation.operation, operation.metadata())
        return int(committed.snapshot_id)

    # -- history --------------------------------------------------------------------------------------

    def operations(self) -> list[Mapping[str, str]]:
        """The `fieldcrypt.*` members of the snapshots' summaries, newest first."""
        snapshots = sorted(self._load().table.snapshots(), key=lambda s: -int(s.timestamp_ms))
        found: list[Mapping[str, str]] = []
        for snapshot in snapshots:
            properties = {} if snapshot.summary is None else snapshot.summary.additional_properties
            if "fieldcrypt.operation" in properties:
                found.append({str(k): str(v) for k, v in properties.items() if str(k).startswith("fieldcrypt.")})
        return found

    def history(self, attributes: Sequence[str]) -> History:
        """Older snapshots and files holding plaintext (IcebergTable.plaintext_history); `files` counts the
        replaced data files still reachable and the current snapshot's manifests that keep removed files'
        bounds of a protected column."""
        table = self._load()
        prefix = f"{self.dataset}."
        columns = [a[len(prefix) :] if a.startswith(prefix) else a for a in attributes]
        found = table.plaintext_history(columns)
        if not found.holds_plaintext:
            return History(0, 0, ())
        named = set()
        erased = False
        for snapshot in table.table.snapshots():
            summary = snapshot.summary
            if summary is not None and summary["fieldcrypt.operation"] in LEAVES_PLAINTEXT:
                named |= set(str(summary["fieldcrypt.attributes"] or "").split(","))
                erased = erased or summary["fieldcrypt.operation"] == ERASE_OPERATION
        protected = tuple(sorted(a for a in attributes if a in named)) or tuple(sorted(attributes))
        return History(found.snapshots, found.data_files + found.current_manifests, protected, erased)

    def purge_history(self, older_than_hours: float) -> Purge:
        """The files only the snapshots older than the retention reference deleted, then those snapshots expired
        (pyiceberg's expire-snapshots), then the older metadata files (IcebergTable.purge_history says exactly
        which); `log_files_deleted` counts manifests, manifest lists and metadata files."""
        hours = max(0.0, older_than_hours)
        report = self._load().purge_history(datetime.now(UTC) - timedelta(hours=hours))
        log_files = len(report.manifests) + len(report.manifest_lists) + len(report.metadata_files)
        return Purge(len(report.data_files), log_files, hours)


def file_io_properties(store: LakeStore) -> dict[str, str]:
    """The pyiceberg FileIO properties of the workspace's `s3://` lake: its endpoint (path-style addressing, as an
    S3-compatible store such as MinIO or moto serves) and region; none for a local lake. Never credentials:
    pyarrow's S3 filesystem reads them from the environment (the AWS credential chain)."""
    properties: dict[str, str] = {}
    if store.s3_endpoint_url:
        properties[S3_ENDPOINT] = store.s3_endpoint_url
        properties[S3_FORCE_VIRTUAL_ADDRESSING] = "false"
    if store.s3_region:
        properties[S3_REGION] = store.s3_region
    return properties


def _snapshot(snapshot: TableSnapshot) -> IcebergSnapshot:
    if not isinstance(snapshot, IcebergSnapshot):
        raise TypeError(f"an Iceberg table is committed from its own snapshot, not {type(snapshot).__name__}")
    return snapshot


def _plain(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _without_scheme(location: str) -> str:
    for scheme in ("file://", "s3a://", "s3n://", "s3://"):
        if location.startswith(scheme):
            return location[len(scheme) :]
    return location
