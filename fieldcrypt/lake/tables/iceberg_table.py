"""An Apache Iceberg table through pyiceberg: its partitions and files, what fieldcrypt refuses, the
protection columns added by schema evolution, one copy-on-write overwrite snapshot per batch of
replaced files, and the history that still holds plaintext (docs/CATALOG.md "Iceberg tables").
Paths here are the table's own locations (URIs); fieldcrypt.lake.tables.iceberg maps them to the lake.

Iceberg owns its files: a data file is never rewritten in place. A replaced file is written beside
it under a new name, and one `overwrite` snapshot removes the old files and adds the new ones; the
old files stay reachable from older snapshots (time travel) until `purge_history` expires those
snapshots and deletes what only they referenced.

Metrics (`write.metadata.metrics.column.<column>`): manifests keep, per data file and column, value
and null counts and, in the default mode `truncate(16)`, the first 16 characters of the column's
smallest and largest value. For a protected attribute that is a prefix of a real address, i.e.
protected plaintext (`truncate(n)` keeps n characters for any n >= 1, `full` all of them).
`counts` would be enough to keep plaintext out (value, null and NaN counts: no value is recorded);
`prepare_protection` sets `none` for the attribute's columns as for fieldcrypt's own `__fc_*`
columns (random bytes: neither bounds nor counts serve a reader), so no statistic of a protected
column is kept at all, as on a Delta table. Bounds recorded before that, by the writer of a file
fieldcrypt later replaces, stay in the manifests that list the old file: the older snapshots'
manifests, and the DELETED entries of the overwrite snapshot's own manifest (pyiceberg writes the
removed file's entry with its metrics), which `plaintext_history` counts and `purge_history` removes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchNamespaceError, NoSuchTableError, ValidationException
from pyiceberg.io.pyarrow import (
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
)
from pyiceberg.manifest import (
    DataFile,
    DataFileContent,
    FileFormat,
    ManifestEntry,
    ManifestEntryStatus,
    ManifestFile,
)
from pyiceberg.schema import Schema, index_by_id, index_by_name, index_name_by_id
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.types import BinaryType

from fieldcrypt.errors import ConcurrentUpdateError, ConfigError, InputError
from fieldcrypt.lake.tables.base import partition_key
from fieldcrypt.lake.tables.iceberg_manifests import MANIFESTS

ERASE_OPERATION = "erase"  # fieldcrypt's erasure commits: the files they replaced keep the erased rows

OPERATION_PROPERTY = "fieldcrypt.operation"  # the snapshot summary's entry naming fieldcrypt's operation
# Every data file fieldcrypt writes into a table is named so (fieldcrypt.engine.table_commit.NEW_FILE_PREFIX).
FIELDCRYPT_FILE_PREFIX = "part-fc-"
METRICS_PROPERTY_PREFIX = "write.metadata.metrics.column."
PROTECTION_COLUMN_METRICS = "none"
ATTRIBUTE_COLUMN_METRICS = "none"
PARQUET_FIELD_ID = b"PARQUET:field_id"
WRITABLE_FORMAT_VERSIONS = (1, 2)
COMMIT_ATTEMPTS = 4
# Catalog properties that hold a secret: they come from the environment (PYICEBERG_CATALOG__<NAME>__<KEY>,
# or the AWS chain for Glue and S3), never from the catalog file.
_SECRET_MARKERS = ("credential", "token", "password", "secret", "session", "access-key", "access_key")
CATALOG_TYPES = ("sql", "rest", "glue")


@dataclass(frozen=True)
class IcebergCatalogConfig:
    """A pyiceberg catalog as the catalog file declares it: its name and non-secret properties
    (`type`: sql, rest or glue; `uri`, `warehouse`, region...). Secrets come from the environment."""

    name: str
    properties: Mapping[str, str]

    def __post_init__(self) -> None:
        kind = self.properties.get("type")
        if kind not in CATALOG_TYPES:
            raise ConfigError(
                f"iceberg catalog {self.name}: type is {kind!r}; expected one of {', '.join(CATALOG_TYPES)}"
            )
        for key in self.properties:
            if any(marker in key.lower() for marker in _SECRET_MARKERS):
                variable = (
                    "PYICEBERG_CATALOG__" + self.name.upper() + "__" + key.upper().replace("-", "_").replace(".", "__")
                )
                raise ConfigError(
                    f"iceberg catalog {self.name}: {key} is a secret and cannot be in the catalog file; "
                    f"set it in the environment ({variable}, or the AWS credential chain for glue and s3)"
                )

    def load(self) -> Catalog:
        """The pyiceberg catalog: these properties merged over the environment's for the same name."""
        try:
            return load_catalog(self.name, **dict(self.properties))
        except (ValueError, ImportError) as exc:  # pyiceberg's words name the missing property or extra
            raise ConfigError(f"iceberg catalog {self.name} cannot be loaded: {exc}") from None


