"""An Iceberg table through fieldcrypt.lake.iceberg_table, against a real pyiceberg SQL catalog (SQLite) with a
local file warehouse: partitions, refusals, schema evolution and metrics, one overwrite snapshot per batch of
replaced files, concurrent commits, the history holding plaintext and its purge.

The replacement files are written by fieldcrypt's own Parquet writer (`protected_writer`) with the schema
annotated by `with_field_ids`, as the engine writes them; the cells are stand-ins (random bytes for
ciphertext, the mask for the plaintext), the encryption itself is tested elsewhere.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyiceberg.io import FileIO
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat, ManifestEntry, ManifestFile
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadataUtil
from pyiceberg.table.update.snapshot import ExpireSnapshots
from pyiceberg.transforms import DayTransform, HourTransform, IdentityTransform, MonthTransform
from pyiceberg.types import DateType, DoubleType, LongType, NestedField, StringType, TimestampType

from fieldcrypt.engine.table_commit import NEW_FILE_PREFIX
from fieldcrypt.errors import ConcurrentUpdateError, ConfigError, InputError
from fieldcrypt.lake.parquet_io import protected_writer
from fieldcrypt.lake.tables.iceberg_manifests import MANIFESTS, ManifestCache
from fieldcrypt.lake.tables.iceberg_table import (
    FIELDCRYPT_FILE_PREFIX,
    OPERATION_PROPERTY,
    IcebergCatalogConfig,
    IcebergTable,
    Replacement,
    check_field_ids,
    load_table,
    with_field_ids,
)
from tests.plaintext_scan import scan

DAYS = [dt.date(2026, 11, 20) + dt.timedelta(days=d) for d in range(5)]
PROTECTION_COLUMNS = ["email__fc_ct", "email__fc_dek"]
MASK = "****@example.org"
SCHEMA = Schema(
    NestedField(1, "user_id", LongType(), required=False),
    NestedField(2, "email", StringType(), required=False),
    NestedField(3, "phone", StringType(), required=False),
    NestedField(4, "event_date", DateType(), required=False),
    NestedField(5, "amount", DoubleType(), required=False),
)
BY_DAY = PartitionSpec(PartitionField(source_id=4, field_id=1000, transform=DayTransform(), name="event_date_day"))


@dataclass(frozen=True)
class Email:
    """The protected attribute, as fieldcrypt's writer sees it (fieldcrypt.format.file_metadata.ProtectedColumns)."""

    name: str = "email"
    mask: str = "email"
    ciphertext_column: str = "email__fc_ct"
    wrapped_key_column: str = "email__fc_dek"
    blind_index_column: str | None = None


def local_path(location: str) -> str:
    return location.removeprefix("file://")


def new_file_path(old: DataFile) -> str:
    """A replacement's name beside the old file, as the engine names it (fieldcrypt.engine.table_commit)."""
    return f"{old.file_path.rpartition('/')[0]}/{FIELDCRYPT_FILE_PREFIX}{uuid.uuid4()}.parquet"


def rows(start: int, count: int) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "email": [f"user{i:04d}.secret@example.org" for i in ids],
            "phone": [f"+1-555-{i:04d}" for i in ids],
            "event_date": [DAYS[i % len(DAYS)] for i in ids],
            "amount": [i * 1.5 for i in ids],
        }
    )


def emails(table: pa.Table) -> list[str]:
    return [e for e in table.column("email").to_pylist() if e is not None and e != MASK]


def bound_prefixes(values: list[str]) -> list[str]:
    """The values and their 16-character prefixes: Iceberg's default metrics (`truncate(16)`) keep those."""
    return values + [v[:16] for v in values]


