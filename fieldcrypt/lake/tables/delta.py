"""A Delta Lake table through delta-rs (`deltalake`): its partitions and live files from its log, fieldcrypt's
replacements committed as one write transaction of add and remove actions, history purged by VACUUM and
log cleanup (fieldcrypt.lake.tables.base says what each step promises).

The commit is `DeltaTable.create_write_transaction(actions, mode="append", ...)` with one `AddAction`
per new file and one `RemoveAction` per old one (delta-rs 1.x accepts remove actions in an append
transaction), its `CommitProperties(custom_metadata={"fieldcrypt": ...})` naming fieldcrypt's operation
in the commit's `commitInfo`. The transaction reads the table's head as reloaded at commit time, once
the old files are found live there: delta-rs's conflict checker retries over a concurrent append (the
appended files are kept, and protected by the next run), but fails over a concurrent remove of ANY file
(another partition's commit, of the same run or another); fieldcrypt then reloads the head and commits
again, up to COMMIT_ATTEMPTS times. A remove of a file fieldcrypt replaces is refused as a
ConcurrentUpdateError naming the table and the file.

The statistics of an added file hold `numRecords` and, for the columns fieldcrypt left untouched, the
old file's min, max and null count (the values are the same); never any of a changed column (a
protected attribute, its masked value, or a `__fc_*` column).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import pyarrow as pa
from deltalake import DeltaTable, Field
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction

from fieldcrypt.errors import ConcurrentUpdateError, InputError
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.lake.tables.base import (
    DELTA_KIND,
    LEAVES_PLAINTEXT,
    History,
    Purge,
    Replacement,
    TableOperation,
    TableSnapshot,
    commit_lock,
    is_protection_column,
    partition_key,
)

if TYPE_CHECKING:
    import polars as pl

STATS_COLUMNS = "delta.dataSkippingStatsColumns"
LOG_RETENTION = "delta.logRetentionDuration"
CONDITIONAL_PUT = "conditional_put"  # object_store's S3 option: commit with If-None-Match (S3 conditional writes)
# Commits of one batch: each a reload of the head, the batch's old files checked live there, and the transaction
# (more than the partitions a run works on at once, assets/ranged.py, whose commits race each other).
COMMIT_ATTEMPTS = 8
METADATA_KEY = "fieldcrypt"  # the commitInfo member naming fieldcrypt's operation
ERASE = "erase"  # fieldcrypt's erasure commits (fieldcrypt.engine.table_commit)
# Writer features delta-rs writes and a file-level add/remove commit keeps valid.
WRITABLE_FEATURES = frozenset(
    {"appendOnly", "invariants", "checkConstraints", "timestampNtz", "domainMetadata", "generatedColumns"}
)
_SIMPLE_STATS = (pa.types.is_integer, pa.types.is_floating, pa.types.is_string, pa.types.is_boolean)


@dataclass(frozen=True)
class DeltaSnapshot:
    table: DeltaTable

    @property
    def version(self) -> int:
        return int(self.table.version())


class DeltaTableFormat:
    """The Delta table at `location` (relative to the lake) of `store`."""

    kind = DELTA_KIND

    def __init__(self, store: LakeStore, location: str, dataset: str) -> None:
        self.store = store
        self.location = location.strip("/")
        self.dataset = dataset
        self.uri = table_uri(store, self.location)
        self.storage_options = storage_options(store)

    def describe(self) -> str:
        return self.store.display(self.location)

    def _load(self) -> DeltaTable:
        try:
            return DeltaTable(self.uri, storage_options=self.storage_options)
        except TableNotFoundError:
            raise InputError(
                f"{self.dataset} is declared kind: delta but {self.describe()} is not a Delta table (no _delta_log)"
            ) from None

    def snapshot(self) -> DeltaSnapshot:
        return DeltaSnapshot(self._load())

    # -- reading the log ----------------------------------------------------------------------

    def _adds(self, table: DeltaTable) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = pa.table(table.get_add_actions(flatten=True)).to_pylist()
        return rows

    def partitions(self, snapshot: TableSnapshot) -> dict[str | None, list[str]]:
        table = _table(snapshot)
        self.check_writable(snapshot)  # a file of such a table read on its own would not be the table's rows
        columns = list(table.metadata().partition_columns)
        found: dict[str | None, list[str]] = {}
        for row in self._adds(table):
            values = {c: _raw(row.get(f"partition.{c}")) for c in columns}
            found.setdefault(partition_key(columns, values), []).append(self._rel(row["path"]))
        return {key: sorted(found[key]) for key in sorted(found, key=lambda k: k or "")}

    def scan(self, snapshot: TableSnapshot) -> pl.LazyFrame:
        """The rows at `snapshot`'s version (polars' `scan_delta` of that DeltaTable: its log's live files)."""
        import polars as pl

        return pl.scan_delta(_table(snapshot))

    def _rel(self, path: str) -> str:
        if "://" in path or path.startswith("/"):
            raise InputError(
                f"{self.describe()}: data file {path} is outside the table root (a shallow clone?); "
                "fieldcrypt rewrites only files under the table"
            )
        return f"{self.location}/{unquote(path)}"

    def check_writable(self, snapshot: TableSnapshot) -> None:
        table = _table(snapshot)
        protocol = table.protocol()
        config = {k.lower(): str(v).lower() for k, v in table.metadata().configuration.items()}
        features = set(protocol.writer_features or []) | set(protocol.reader_features or [])
        where = f"{self.dataset} (Delta table {self.describe()})"
        tail = "fieldcrypt read and wrote nothing of it"
        if config.get("delta.columnmapping.mode", "none") != "none" or "columnMapping" in features:
            raise InputError(f"{where} uses column mapping (delta.columnMapping.mode), not supported yet; {tail}")
        if "deletionVectors" in features or config.get("delta.enabledeletionvectors") == "true":
            raise InputError(f"{where} has deletion vectors enabled, not supported yet; {tail}")
        if config.get("delta.enablechangedatafeed") == "true" or "changeDataFeed" in features:
            raise InputError(
                f"{where} has change data feed enabled: a rewrite would need change files, not supported yet; {tail}"
            )
        if config.get("delta.appendonly") == "true":
            raise InputError(f"{where} is append-only (delta.appendOnly): its files cannot be replaced; {tail}")
        unknown = sorted(features - WRITABLE_FEATURES - {"deletionVectors", "columnMapping", "changeDataFeed"})
        if unknown or protocol.min_writer_version > 7 or protocol.min_reader_version > 3:
            named = ", ".join(unknown) or f"writer version {protocol.min_writer_version}"
            raise InputError(f"{where} uses table features fieldcrypt cannot write ({named}); {tail}")

    # -- writing ------------------------------------------------------------------------------

    def file_schema(self, schema: pa.Schema, protected_columns: Sequence[str]) -> pa.Schema:
        return schema  # Delta matches a file's columns by name

    def prepare_columns(self, fields: Sequence[pa.Field], protected_columns: Sequence[str]) -> None:
        table = self._load()
        existing = set(pa.schema(table.schema().to_arrow()).names)
        missing = [f for f in fields if f.name not in existing]
        if missing:
            plain = pa.schema([pa.field(f.name, _plain_type(f.type), nullable=True) for f in missing])
            delta_fields = [Field(f.name, f.type, nullable=True) for f in DeltaSchema.from_arrow(plain).fields]
            table.alter.add_columns(delta_fields)
            table = self._load()
        schema = pa.schema(table.schema().to_arrow())
        hidden = set(protected_columns) | set(table.metadata().partition_columns)
        kept = [n for n in schema.names if not is_protection_column(n) and n not in hidden]
        wanted = ",".join(f"`{n}`" if not n.isidentifier() else n for n in kept)
        config = table.metadata().configuration
        if kept and config.get(STATS_COLUMNS) != wanted:
            table.alter.set_table_properties({STATS_COLUMNS: wanted})
        elif not kept and config.get("delta.dataSkippingNumIndexedCols") != "0":
            table.alter.set_table_properties({"delta.dataSkippingNumIndexedCols": "0"})

    def commit(self, snapshot: TableSnapshot, replacements: Sequence[Replacement], operation: TableOperation) -> int:
        """One write transaction of the replacements, read at the table's head and retried on a new head.

        delta-rs's conflict checker takes a transaction without a predicate to have read the whole table, so
        another commit removing ANY file since the read (another partition's commit of this same run or of a
        concurrent one) fails it. What this transaction depends on is only that its old files are still live:
        each attempt reloads the head and checks exactly that (a removed one refuses the batch by name), so a
        commit that only touched other files is followed by a retry, up to COMMIT_ATTEMPTS times. Within this
        process the commits of one table take turns (commit_lock), so a run's own partitions never race."""
        planned = _table(snapshot)
        what = f"fieldcrypt's {operation.operation} of {operation.partition or 'the table'}"
        said = ""
        for _ in range(COMMIT_ATTEMPTS):
            try:
                with commit_lock(self.uri):  # this process's other partitions commit before or after, not across
                    current = self._load()  # fieldcrypt's own column change, or another commit, may have landed
                    actions, columns = self._actions(planned, current, replacements, operation)
                    properties = CommitProperties(custom_metadata={METADATA_KEY: operation.metadata()})
                    current.create_write_transaction(
                        actions,
                        mode="append",
                        schema=current.schema(),
                        partition_by=columns,
                        commit_properties=properties,
                    )
            except CommitFailedError as exc:
                said = _first_line(exc)
                if any(word in said.lower() for word in ("conflict", "concurrent")):
                    continue  # another commit landed between the reload and this commit: check again on its head
                raise InputError(
                    f"{self.describe()}: delta-rs refused {what} (delta-rs: {said}); nothing was committed"
                ) from None
            return int(self._load().version())
        raise ConcurrentUpdateError(
            f"{self.describe()}: other writers' commits kept conflicting with {what} ({COMMIT_ATTEMPTS} attempts, "
            f"last delta-rs: {said}); nothing was committed, run again"
        )

    def _actions(
        self, planned: DeltaTable, current: DeltaTable, replacements: Sequence[Replacement], operation: TableOperation
    ) -> tuple[list[AddAction | RemoveAction], list[str]]:
        """The add and remove actions of the replacements at `current`, once each old file is found live there
        and each new file on storage (else a ConcurrentUpdateError naming the file)."""
        columns = list(current.metadata().partition_columns)
        live = {self._rel(row["path"]): row for row in self._adds(current)}
        gone = [r.old for r in replacements if r.old not in live]
        if gone:
            raise ConcurrentUpdateError(
                f"{self.describe()}: {self.store.display(gone[0])} was removed from the Delta table by another "
                f"writer while fieldcrypt {operation.operation} ran (version {planned.version()} -> "
                f"{current.version()}); nothing was committed, run again"
            )
        lost = [r.new for r in replacements if not self.store.exists(r.new)]
        if lost:  # a VACUUM with a retention shorter than this run deleted a file not in the log yet
            raise ConcurrentUpdateError(
                f"{self.describe()}: {self.store.display(lost[0])}, written and verified by this run, is gone before "
                "its commit (a VACUUM / purge-history with a shorter retention than this run?); nothing was "
                "committed, run again"
            )
        now = int(time.time() * 1000)
        actions: list[AddAction | RemoveAction] = []
        for item in replacements:
            old = live[item.old]
            values = {c: _raw(old.get(f"partition.{c}")) for c in columns}
            actions.append(
                AddAction(
                    self._table_path(item.new),
                    item.size,
                    values,
                    item.modification_ms,
                    True,
                    _stats(old, item, current),
                )
            )
            actions.append(RemoveAction(self._table_path(item.old), True, now, int(old["size_bytes"]), values))
        return actions, columns

    def _table_path(self, rel: str) -> str:
        return quote(rel[len(self.location) + 1 :], safe="/=")

    # -- history ------------------------------------------------------------------------------

    def operations(self) -> list[Mapping[str, str]]:
        """The `fieldcrypt` members of the log's commitInfo, newest first (delta-rs `history()`)."""
        entries = sorted(self._load().history(), key=lambda e: -int(e.get("version", -1)))
        ours = [e[METADATA_KEY] for e in entries if isinstance(e.get(METADATA_KEY), dict)]
        return [{str(k): str(v) for k, v in metadata.items()} for metadata in ours]

    def history(self, attributes: Sequence[str]) -> History:
        table = self._load()
        entries = table.history()
        ours = [
            e
            for e in entries
            if isinstance(e.get(METADATA_KEY), dict) and e[METADATA_KEY].get("fieldcrypt.operation") in LEAVES_PLAINTEXT
        ]
        protected = sorted(
            {
                name
                for e in ours
                for name in str(e[METADATA_KEY].get("fieldcrypt.attributes", "")).split(",")
                if name and name in attributes
            }
        )
        if not protected:
            return History(0, 0, ())
        newest = max(int(e["version"]) for e in ours)
        older = sum(1 for e in entries if int(e.get("version", -1)) < newest)
        unreferenced = table.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False, full=True)
        erased = any(e[METADATA_KEY].get("fieldcrypt.operation") == ERASE for e in ours)
        return History(older, len(unreferenced), tuple(protected), erased)

    def purge_history(self, older_than_hours: float) -> Purge:
        """VACUUM (full: every file no version within the retention references) with the operator's retention,
        delta-rs's retention check disabled (the operator chose it), then a checkpoint and log cleanup with
        `delta.logRetentionDuration` set to the same retention for the cleanup and restored after."""
        hours = max(0, math.floor(older_than_hours))
        table = self._load()
        deleted = table.vacuum(retention_hours=hours, dry_run=False, enforce_retention_duration=False, full=True)
        table = self._load()
        previous = table.metadata().configuration.get(LOG_RETENTION)
        table.alter.set_table_properties({LOG_RETENTION: f"interval {hours} hours"})
        table = self._load()
        table.create_checkpoint()
        log_before = self._log_files()
        table.cleanup_metadata()
        log_deleted = len(log_before - self._log_files())
        if previous is not None:
            self._load().alter.set_table_properties({LOG_RETENTION: previous})
        else:
            self._load().alter.set_table_properties({LOG_RETENTION: "interval 30 days"})
        return Purge(len(deleted), log_deleted, hours)

    def _log_files(self) -> set[str]:
        return set(self.store.list_files(f"{self.location}/_delta_log"))