def load_table(catalog: IcebergCatalogConfig, identifier: str) -> Table:
    """The table `identifier` (`namespace.table`) of `catalog`; an error naming it when it does not exist."""
    try:
        return catalog.load().load_table(identifier)
    except (NoSuchTableError, NoSuchNamespaceError):
        raise InputError(f"iceberg table {identifier} does not exist in catalog {catalog.name}") from None


@dataclass(frozen=True)
class Replacement:
    """One data file replaced: the live file (its DataFile from the current snapshot) and the new verified
    Parquet file written by fieldcrypt (a location URI of the same filesystem, beside the old one)."""

    old: DataFile
    new_path: str


@dataclass(frozen=True)
class PlaintextHistory:
    """What of the table's history still holds plaintext of protected attributes (`plaintext_history`).

    `snapshots`: older snapshots (not the current one) that list, as live, data files the current one no
    longer lists and fieldcrypt did not write, or manifests the current one does not list that record a
    bound of a protected column; `data_files`: such data files still on disk; `current_manifests`:
    manifests of the current snapshot that record a removed file's bound of a protected column (the
    DELETED entries of an overwrite)."""

    snapshots: int
    data_files: int
    current_manifests: int

    @property
    def holds_plaintext(self) -> bool:
        return bool(self.snapshots or self.data_files or self.current_manifests)


@dataclass
class PurgeReport:
    """What `purge_history` removed: snapshot ids expired and files deleted, by kind (location URIs)."""

    expired_snapshots: list[int] = field(default_factory=list)
    data_files: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    manifest_lists: list[str] = field(default_factory=list)
    metadata_files: list[str] = field(default_factory=list)
    kept_by_refs: list[str] = field(default_factory=list)  # tags and branches pinning an old snapshot
    compacted_snapshot: int | None = None  # the metadata-only snapshot that dropped removed files' metrics