@pytest.fixture
def catalog(tmp_path: Path) -> IcebergCatalogConfig:
    (tmp_path / "warehouse").mkdir()
    config = IcebergCatalogConfig(
        "fieldcrypt_test",
        {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/warehouse"},
    )
    config.load().create_namespace("shop")
    return config


@pytest.fixture
def users(catalog: IcebergCatalogConfig) -> IcebergTable:
    """300 rows over five days, landed by two appends (two files per day)."""
    table = catalog.load().create_table("shop.users", schema=SCHEMA, partition_spec=BY_DAY)
    table.append(rows(0, 200))
    table.append(rows(200, 100))
    return IcebergTable(load_table(catalog, "shop.users"), "users")


def protect_file(users: IcebergTable, old: DataFile) -> Replacement:
    """What the engine does for one file: the old file's rows, the email masked, the protection columns
    filled, written by fieldcrypt's writer beside the old file with every column's field id."""
    path = new_file_path(old)
    with open(local_path(old.file_path), "rb") as handle:
        source = pq.ParquetFile(handle)
        data = source.read()
        count = data.num_rows
        data = data.set_column(data.schema.get_field_index("email"), "email", pa.array([MASK] * count))
        data = data.append_column("email__fc_ct", pa.array([os.urandom(40) for _ in range(count)], pa.binary()))
        data = data.append_column("email__fc_dek", pa.array([b"wrapped-key"] * count, pa.binary()))
        schema = with_field_ids(data.schema, users.table.schema(), path)
        with open(local_path(path), "wb") as sink, protected_writer(sink, schema, source, [Email()], path) as writer:
            for batch in data.cast(schema).to_batches():
                writer.write_batch(batch)
    return Replacement(old, path)


def protect_partitions(users: IcebergTable, partitions: list[str]) -> None:
    replacements = [protect_file(users, f) for p in partitions for f in users.data_files(p)]
    users.commit_replacements(replacements, "protect")


def untouched(table: pa.Table) -> pa.Table:
    return table.select(["user_id", "phone", "event_date", "amount"]).sort_by("user_id")


# -- partitions and files -------------------------------------------------------------------------------


def test_partitions_are_the_tables_own_day_values(users: IcebergTable) -> None:
    assert users.partitions() == [f"event_date_day={day.isoformat()}" for day in DAYS]
    assert len(users.data_files("event_date_day=2026-11-22")) == 2
    assert users.data_files("event_date_day=2026-12-01") == []


def test_identity_month_and_hour_partitions_render_as_key_value_paths(catalog: IcebergCatalogConfig) -> None:
    schema = Schema(
        NestedField(1, "region", StringType(), required=False), NestedField(2, "at", TimestampType(), required=False)
    )
    data = pa.table(
        {
            "region": ["eu", "us", None],
            "at": [dt.datetime(2026, 11, 3, 13, 5), dt.datetime(2026, 12, 1, 0, 1), dt.datetime(2026, 12, 1, 0, 2)],
        }
    )
    by_month = PartitionSpec(
        PartitionField(1, 1000, IdentityTransform(), "region"), PartitionField(2, 1001, MonthTransform(), "at_month")
    )
    by_hour = PartitionSpec(PartitionField(2, 1000, HourTransform(), "at_hour"))
    for name, spec in (("monthly", by_month), ("hourly", by_hour)):
        catalog.load().create_table(f"shop.{name}", schema=schema, partition_spec=spec).append(data)
    assert IcebergTable(load_table(catalog, "shop.monthly"), "m").partitions() == [
        "region=__HIVE_DEFAULT_PARTITION__/at_month=2026-12",
        "region=eu/at_month=2026-11",
        "region=us/at_month=2026-12",
    ]
    assert IcebergTable(load_table(catalog, "shop.hourly"), "h").partitions() == [
        "at_hour=2026-11-03-13",
        "at_hour=2026-12-01-00",
    ]


def test_unpartitioned_table_has_no_partitions_and_lists_every_file(catalog: IcebergCatalogConfig) -> None:
    table = catalog.load().create_table("shop.flat", schema=SCHEMA)
    table.append(rows(0, 50))
    table.append(rows(50, 50))
    flat = IcebergTable(load_table(catalog, "shop.flat"), "flat")
    assert flat.partitions() is None
    assert len(flat.data_files(None)) == 2


def test_partition_must_be_named_on_a_partitioned_table(users: IcebergTable) -> None:
    with pytest.raises(InputError, match="is partitioned; name a partition"):
        users.data_files(None)


# -- catalog configuration ------------------------------------------------------------------------------


def test_secret_in_the_catalog_file_is_refused_naming_its_environment_variable() -> None:
    with pytest.raises(ConfigError, match="PYICEBERG_CATALOG__PROD__TOKEN"):
        IcebergCatalogConfig("prod", {"type": "rest", "uri": "https://catalog.example", "token": "x"})


def test_unknown_catalog_type_is_refused() -> None:
    with pytest.raises(ConfigError, match="type is 'hive'"):
        IcebergCatalogConfig("prod", {"type": "hive", "uri": "thrift://x"})


def test_missing_table_is_named(catalog: IcebergCatalogConfig) -> None:
    with pytest.raises(InputError, match="shop.nothing does not exist in catalog fieldcrypt_test"):
        load_table(catalog, "shop.nothing")


# -- refusals -------------------------------------------------------------------------------------------


def commit_position_delete(users: IcebergTable, target: DataFile) -> None:
    """A positional delete file of `target`'s first row, committed by another writer. pyiceberg 0.12 cannot write
    merge-on-read deletes (it falls back to copy-on-write); the file is written here and committed through
    pyiceberg's fast append, as Spark would commit it."""
    deletes = pa.table({"file_path": [target.file_path], "pos": pa.array([0], pa.int64())})
    path = f"{target.file_path.rpartition('/')[0]}/deletes-0.parquet"
    pq.write_table(deletes, local_path(path))
    delete_file = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=path,
        file_format=FileFormat.PARQUET,
        partition=target.partition,
        record_count=1,
        file_size_in_bytes=os.path.getsize(local_path(path)),
        spec_id=target.spec_id,
    )
    other_writer = IcebergTable(users.table.catalog.load_table(users.table.name()), "users")
    with other_writer.table.transaction() as tx, tx.update_snapshot().fast_append() as append:
        append.append_data_file(delete_file)