def table_uri(store: LakeStore, location: str) -> str:
    """The URI delta-rs opens for the table at `location` (relative to the lake)."""
    location = location.strip("/")
    return store.full_path(location) if store.is_local else f"{store.uri.rstrip('/')}/{location}"


def storage_options(store: LakeStore) -> dict[str, str]:
    """delta-rs's storage options for the lake's S3 settings (none for a local lake).

    The endpoint and region are the workspace's (`s3_endpoint_url`, `region`), the ones the lake's own
    clients use; credentials are never passed: delta-rs reads them from the environment (AWS_ACCESS_KEY_ID,
    AWS_SESSION_TOKEN, a web identity, ...). An `http://` endpoint (a loopback test server, an S3-compatible
    store on a private network) needs AWS_ALLOW_HTTP. A commit is the PUT of the next log entry with
    `If-None-Match: *` (`conditional_put: etag`), so of two writers committing the same version one is
    refused by S3 and retried by delta-rs's conflict checker: no locking provider is needed, and the unsafe
    rename (AWS_S3_ALLOW_UNSAFE_RENAME, where the later writer silently overwrites the earlier commit) is
    never used.
    """
    if store.is_local:
        return {}
    options = {CONDITIONAL_PUT: "etag"}
    if store.s3_region:
        options["AWS_REGION"] = store.s3_region
    endpoint = store.s3_endpoint_url
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.lower().startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    return options