class IcebergTable:
    """One Iceberg table of a dataset, as fieldcrypt reads, checks and commits it."""

    def __init__(self, table: Table, dataset: str) -> None:
        self.table = table
        self.dataset = dataset

    @property
    def name(self) -> str:
        return ".".join(self.table.name())

    # -- what is in the table ---------------------------------------------------------------------

    def live_files(self) -> list[DataFile]:
        """Every live data file of the current snapshot, from its manifests (what cannot be written refused)."""
        entries = self._live_entries()
        self._check_writable(entries)
        return [entry.data_file for entry in entries]

    def partitions(self) -> list[str] | None:
        """The table's partitions as `field=value/...` (fieldcrypt.lake.tables.base.partition_key), sorted; None
        when the table is not partitioned."""
        if self.table.spec().is_unpartitioned():
            return None
        return sorted({key for data_file in self.live_files() if (key := self.partition_of(data_file)) is not None})

    def partition_of(self, data_file: DataFile) -> str | None:
        """A data file's partition key from the table's own partition values, each as its transform prints it
        (`event_date_day=2026-11-24`, `at_hour=2026-11-24-13`, `at_month=2026-11`, `region=eu`); None when
        its spec is unpartitioned."""
        spec = self.table.specs()[data_file.spec_id]
        if spec.is_unpartitioned():
            return None
        types = spec.partition_type(self.table.schema()).fields
        values: dict[str, str | None] = {}
        for position, (partition_field, result) in enumerate(zip(spec.fields, types, strict=True)):
            value = data_file.partition[position]
            shown = None if value is None else partition_field.transform.to_human_string(result.field_type, value)
            values[partition_field.name] = shown
        return partition_key([f.name for f in spec.fields], values)

    def data_files(self, partition: str | None) -> list[DataFile]:
        """The live data files of one partition (`None`: of an unpartitioned table), by path."""
        files = self.live_files()
        if partition is None:
            if not self.table.spec().is_unpartitioned():
                raise InputError(f"{self.dataset}: iceberg table {self.name} is partitioned; name a partition")
            return sorted(files, key=lambda f: f.file_path)
        return sorted((f for f in files if self.partition_of(f) == partition), key=lambda f: f.file_path)

    def _live_entries(self) -> list[ManifestEntry]:
        """The current snapshot's live entries (added or existing), data and delete files alike."""
        snapshot = self.table.current_snapshot()
        if snapshot is None:
            return []
        return MANIFESTS.live_entries(snapshot, self.table.io)  # decoded once per manifest (immutable files)

    # -- what fieldcrypt cannot write -----------------------------------------------------------------

    def check_writable(self) -> None:
        """InputError naming what fieldcrypt cannot rewrite through pyiceberg; nothing is read or written then."""
        self._check_writable(self._live_entries())

    def _check_writable(self, entries: Sequence[ManifestEntry]) -> None:
        metadata = self.table.metadata
        where = f"{self.dataset}: iceberg table {self.name}"
        if metadata.format_version not in WRITABLE_FORMAT_VERSIONS:
            raise InputError(
                f"{where} is format version {metadata.format_version} (row lineage, deletion vectors): fieldcrypt "
                "rewrites format versions 1 and 2 only; nothing was read or written"
            )
        # Spark and Flink list delete files in DELETES manifests; the entry's own content is read, wherever it is.
        positional = sum(1 for e in entries if e.data_file.content == DataFileContent.POSITION_DELETES)
        equality = sum(1 for e in entries if e.data_file.content == DataFileContent.EQUALITY_DELETES)
        if positional or equality:
            raise InputError(
                f"{where} has merge-on-read delete files ({positional} positional, {equality} equality) in its "
                "current snapshot: fieldcrypt does not rewrite them yet; compact the table (rewrite its data files "
                "with the deletes applied) first; nothing was read or written"
            )
        default_spec = metadata.default_spec_id
        for entry in entries:
            data_file = entry.data_file
            if data_file.file_format != FileFormat.PARQUET:
                raise InputError(
                    f"{where}: data file {data_file.file_path} is {data_file.file_format.value}; fieldcrypt rewrites "
                    "Parquet data files only"
                )
            if data_file.spec_id != default_spec:
                raise InputError(
                    f"{where}: data file {data_file.file_path} is in partition spec {data_file.spec_id}, not the "
                    f"table's current spec {default_spec} (partition evolution): pyiceberg writes replacements in "
                    "the current spec only; rewrite the table's old-spec files first"
                )
            if data_file.key_metadata:
                raise InputError(f"{where}: data file {data_file.file_path} is encrypted by Iceberg (key_metadata)")

    # -- preparing protection ------------------------------------------------------------------------

    def prepare_protection(
        self, protection_columns: Sequence[str], attribute_columns: Sequence[str], *, attempts: int = COMMIT_ATTEMPTS
    ) -> bool:
        """Add the missing `__fc_*` columns (optional binary, field ids assigned by pyiceberg) and set the
        metrics of protection and attribute columns (module docstring), in one commit; False when already so.

        `attribute_columns`: the protected attributes' column names (a struct column's fields get the property
        each). A table partitioned by a protected attribute is refused: its partition values are the plaintext.
        Another process preparing the same table at once (parallel partitions) makes the commit fail; it is
        read again and retried, and finds the columns there.
        """
        self.check_writable()
        for _ in range(attempts):
            schema = self.table.schema()
            missing = self._missing(schema, protection_columns, attribute_columns)
            wanted = {METRICS_PROPERTY_PREFIX + c: PROTECTION_COLUMN_METRICS for c in protection_columns}
            wanted |= {
                METRICS_PROPERTY_PREFIX + c: ATTRIBUTE_COLUMN_METRICS for c in _leaves(schema, attribute_columns)
            }
            changed = {k: v for k, v in wanted.items() if self.table.properties.get(k) != v}
            if not missing and not changed:
                return False
            try:
                with self.table.transaction() as transaction:
                    if missing:
                        with transaction.update_schema() as update:
                            for column in missing:
                                update.add_column(column, BinaryType(), doc="fieldcrypt protection column")
                    if changed:
                        transaction.set_properties(changed)
            except CommitFailedException:
                self.table.refresh()
                continue
            return True
        raise ConcurrentUpdateError(
            f"{self.dataset}: iceberg table {self.name} kept changing while its protection columns were added "
            f"({attempts} attempts); run again"
        )

    def _missing(
        self, schema: Schema, protection_columns: Sequence[str], attribute_columns: Sequence[str]
    ) -> list[str]:
        """The protection columns the schema lacks; InputError for what cannot be protected."""
        where = f"{self.dataset}: iceberg table {self.name}"
        for column in attribute_columns:
            found = schema.find_field(column, case_sensitive=True) if _has_field(schema, column) else None
            if found is None:
                raise InputError(f"{where} has no column {column}")
            below = {found.field_id} | (set() if found.field_type.is_primitive else set(index_by_id(found.field_type)))
            for spec in self.table.specs().values():
                for partition_field in spec.fields:
                    if partition_field.source_id in below:
                        raise InputError(
                            f"{where} is partitioned by {column} ({partition_field.name}): the partition values "
                            "and paths are its plaintext, which fieldcrypt cannot protect"
                        )
        missing = []
        for column in protection_columns:
            if not _has_field(schema, column):
                missing.append(column)
            elif not isinstance(schema.find_field(column).field_type, BinaryType):
                raise InputError(
                    f"{where}: column {column} is {schema.find_field(column).field_type}, expected binary "
                    "(fieldcrypt's ciphertext, wrapped-key and blind-index columns)"
                )
        return missing

    # -- committing replacements ---------------------------------------------------------------------

    def data_file_for(self, replacement: Replacement) -> DataFile:
        """The DataFile of a replacement's new Parquet file: its metrics computed by pyiceberg from the file's
        footer under the table's metrics properties, in the old file's partition and spec; the file's field ids
        checked against the table's schema and its rows against the old file's."""
        old, path = replacement.old, replacement.new_path
        input_file = self.table.io.new_input(path)
        with input_file.open() as stream:
            footer = pq.read_metadata(stream)
        schema = self.table.schema()
        check_field_ids(footer.schema.to_arrow_schema(), schema, path)
        if footer.num_rows != old.record_count:
            raise InputError(
                f"{path} holds {footer.num_rows} rows, the data file it replaces {old.record_count}: a replacement "
                "keeps every row"
            )
        try:
            statistics = data_file_statistics_from_parquet_metadata(
                parquet_metadata=footer,
                stats_columns=compute_statistics_plan(schema, self.table.properties),
                parquet_column_mapping=parquet_path_to_id_mapping(schema),
            )
        except (KeyError, ValueError) as exc:
            raise InputError(f"{path}: its columns do not match the table's schema ({exc})") from None
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=path,
            file_format=FileFormat.PARQUET,
            partition=old.partition,
            file_size_in_bytes=len(input_file),
            sort_order_id=old.sort_order_id,
            spec_id=old.spec_id,
            equality_ids=None,
            key_metadata=None,
            **statistics.to_serialized_dict(),
        )

    def commit_replacements(
        self,
        replacements: Sequence[Replacement],
        operation: str,
        summary: Mapping[str, str] | None = None,
        *,
        attempts: int = COMMIT_ATTEMPTS,
    ) -> Snapshot:
        """One overwrite (copy-on-write) snapshot removing each replacement's old file and adding its new one,
        its summary naming fieldcrypt's `operation` (plus `summary`: the run, the attributes).

        Each attempt reads the table's head: an old file no longer live there (another writer replaced or
        deleted it) refuses the whole batch (ConcurrentUpdateError) with nothing committed, its new file left
        unreferenced for the caller to delete; files appended since are kept (the overwrite names the files it
        removes). A commit landing between that read and this commit fails the catalog's check; pyiceberg's
        retry re-validates on the new head, where an append fails the serializable check
        (`write.delete.isolation-level`), and the batch is planned again here, up to `attempts` times.
        """
        if not replacements:
            raise InputError(f"{self.dataset}: no replacement to commit")
        new_files = [self.data_file_for(r) for r in replacements]
        properties = {**(summary or {}), OPERATION_PROPERTY: operation}
        failure = ""
        for _ in range(attempts):
            self.table.refresh()
            entries = self._live_entries()
            self._check_writable(entries)  # a delete file committed since would be lost under the overwrite
            live = {entry.data_file.file_path: entry.data_file for entry in entries}
            gone = [r.old.file_path for r in replacements if r.old.file_path not in live]
            if gone:
                raise ConcurrentUpdateError(
                    f"{self.dataset}: {gone[0]} is no longer in iceberg table {self.name} (another writer replaced or "
                    f"deleted it{f', and {len(gone) - 1} more' if len(gone) > 1 else ''}); nothing was committed, "
                    "run again"
                )
            try:
                # Leaving the inner block stages the snapshot, the outer one commits it (pyiceberg's own retries
                # re-validate on the new head; a concurrent append fails its serializable check, retried here).
                with (
                    self.table.transaction() as transaction,
                    transaction.update_snapshot(snapshot_properties=properties).overwrite() as overwrite,
                ):
                    for replacement, new_file in zip(replacements, new_files, strict=True):
                        overwrite.delete_data_file(live[replacement.old.file_path])
                        overwrite.append_data_file(new_file)
                    snapshot_id = overwrite.snapshot_id
            except (CommitFailedException, ValidationException) as exc:
                # Nothing landed (pyiceberg deleted the manifests it wrote): plan again on the new head.
                failure = type(exc).__name__
                continue
            committed = self.table.refresh().metadata.snapshot_by_id(snapshot_id)
            if committed is None:
                raise ConcurrentUpdateError(
                    f"{self.dataset}: snapshot {snapshot_id} is not in {self.name} after its commit"
                )
            return committed
        raise ConcurrentUpdateError(
            f"{self.dataset}: iceberg table {self.name} kept changing under the commit ({attempts} attempts, last "
            f"{failure}); nothing was committed, run again"
        )

    # -- history -------------------------------------------------------------------------------------

    def plaintext_history(self, attribute_columns: Sequence[str]) -> PlaintextHistory:
        """What of the table's snapshots still holds plaintext of the protected attributes (PlaintextHistory).

        A data file holds it when an older snapshot lists it, the current one does not, and fieldcrypt did not
        write it (`part-fc-*.parquet`: a file rotation or re-index replaced holds ciphertext): it was
        replaced by a protection or removed by another writer before being protected; or when a fieldcrypt
        `erase` snapshot removed it (even one fieldcrypt wrote: it holds the erased rows' masks, ciphertext
        and historical plaintext). A manifest holds it when
        it records a bound (a min or max value, or its prefix) of a protected attribute's column and the
        current snapshot does not list it, or, listed by the current snapshot, records it for a removed file
        (the DELETED entries of an overwrite).
        """
        table = self.table.refresh()
        current = table.current_snapshot()
        if current is None:
            return PlaintextHistory(0, 0, 0)
        protected_ids = _field_ids(table.schema(), attribute_columns)
        cache: dict[str, list[ManifestEntry]] = {}
        current_manifests = {m.manifest_path: m for m in current.manifests(table.io)}
        live_now = {e.data_file.file_path for m in current_manifests.values() for e in _live(table, m, cache)}
        current_holding = sum(
            1
            for m in current_manifests.values()
            if any(
                e.status == ManifestEntryStatus.DELETED and _has_bounds(e.data_file, protected_ids)
                for e in _entries(table, m, cache)
            )
        )
        snapshots = 0
        reachable: set[str] = set()
        stored: dict[str, bool] = {}
        erased_away = _removed_by(table, ERASE_OPERATION, cache)

        def on_disk(location: str) -> bool:
            if location not in stored:
                stored[location] = _exists(table, location)
            return stored[location]

        for snapshot in table.snapshots():
            if snapshot.snapshot_id == current.snapshot_id:
                continue
            holds = False
            for manifest in _manifests(table, snapshot, missing_ok=True):  # an interrupted purge's leftovers
                replaced = {
                    e.data_file.file_path
                    for e in _live(table, manifest, cache)
                    if e.data_file.file_path not in live_now
                    and (not _written_by_fieldcrypt(e.data_file.file_path) or e.data_file.file_path in erased_away)
                }
                replaced = {path for path in replaced if on_disk(path)}  # an interrupted purge deleted the others
                reachable |= replaced
                bounds = manifest.manifest_path not in current_manifests and any(
                    _has_bounds(e.data_file, protected_ids) for e in _entries(table, manifest, cache)
                )
                holds = holds or bool(replaced) or bounds
            snapshots += int(holds)
        return PlaintextHistory(snapshots, len(reachable), current_holding)

    def purge_history(self, older_than: datetime, *, attempts: int = COMMIT_ATTEMPTS) -> PurgeReport:
        """Expire the snapshots older than `older_than` (never the current one, nor a tag's or branch's head) and
        delete the files only they referenced: data and delete files, manifests, manifest lists, and the previous
        metadata files the metadata log dates before `older_than`.

        First, when the current snapshot's manifests still carry removed files' entries (the DELETED entries
        of an overwrite, with their metrics), one metadata-only snapshot is committed that lists the live
        manifests only (pyiceberg's fast append, no file added), so those manifests can go with the old
        snapshots. The files are deleted before the snapshots are expired (data files, then manifests, then
        manifest lists): a purge interrupted anywhere leaves snapshots that still name what is left, which
        `plaintext_history` counts and the next purge deletes, never a plaintext file no snapshot names.
        Files no snapshot ever referenced (orphans of a crashed writer) are left alone: they may belong to a
        commit in flight.
        """
        report = PurgeReport()
        table = self.table.refresh()
        current = table.current_snapshot()
        if current is None:
            return report
        if any(_has_deleted(table, m) for m in current.manifests(table.io)):
            with (
                table.transaction() as transaction,
                transaction.update_snapshot(
                    snapshot_properties={OPERATION_PROPERTY: "purge-history"}
                ).fast_append() as append,
            ):
                report.compacted_snapshot = append.snapshot_id
            table = self.table.refresh()
        cutoff_ms = int(older_than.timestamp() * 1000)
        for _ in range(attempts):
            refs = {name: ref.snapshot_id for name, ref in table.metadata.refs.items()}
            old = {s.snapshot_id for s in table.snapshots() if s.timestamp_ms < cutoff_ms}
            to_expire = sorted(old - set(refs.values()))
            current_id = table.metadata.current_snapshot_id
            report.kept_by_refs = sorted(n for n, i in refs.items() if i in old and i != current_id)
            if not to_expire:
                break
            kept = [s for s in table.snapshots() if s.snapshot_id not in set(to_expire)]
            doomed = _referenced_files(table, [s for s in table.snapshots() if s.snapshot_id in set(to_expire)], True)
            needed = _referenced_files(table, kept)
            for kind in ("data_files", "manifests", "manifest_lists"):
                for path in sorted(doomed[kind] - needed[kind]):
                    MANIFESTS.forget(path)
                    with contextlib.suppress(FileNotFoundError):  # an interrupted purge deleted it already
                        table.io.delete(path)
                    getattr(report, kind).append(path)
            try:
                table.maintenance.expire_snapshots().by_ids(to_expire).commit()
            except CommitFailedException:
                table = self.table.refresh()  # another commit landed: what to expire is decided again
                continue
            report.expired_snapshots = to_expire
            break
        else:
            raise ConcurrentUpdateError(
                f"{self.dataset}: iceberg table {self.name} kept changing while its snapshots were expired "
                f"({attempts} attempts); run purge-history again"
            )
        table = self.table.refresh()
        for entry in table.metadata.metadata_log:
            if entry.timestamp_ms < cutoff_ms and _exists(table, entry.metadata_file):
                table.io.delete(entry.metadata_file)
                report.metadata_files.append(entry.metadata_file)
        return report