def test_merge_on_read_delete_file_is_refused_by_name(users: IcebergTable) -> None:
    commit_position_delete(users, users.data_files("event_date_day=2026-11-20")[0])
    users.table.refresh()
    with pytest.raises(InputError, match=r"merge-on-read delete files \(1 positional, 0 equality\)"):
        users.partitions()


def test_format_version_3_is_refused_by_name(users: IcebergTable) -> None:
    # pyiceberg 0.12 reads format version 3 but cannot write its metadata: the table's metadata as a v3 writer
    # (Spark 4, say) leaves it, loaded through pyiceberg's own parser.
    document = json.loads(users.table.metadata.model_dump_json()) | {"format-version": 3, "next-row-id": 0}
    metadata = TableMetadataUtil.parse_obj(document)
    table = Table(users.table.name(), metadata, users.table.metadata_location, users.table.io, users.table.catalog)
    with pytest.raises(InputError, match="format version 3"):
        IcebergTable(table, "v3").partitions()


def test_table_partitioned_by_a_protected_attribute_is_refused(catalog: IcebergCatalogConfig) -> None:
    spec = PartitionSpec(PartitionField(2, 1000, IdentityTransform(), "email"))
    table = catalog.load().create_table("shop.by_email", schema=SCHEMA, partition_spec=spec)
    with pytest.raises(InputError, match="partitioned by email"):
        IcebergTable(table, "by_email").prepare_protection(PROTECTION_COLUMNS, ["email"])


# -- preparing protection -------------------------------------------------------------------------------


def test_new_file_prefix_is_the_engines() -> None:
    assert FIELDCRYPT_FILE_PREFIX == NEW_FILE_PREFIX