def _table(snapshot: TableSnapshot) -> DeltaTable:
    if not isinstance(snapshot, DeltaSnapshot):
        raise TypeError(f"a Delta table is committed from its own snapshot, not {type(snapshot).__name__}")
    return snapshot.table


def _raw(value: object) -> str | None:
    """A partition value as the Delta log writes it (a string, or null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _plain_type(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _stats(old: Mapping[str, Any], item: Replacement, table: DeltaTable) -> str:
    """The new file's statistics: its row count, and min/max/null count of the untouched columns of simple
    types that the old file's statistics held (never a changed column's, never a `__fc_*` column's)."""
    stats: dict[str, Any] = {"numRecords": item.rows}
    schema = pa.schema(table.schema().to_arrow())
    for part in ("min", "max", "null_count"):
        values = {}
        for field in schema:
            name = field.name
            if name in item.changed_columns or is_protection_column(name):
                continue
            if part != "null_count" and not any(test(field.type) for test in _SIMPLE_STATS):
                continue
            value = old.get(f"{part}.{name}")
            if value is not None and not (isinstance(value, float) and not math.isfinite(value)):
                values[name] = value
        if values:
            stats[{"min": "minValues", "max": "maxValues", "null_count": "nullCount"}[part]] = values
    return json.dumps(stats, separators=(",", ":"))


def _first_line(exc: DeltaError) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