def check_field_ids(file_schema: pa.Schema, table_schema: Schema, where: str) -> None:
    """InputError unless every column of a Parquet file (nested fields, list elements, map keys and values
    included) carries a `PARQUET:field_id` and each names the table schema's field of the same path."""
    by_id = index_name_by_id(table_schema)  # id -> dotted path (`tags.element`, `attrs.key`)
    for path, field_id in _arrow_field_ids(file_schema):
        if field_id is None:
            raise InputError(
                f"{where}: column {path} has no Parquet field id; an Iceberg data file names every column by the "
                "table schema's field id"
            )
        expected = by_id.get(field_id)
        if expected != path:
            raise InputError(
                f"{where}: column {path} carries field id {field_id}, which is "
                f"{'no field' if expected is None else expected} in the table's schema"
            )


def with_field_ids(schema: pa.Schema, table_schema: Schema, where: str) -> pa.Schema:
    """`schema` with each field's `PARQUET:field_id` set from the table schema's field of the same path (what
    fieldcrypt's writer needs so that its new `__fc_*` columns, too, are read by field id)."""
    ids = index_by_name(table_schema)

    def annotate(arrow_field: pa.Field, path: str) -> pa.Field:
        field_id = ids.get(path)
        if field_id is None:
            raise InputError(f"{where}: column {path} is not in the iceberg table's schema (add it first)")
        kind = arrow_field.type
        if pa.types.is_struct(kind):
            kind = pa.struct([annotate(kind.field(i), f"{path}.{kind.field(i).name}") for i in range(kind.num_fields)])
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            element = annotate(kind.value_field, f"{path}.element")
            kind = pa.list_(element) if pa.types.is_list(kind) else pa.large_list(element)
        elif pa.types.is_map(kind):
            kind = pa.map_(annotate(kind.key_field, f"{path}.key"), annotate(kind.item_field, f"{path}.value"))
        metadata = dict(arrow_field.metadata or {})
        metadata[PARQUET_FIELD_ID] = str(field_id).encode()
        return pa.field(arrow_field.name, kind, arrow_field.nullable, metadata)

    return pa.schema([annotate(f, f.name) for f in schema], metadata=schema.metadata)