def test_prepare_adds_binary_columns_with_new_field_ids_and_metrics_that_keep_no_value(users: IcebergTable) -> None:
    assert users.prepare_protection(PROTECTION_COLUMNS, ["email"]) is True
    schema = users.table.schema()
    assert [(f.field_id, f.name, str(f.field_type)) for f in schema.fields[5:]] == [
        (6, "email__fc_ct", "binary"),
        (7, "email__fc_dek", "binary"),
    ]
    properties = users.table.properties
    assert properties["write.metadata.metrics.column.email__fc_ct"] == "none"
    assert properties["write.metadata.metrics.column.email__fc_dek"] == "none"
    assert properties["write.metadata.metrics.column.email"] == "none"
    assert users.prepare_protection(PROTECTION_COLUMNS, ["email"]) is False  # already so: no commit


def test_two_processes_preparing_at_once_add_the_columns_once(
    users: IcebergTable, catalog: IcebergCatalogConfig
) -> None:
    other = IcebergTable(load_table(catalog, "shop.users"), "users")  # read before the first prepare commits
    assert users.prepare_protection(PROTECTION_COLUMNS, ["email"]) is True
    assert other.prepare_protection(PROTECTION_COLUMNS, ["email"]) is False  # its commit failed, read again
    assert [f.name for f in other.table.schema().fields][5:] == PROTECTION_COLUMNS


def test_append_after_prepare_records_no_email_bounds(users: IcebergTable) -> None:
    users.prepare_protection(PROTECTION_COLUMNS, ["email"])
    users.table.append(
        rows(300, 20)
        .append_column("email__fc_ct", pa.nulls(20, pa.binary()))
        .append_column("email__fc_dek", pa.nulls(20, pa.binary()))
    )
    appended = [f for f in users.live_files() if f.record_count == 4]
    assert appended and all(2 not in {**(f.lower_bounds or {}), **(f.null_value_counts or {})} for f in appended)


# -- field ids ------------------------------------------------------------------------------------------


def test_fieldcrypts_writer_writes_every_columns_field_id(users: IcebergTable) -> None:
    users.prepare_protection(PROTECTION_COLUMNS, ["email"])
    replacement = protect_file(users, users.data_files("event_date_day=2026-11-20")[0])
    written = pq.read_schema(local_path(replacement.new_path))
    assert {f.name: f.metadata[b"PARQUET:field_id"] for f in written} == {
        "user_id": b"1",
        "email": b"2",
        "phone": b"3",
        "event_date": b"4",
        "amount": b"5",
        "email__fc_ct": b"6",
        "email__fc_dek": b"7",
    }
    check_field_ids(written, users.table.schema(), replacement.new_path)  # no error


def test_file_without_field_ids_is_refused_by_name(users: IcebergTable) -> None:
    users.prepare_protection(PROTECTION_COLUMNS, ["email"])
    old = users.data_files("event_date_day=2026-11-20")[0]
    path = new_file_path(old)
    pq.write_table(
        pq.read_table(local_path(old.file_path))
        .replace_schema_metadata(None)
        .cast(pa.schema([pa.field(f.name, f.type) for f in pq.read_schema(local_path(old.file_path))])),
        local_path(path),
    )
    with pytest.raises(InputError, match="column user_id has no Parquet field id"):
        users.commit_replacements([Replacement(old, path)], "protect")


def test_field_id_of_another_column_is_refused_by_name(users: IcebergTable) -> None:
    wrong = pa.schema([pa.field("email", pa.string(), metadata={b"PARQUET:field_id": b"3"})])
    with pytest.raises(InputError, match="column email carries field id 3, which is phone"):
        check_field_ids(wrong, users.table.schema(), "new.parquet")


# -- committing replacements ----------------------------------------------------------------------------