def _arrow_field_ids(schema: pa.Schema) -> Iterator[tuple[str, int | None]]:
    def walk(arrow_field: pa.Field, path: str) -> Iterator[tuple[str, int | None]]:
        raw = (arrow_field.metadata or {}).get(PARQUET_FIELD_ID)
        yield path, int(raw) if raw is not None else None
        kind = arrow_field.type
        if pa.types.is_struct(kind):
            for i in range(kind.num_fields):
                yield from walk(kind.field(i), f"{path}.{kind.field(i).name}")
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            yield from walk(kind.value_field, f"{path}.element")
        elif pa.types.is_map(kind):
            yield from walk(kind.key_field, f"{path}.key")
            yield from walk(kind.item_field, f"{path}.value")

    for arrow_field in schema:
        yield from walk(arrow_field, arrow_field.name)


def _has_field(schema: Schema, column: str) -> bool:
    try:
        schema.find_field(column, case_sensitive=True)
    except ValueError:
        return False
    return True


def _field_ids(schema: Schema, columns: Iterable[str]) -> set[int]:
    return {schema.find_field(c).field_id for c in columns if _has_field(schema, c)}


def _leaves(schema: Schema, columns: Iterable[str]) -> list[str]:
    """The columns' primitive fields by full name (a struct attribute's fields: `properties.email`), which the
    per-column metrics properties name."""
    names = index_name_by_id(schema)
    found: list[str] = []
    for column in columns:
        if not _has_field(schema, column):
            continue
        nested = schema.find_field(column)
        if nested.field_type.is_primitive:
            found.append(column)
            continue
        found += [names[i] for i, f in index_by_id(nested.field_type).items() if f.field_type.is_primitive]
    return found