def test_replacements_commit_as_one_overwrite_snapshot_naming_fieldcrypts_operation(users: IcebergTable) -> None:
    before = users.table.scan().to_arrow()
    users.prepare_protection(PROTECTION_COLUMNS, ["email"])
    snapshots = len(users.table.snapshots())
    protect_partitions(users, ["event_date_day=2026-11-20", "event_date_day=2026-11-21"])
    table = users.table.refresh()
    assert len(table.snapshots()) == snapshots + 1
    summary = table.current_snapshot().summary
    assert summary.operation.value == "overwrite"
    assert summary[OPERATION_PROPERTY] == "protect"
    assert (summary["deleted-data-files"], summary["added-data-files"]) == ("4", "4")
    after = table.scan().to_arrow()
    assert untouched(after).equals(untouched(before))
    protected = after.filter(pc.is_in(after["event_date"], pa.array(DAYS[:2])))
    assert set(protected["email"].to_pylist()) == {MASK}
    assert protected["email__fc_ct"].null_count == 0
    assert len(emails(after)) == 300 - protected.num_rows  # the other days are untouched


def test_new_files_metrics_hold_no_protected_value(users: IcebergTable) -> None:
    users.prepare_protection(PROTECTION_COLUMNS, ["email"])
    protect_partitions(users, ["event_date_day=2026-11-20"])
    new = [f for f in users.data_files("event_date_day=2026-11-20")]
    assert new and all("/part-fc-" in f.file_path for f in new)
    for data_file in new:
        assert not {2, 6, 7} & (set(data_file.lower_bounds or {}) | set(data_file.upper_bounds or {}))
        assert not {2, 6, 7} & set(data_file.value_counts or {})  # `none`: not even counts
        assert {1, 3, 4, 5} <= set(data_file.lower_bounds or {})  # the untouched columns keep theirs