def _has_bounds(data_file: DataFile, field_ids: set[int]) -> bool:
    bounds = [data_file.lower_bounds or {}, data_file.upper_bounds or {}]
    return any(field_id in b for b in bounds for field_id in field_ids)


def _entries(table: Table, manifest: ManifestFile, cache: dict[str, list[ManifestEntry]]) -> list[ManifestEntry]:
    if manifest.manifest_path not in cache:
        try:
            cache[manifest.manifest_path] = manifest.fetch_manifest_entry(table.io, discard_deleted=False)
        except FileNotFoundError:  # deleted by an interrupted purge (after the data files it listed)
            cache[manifest.manifest_path] = []
    return cache[manifest.manifest_path]


def _live(table: Table, manifest: ManifestFile, cache: dict[str, list[ManifestEntry]]) -> list[ManifestEntry]:
    return [e for e in _entries(table, manifest, cache) if e.status != ManifestEntryStatus.DELETED]


def _removed_by(table: Table, operation: str, cache: dict[str, list[ManifestEntry]]) -> set[str]:
    """The data files fieldcrypt's `operation` snapshots removed: live in the parent, not in the snapshot
    (the parent expired by a purge: nothing of it is reachable any more)."""
    removed: set[str] = set()
    for snapshot in table.snapshots():
        summary = snapshot.summary
        if summary is None or summary[OPERATION_PROPERTY] != operation or snapshot.parent_snapshot_id is None:
            continue
        parent = table.metadata.snapshot_by_id(snapshot.parent_snapshot_id)
        if parent is None:
            continue

        def live(of: Snapshot) -> set[str]:
            return {
                e.data_file.file_path for m in _manifests(table, of, missing_ok=True) for e in _live(table, m, cache)
            }

        removed |= live(parent) - live(snapshot)
    return removed


def _written_by_fieldcrypt(location: str) -> bool:
    return location.rpartition("/")[2].startswith(FIELDCRYPT_FILE_PREFIX)


def _has_deleted(table: Table, manifest: ManifestFile) -> bool:
    if manifest.deleted_files_count is not None:
        return manifest.deleted_files_count > 0
    return any(
        e.status == ManifestEntryStatus.DELETED for e in manifest.fetch_manifest_entry(table.io, discard_deleted=False)
    )


def _referenced_files(table: Table, snapshots: Iterable[Snapshot], missing_ok: bool = False) -> dict[str, set[str]]:
    """Every file the snapshots reference, by kind: manifest lists, manifests, live data and delete files.
    `missing_ok`: a manifest list or manifest an interrupted purge already deleted is skipped."""
    found: dict[str, set[str]] = {"manifest_lists": set(), "manifests": set(), "data_files": set()}
    seen: set[str] = set()
    for snapshot in snapshots:
        found["manifest_lists"].add(snapshot.manifest_list)
        for manifest in _manifests(table, snapshot, missing_ok):
            found["manifests"].add(manifest.manifest_path)
            if manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            try:
                entries = MANIFESTS.manifest_live_entries(manifest, table.io)
            except FileNotFoundError:
                if not missing_ok:
                    raise
                continue
            found["data_files"] |= {entry.data_file.file_path for entry in entries}
    return found


def _manifests(table: Table, snapshot: Snapshot, missing_ok: bool) -> list[ManifestFile]:
    try:
        return list(snapshot.manifests(table.io))
    except FileNotFoundError:
        if not missing_ok:
            raise
        return []


def _exists(table: Table, location: str) -> bool:
    return bool(table.io.new_input(location).exists())