def test_append_committed_between_plan_and_commit_is_kept(
    users: IcebergTable,
    catalog: IcebergCatalogConfig,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    users.prepare_protection(PROTECTION_COLUMNS, ["email"])
    replacements = [protect_file(users, f) for f in users.data_files("event_date_day=2026-11-20")]
    other_writer = load_table(catalog, "shop.users")  # another process's view of the same table
    appended: list[int] = []
    original = IcebergTable._check_writable

    def append_once(self: IcebergTable, entries: object) -> None:
        # The one moment a test cannot reach otherwise: after the commit read the table's head, before it
        # commits. The append itself is a real pyiceberg commit through the same SQL catalog.
        original(self, entries)  # type: ignore[arg-type]
        if not appended:
            other_writer.append(
                rows(300, 10)
                .append_column("email__fc_ct", pa.nulls(10, pa.binary()))
                .append_column("email__fc_dek", pa.nulls(10, pa.binary()))
            )
            appended.append(other_writer.refresh().current_snapshot().snapshot_id)

    monkeypatch.setattr(IcebergTable, "_check_writable", append_once)
    with caplog.at_level(logging.WARNING, logger="pyiceberg"):
        snapshot = users.commit_replacements(replacements, "protect")
    # The catalog refused the first commit, pyiceberg's retry refused it again (serializable: files were added),
    # and the batch was planned again on the new head.
    assert any("concurrent update" in record.getMessage() for record in caplog.records)
    assert snapshot.parent_snapshot_id == appended[0]
    after = users.table.refresh().scan().to_arrow()
    assert after.num_rows == 310
    assert sorted(after["user_id"].to_pylist()) == list(range(310))
    assert users.table.current_snapshot().summary[OPERATION_PROPERTY] == "protect"


def test_file_replaced_by_another_writer_refuses_the_whole_batch(
    users: IcebergTable, catalog: IcebergCatalogConfig
) -> None:
    users.prepare_protection(PROTECTION_COLUMNS, ["email"])
    replacements = [protect_file(users, f) for f in users.data_files("event_date_day=2026-11-20")]
    other_writer = load_table(catalog, "shop.users")
    other_writer.delete("user_id = 0")  # copy-on-write: one of the planned files is replaced
    snapshot = other_writer.refresh().current_snapshot()
    with pytest.raises(ConcurrentUpdateError, match="is no longer in iceberg table shop.users"):
        users.commit_replacements(replacements, "protect")
    assert users.table.refresh().current_snapshot().snapshot_id == snapshot.snapshot_id


# -- manifests decoded once ----------------------------------------------------------------------------


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The manifests pyiceberg decodes from here on, by path (a spy around its real reader; nothing replaced),
    the process's manifest cache emptied first."""
    MANIFESTS.clear()
    paths: list[str] = []
    original = ManifestFile.fetch_manifest_entry

    def spy(self: ManifestFile, io: FileIO, discard_deleted: bool = True) -> list[ManifestEntry]:
        paths.append(self.manifest_path)
        return original(self, io, discard_deleted)

    monkeypatch.setattr(ManifestFile, "fetch_manifest_entry", spy)
    return paths


def test_reads_of_one_head_decode_each_manifest_once(
    users: IcebergTable, catalog: IcebergCatalogConfig, decoded: list[str]
) -> None:
    manifests = [m.manifest_path for m in users.table.current_snapshot().manifests(users.table.io)]
    assert len(manifests) == 2  # the fixture's two appends
    files = users.live_files()
    users.check_writable()
    users.partitions()
    users.data_files("event_date_day=2026-11-21")
    again = IcebergTable(load_table(catalog, "shop.users"), "users")  # another open of the same head
    assert [f.file_path for f in again.live_files()] == [f.file_path for f in files]
    assert sorted(decoded) == sorted(manifests)


def test_a_new_head_is_read_for_its_new_manifests_and_checked_again(users: IcebergTable, decoded: list[str]) -> None:
    io = users.table.io
    read = {m.manifest_path for m in users.table.current_snapshot().manifests(io)}
    target = users.data_files("event_date_day=2026-11-20")[0]  # the cache holds the head's manifests
    before = len(decoded)
    commit_position_delete(users, target)  # another writer's fast append: one new manifest
    users.table.refresh()
    with pytest.raises(InputError, match=r"merge-on-read delete files \(1 positional, 0 equality\)"):
        users.check_writable()
    new = {m.manifest_path for m in users.table.current_snapshot().manifests(io)} - read
    assert len(new) == 1
    assert decoded[before:] == sorted(new)


def test_commit_plans_on_the_head_it_reads_not_on_the_cache(users: IcebergTable, catalog: IcebergCatalogConfig) -> None:
    users.prepare_protection(PROTECTION_COLUMNS, ["email"])
    replacements = [protect_file(users, f) for f in users.data_files("event_date_day=2026-11-20")]
    commit_position_delete(users, users.data_files("event_date_day=2026-11-22")[0])  # after the plan was read
    with pytest.raises(InputError, match="merge-on-read delete files"):
        users.commit_replacements(replacements, "protect")
    assert users.table.refresh().current_snapshot().summary.operation.value == "append"


def test_manifest_cache_is_bounded(users: IcebergTable) -> None:
    snapshot = users.table.current_snapshot()
    manifests = list(snapshot.manifests(users.table.io))
    per_manifest = [len(m.fetch_manifest_entry(users.table.io)) for m in manifests]
    assert per_manifest == [5, 5]  # one file per day in each append
    small = ManifestCache(max_entries=7, max_snapshots=1)
    entries = small.live_entries(snapshot, users.table.io)
    assert len(entries) == 10  # every entry is returned, whatever is kept
    assert manifests[-1].manifest_path in small and manifests[0].manifest_path not in small  # least recent dropped
    parent = users.table.metadata.snapshot_by_id(snapshot.parent_snapshot_id)
    assert len(small.live_entries(parent, users.table.io)) == 5
    assert parent.manifest_list in small and snapshot.manifest_list not in small
    tiny = ManifestCache(max_entries=4)
    assert len(tiny.live_entries(snapshot, users.table.io)) == 10
    assert len(tiny) == 0  # a manifest larger than the bound is read, not kept
    assert tiny.reads == 2


# -- history --------------------------------------------------------------------------------------------


def test_history_holds_plaintext_until_purged(users: IcebergTable) -> None:
    users.prepare_protection(PROTECTION_COLUMNS, ["email"])
    assert not users.plaintext_history(["email"]).holds_plaintext
    protect_partitions(users, users.partitions() or [])
    history = users.plaintext_history(["email"])
    # The two appends' snapshots list the ten replaced files (a schema change makes no snapshot); the overwrite's
    # own manifest keeps their DELETED entries with the email bounds their writer recorded.
    assert (history.snapshots, history.data_files, history.current_manifests) == (2, 10, 1)


def test_purge_history_leaves_no_protected_plaintext_under_the_table(users: IcebergTable) -> None:
    before = users.table.scan().to_arrow()
    plaintexts = bound_prefixes(emails(before))
    location = Path(local_path(users.table.location()))
    users.prepare_protection(PROTECTION_COLUMNS, ["email"])
    protect_partitions(users, users.partitions() or [])
    hits = scan(location, plaintexts)
    assert {h.what.split(" ")[0] for h in hits if h.file.endswith(".avro")} == {"avro"}  # old manifests' bounds
    assert any(h.file.endswith(".parquet") for h in hits)  # the replaced files

    manifests = {m.manifest_path for s in users.table.snapshots() for m in s.manifests(users.table.io)}
    held = {p for p in manifests if p in MANIFESTS}  # read by the protection's snapshots and plans
    report = users.purge_history(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    assert report.compacted_snapshot is not None
    assert len(report.data_files) == 10 and report.manifests and report.manifest_lists
    assert scan(location, plaintexts) == []
    assert not users.plaintext_history(["email"]).holds_plaintext
    table = users.table.refresh()
    assert [s.snapshot_id for s in table.snapshots()] == [report.compacted_snapshot]
    assert untouched(table.scan().to_arrow()).equals(untouched(before))
    for path in report.data_files + report.manifests + report.manifest_lists + report.metadata_files:
        assert not os.path.exists(local_path(path))
    assert held & set(report.manifests)
    assert not any(path in MANIFESTS for path in report.manifests + report.manifest_lists)  # forgotten when deleted


def test_purge_killed_before_its_expire_commit_is_finished_by_the_next(
    users: IcebergTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = users.table.scan().to_arrow()
    plaintexts = bound_prefixes(emails(before))
    location = Path(local_path(users.table.location()))
    users.prepare_protection(PROTECTION_COLUMNS, ["email"])
    protect_partitions(users, users.partitions() or [])

    def killed(self: ExpireSnapshots) -> None:  # a process killed right before its commit (no server does that)
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(ExpireSnapshots, "commit", killed)
        with pytest.raises(KeyboardInterrupt):
            users.purge_history(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    # The two appends, the overwrite and the purge's own metadata-only snapshot: nothing expired, but the files
    # only the old ones named are gone already.
    assert len(users.table.refresh().snapshots()) == 4
    assert scan(location, plaintexts) == []
    assert not users.plaintext_history(["email"]).holds_plaintext
    assert untouched(users.table.scan().to_arrow()).equals(untouched(before))

    report = users.purge_history(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    assert len(report.expired_snapshots) == 3
    assert len(users.table.refresh().snapshots()) == 1
    assert untouched(users.table.scan().to_arrow()).equals(untouched(before))


def test_purge_history_keeps_what_a_tag_pins(users: IcebergTable) -> None:
    first = users.table.snapshots()[0].snapshot_id
    users.table.manage_snapshots().create_tag(first, "audit-2026").commit()
    users.prepare_protection(PROTECTION_COLUMNS, ["email"])
    protect_partitions(users, users.partitions() or [])
    report = users.purge_history(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    assert report.kept_by_refs == ["audit-2026"]
    assert first not in report.expired_snapshots
    pinned = users.table.refresh().snapshot_by_id(first)
    assert pinned is not None
    assert all(os.path.exists(local_path(t.file.file_path)) for t in users.table.scan(snapshot_id=first).plan_files())
    assert users.plaintext_history(["email"]).snapshots == 1


def test_purge_with_nothing_old_expires_nothing(users: IcebergTable) -> None:
    report = users.purge_history(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    assert report.expired_snapshots == [] and report.data_files == []
    assert len(users.table.refresh().snapshots()) == 2
