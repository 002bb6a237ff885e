"""Protecting a partition file: enablement boundary, idempotence, structs, nulls, file layout, bad input."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path, write_snapshot
from fieldcrypt import InputError, Workspace
from fieldcrypt.format.cell import CELL_OVERHEAD
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.lake.store import TEMP_MARKER

DAY = date(2026, 11, 1)
PARTITION = DAY.isoformat()
NOON = datetime(2026, 11, 1, 12, tzinfo=UTC)
US = timedelta(microseconds=1)
Enable = Callable[..., Any]


def file_of(workspace: Workspace, dataset: str = "users", partition: str = PARTITION) -> Path:
    return Path(workspace.store.full_path(snapshot_path(dataset, partition)))


def land(workspace: Workspace, table: pa.Table, dataset: str = "users", row_group_size: int = 64_000) -> Path:
    write_snapshot(workspace.store, dataset, DAY, table, row_group_size=row_group_size)
    return file_of(workspace, dataset)


def users(emails: list[str | None], ingested: pa.Array, ids: list[int] | None = None) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(ids if ids is not None else list(range(len(emails))), pa.int64()),
            "email": pa.array(emails, pa.string()),
            "country": pa.array(["FR"] * len(emails)),
            "ingested_at": ingested,
        }
    )


def no_temp_files(path: Path) -> bool:
    return not [p for p in path.parent.iterdir() if TEMP_MARKER in p.name]


# -- enablement boundary ----------------------------------------------------------------------


@pytest.fixture
def boundary(make_local_workspace: Callable[..., Workspace], enable_at: Enable) -> pa.Table:
    """Three users ingested 1 µs before, exactly at and 1 µs after the enablement of users.email."""
    workspace = make_local_workspace()
    times = pa.array([NOON - US, NOON, NOON + US], pa.timestamp("us", tz="UTC"))
    path = land(workspace, users(["before@example.com", "at@example.com", "after@example.com"], times))
    enable_at(workspace, "users.email", "email", NOON)
    workspace.protect("users", PARTITION)
    return pq.read_table(path)


def test_row_ingested_before_enablement_is_left_as_is(boundary: pa.Table) -> None:
    row = boundary.slice(0, 1).to_pylist()[0]
    assert row["email"] == "before@example.com"
    assert row["email__fc_ct"] is None and row["email__fc_dek"] is None


def test_row_ingested_exactly_at_enablement_is_encrypted(boundary: pa.Table) -> None:
    row = boundary.slice(1, 1).to_pylist()[0]
    assert row["email"] == "****@example.com"
    assert row["email__fc_ct"] is not None and row["email__fc_dek"] is not None


def test_row_ingested_after_enablement_is_encrypted(boundary: pa.Table) -> None:
    row = boundary.slice(2, 1).to_pylist()[0]
    assert row["email"] == "****@example.com"
    assert row["email__fc_ct"] is not None


def protected_rows(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable, ingested: pa.Array, enabled_at: datetime
) -> list[bool]:
    workspace = make_local_workspace()
    path = land(workspace, users([f"u{i}@example.com" for i in range(len(ingested))], ingested))
    enable_at(workspace, "users.email", "full", enabled_at)
    workspace.protect("users", PARTITION)
    flags: list[bool] = pq.read_table(path).column("email__fc_ct").is_valid().to_pylist()
    return flags


def test_millisecond_ingestion_time_before_a_sub_millisecond_enablement_is_left_as_is(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    enabled_at = NOON + 500 * US  # 12:00:00.000500
    ingested = pa.array([NOON, NOON + 1000 * US], pa.timestamp("ms", tz="UTC"))  # .000 and .001
    assert protected_rows(make_local_workspace, enable_at, ingested, enabled_at) == [False, True]


def test_millisecond_ingestion_time_exactly_at_enablement_is_encrypted(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    ingested = pa.array([NOON - 1000 * US, NOON, NOON + 1000 * US], pa.timestamp("ms", tz="UTC"))
    assert protected_rows(make_local_workspace, enable_at, ingested, NOON) == [False, True, True]


def test_naive_ingestion_time_is_taken_as_utc(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    naive = NOON.replace(tzinfo=None)
    ingested = pa.array([naive - US, naive, naive + US], pa.timestamp("us"))
    assert protected_rows(make_local_workspace, enable_at, ingested, NOON) == [False, True, True]


def test_ingestion_time_in_another_time_zone_is_compared_as_an_instant(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    ingested = pa.array([NOON - US, NOON, NOON + US], pa.timestamp("us", tz="America/New_York"))
    assert protected_rows(make_local_workspace, enable_at, ingested, NOON) == [False, True, True]


def test_nanosecond_ingestion_time_1_ns_before_enablement_is_left_as_is(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    at_ns = int((NOON - datetime(1970, 1, 1, tzinfo=UTC)) / US) * 1000
    ingested = pa.array([at_ns - 1, at_ns, at_ns + 1], pa.timestamp("ns", tz="UTC"))
    assert protected_rows(make_local_workspace, enable_at, ingested, NOON) == [False, True, True]


def test_file_with_only_historical_rows_gains_the_protection_columns_once_with_values_untouched(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    times = pa.array([NOON - 2 * US, NOON - US], pa.timestamp("us", tz="UTC"))
    path = land(workspace, users(["old@example.com", "older@example.com"], times))
    before = pq.read_table(path)
    enable_at(workspace, "users.email", "email", NOON)
    first = workspace.protect("users", PARTITION)
    after = pq.read_table(path)
    assert first.rewritten and first.newly_encrypted == 0
    assert first.attributes["users.email"].historical_plaintext == 2
    assert after.select(before.column_names).equals(before)  # every stored value as it was
    assert after.column("email__fc_ct").null_count == 2 and after.column("email__fc_dek").null_count == 2
    content = path.read_bytes()
    assert not workspace.protect("users", PARTITION).rewritten
    assert path.read_bytes() == content


# -- idempotence ------------------------------------------------------------------------------


@pytest.fixture
def protected_users(local_workspace: Workspace, enable_at: Enable) -> Workspace:
    enable_at(local_workspace, "users.email", "email")
    enable_at(local_workspace, "users.phone", "last4")
    report = local_workspace.protect("users", PARTITION)
    assert report.rewritten and report.newly_encrypted > 0
    return local_workspace


def test_second_protect_does_not_rewrite_the_file(protected_users: Workspace) -> None:
    path = file_of(protected_users)
    content, mtime = path.read_bytes(), path.stat().st_mtime_ns
    report = protected_users.protect("users", PARTITION)
    assert report.newly_encrypted == 0
    assert not report.rewritten
    assert report.kms_calls == 0
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == mtime


def test_second_protect_reports_what_is_already_protected(protected_users: Workspace) -> None:
    first = pq.read_table(file_of(protected_users))
    report = protected_users.protect("users", PARTITION)
    assert (
        report.attributes["users.email"].already_protected
        == first.column("email__fc_ct").is_valid().combine_chunks().true_count
    )
    assert report.attributes["users.email"].pending == 0


def decoded(table: pa.Table) -> pa.Table:
    """The table with wrapped-key columns as plain binary (a new data key extends the dictionary)."""
    for index, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            column = table.column(index).combine_chunks().dictionary_decode()
            table = table.set_column(index, pa.field(field.name, column.type), column)
    return table


def test_rows_already_protected_are_untouched_when_new_rows_arrive(
    protected_users: Workspace, make_local_workspace: Callable[..., Workspace]
) -> None:
    path = file_of(protected_users)
    old = pq.read_table(path)
    new_rows = {
        "user_id": pa.array([1000, 1001, 1002], pa.int64()),
        "email": pa.array(["new.one@Example.com", None, "new.three@mail.test"]),
        "phone": pa.array(["+33 6 11111111", "+33 6 22222222", None]),
        "name": pa.array(["n1", "n2", "n3"]),
        "country": pa.array(["FR", "DE", "US"]),
        "ingested_at": pa.array([NOON + timedelta(hours=11)] * 3, pa.timestamp("us", tz="UTC")),
    }
    added = pa.table({f.name: new_rows.get(f.name, pa.nulls(3, f.type)) for f in old.schema}, schema=old.schema)
    land(protected_users, pa.concat_tables([old, added]))  # the next snapshot, as upstream lands it

    later_run = make_local_workspace(protected_users.config.lake_uri)  # a new process: new data keys
    report = later_run.protect("users", PARTITION)
    after = pq.read_table(path)
    assert report.attributes["users.email"].newly_encrypted == 2
    assert report.attributes["users.phone"].newly_encrypted == 2
    assert report.attributes["users.email"].already_protected == old.num_rows - old.column("email__fc_ct").null_count
    # every earlier row keeps its mask, ciphertext and wrapped key byte for byte
    assert decoded(after.slice(0, old.num_rows)).equals(decoded(old))
    tail = after.slice(old.num_rows).to_pylist()
    assert [r["email"] for r in tail] == ["****@example.com", None, "****@mail.test"]
    assert [r["email__fc_ct"] is not None for r in tail] == [True, False, True]
    assert [r["phone"] for r in tail] == ["****1111", "****2222", None]
    assert len(after.column("email__fc_dek").combine_chunks().dictionary) == 2  # old data key and the new one
    revealed = pa.Table.from_batches(list(later_run.reveal("users", PARTITION, ["email"])))
    assert revealed.column("users.email").to_pylist()[old.num_rows :] == [
        "new.one@Example.com",
        None,
        "new.three@mail.test",
    ]


# -- structs and nulls ------------------------------------------------------------------------


@pytest.fixture
def protected_events(local_workspace: Workspace, enable_at: Enable) -> tuple[pa.Table, pa.Table]:
    path = file_of(local_workspace, "events")
    before = pq.read_table(path)
    enable_at(local_workspace, "events.properties.email", "email")
    local_workspace.protect("events", PARTITION)
    return before, pq.read_table(path)


def test_struct_field_is_encrypted_and_masked(protected_events: tuple[pa.Table, pa.Table]) -> None:
    before, after = protected_events
    encrypted = after.column("properties__email__fc_ct").is_valid()
    assert pc.sum(encrypted).as_py() > 0
    masked = pc.struct_field(after.column("properties"), "email").filter(encrypted).to_pylist()
    original = pc.struct_field(before.column("properties"), "email").filter(encrypted).to_pylist()
    assert masked == ["****@" + value.split("@")[1].lower() for value in original]


def test_struct_siblings_of_a_protected_field_are_untouched(protected_events: tuple[pa.Table, pa.Table]) -> None:
    before, after = protected_events
    for sibling in ("phone", "campaign"):
        assert pc.struct_field(after.column("properties"), sibling).equals(
            pc.struct_field(before.column("properties"), sibling)
        )


def test_null_struct_stays_null(protected_events: tuple[pa.Table, pa.Table]) -> None:
    before, after = protected_events
    null_structs = before.column("properties").is_null()
    assert pc.sum(null_structs).as_py() > 0
    assert after.column("properties").is_null().equals(null_structs)
    assert after.column("properties__email__fc_ct").filter(null_structs).null_count == pc.sum(null_structs).as_py()


def test_null_value_stays_null_and_is_not_encrypted(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    times = pa.array([NOON + US] * 3, pa.timestamp("us", tz="UTC"))
    path = land(workspace, users([None, "x@example.com", None], times))
    enable_at(workspace, "users.email", "email", NOON)
    report = workspace.protect("users", PARTITION)
    table = pq.read_table(path)
    assert table.column("email").to_pylist() == [None, "****@example.com", None]
    assert table.column("email__fc_ct").is_valid().to_pylist() == [False, True, False]
    assert table.column("email__fc_dek").is_valid().to_pylist() == [False, True, False]
    assert report.attributes["users.email"].null_values == 2


def test_empty_string_is_encrypted_like_any_value(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    path = land(workspace, users(["", "x@example.com"], pa.array([NOON] * 2, pa.timestamp("us", tz="UTC"))))
    enable_at(workspace, "users.email", "email", NOON)
    workspace.protect("users", PARTITION)
    table = pq.read_table(path)
    assert table.column("email").to_pylist() == ["****", "****@example.com"]
    assert len(table.column("email__fc_ct")[0].as_py()) == CELL_OVERHEAD


# -- report and file layout -------------------------------------------------------------------


def test_report_counts_rows_newly_encrypted_historical_and_nulls(local_workspace: Workspace, enable_at: Enable) -> None:
    table = pq.read_table(file_of(local_workspace))
    enable_at(local_workspace, "users.email", "email")
    after = pc.greater_equal(table.column("ingested_at"), pa.scalar(NOON, pa.timestamp("us", tz="UTC")))
    valid = table.column("email").is_valid()
    report = local_workspace.protect("users", PARTITION)
    counts = report.attributes["users.email"]
    assert report.rows == table.num_rows == 300
    assert counts.newly_encrypted == pc.sum(pc.and_(after, valid)).as_py()
    assert counts.historical_plaintext == pc.sum(pc.and_(pc.invert(after), valid)).as_py()
    assert counts.null_values == table.column("email").null_count
    assert counts.newly_encrypted > 0 and counts.historical_plaintext > 0
    assert report.master_key == local_workspace.key_cache().master_key.ref


def test_status_counts_pending_rows_without_changing_the_file(local_workspace: Workspace, enable_at: Enable) -> None:
    enable_at(local_workspace, "users.email", "email")
    path = file_of(local_workspace)
    content = path.read_bytes()
    status = local_workspace.status("users", PARTITION)
    assert status.attributes["users.email"].pending > 0
    assert not status.rewritten
    assert path.read_bytes() == content
    report = local_workspace.protect("users", PARTITION)
    assert report.attributes["users.email"].newly_encrypted == status.attributes["users.email"].pending


def test_wrapped_key_column_is_dictionary_encoded_and_names_its_master_key(protected_users: Workspace) -> None:
    parquet = pq.ParquetFile(file_of(protected_users))
    column = parquet.schema_arrow.get_field_index("email__fc_dek")
    chunk = parquet.metadata.row_group(0).column(column)
    assert chunk.has_dictionary_page
    assert "PLAIN" not in chunk.encodings or any("DICTIONARY" in e for e in chunk.encodings)
    dictionary = parquet.read(columns=["email__fc_dek"]).column(0).combine_chunks().dictionary.to_pylist()
    assert len(dictionary) == 1  # one data key for all 132 cells
    wrapped = WrappedKey.from_bytes(dictionary[0])  # readable without any KMS call
    assert wrapped.master_key_ref == protected_users.key_cache().master_key.ref


def test_ciphertext_column_is_not_dictionary_encoded(protected_users: Workspace) -> None:
    parquet = pq.ParquetFile(file_of(protected_users))
    chunk = parquet.metadata.row_group(0).column(parquet.schema_arrow.get_field_index("email__fc_ct"))
    assert not chunk.has_dictionary_page


def test_ciphertext_overhead_is_29_bytes_per_cell(local_workspace: Workspace, enable_at: Enable) -> None:
    original = pq.read_table(file_of(local_workspace))
    enable_at(local_workspace, "users.email", "email")
    local_workspace.protect("users", PARTITION)
    protected = pq.read_table(file_of(local_workspace))
    encrypted = protected.column("email__fc_ct").is_valid()
    plain = pc.binary_length(original.column("email").filter(encrypted))
    cells = pc.binary_length(protected.column("email__fc_ct").filter(encrypted))
    assert pc.all(pc.equal(cells, pc.add(plain, 29))).as_py()


def test_columns_outside_protected_attributes_are_unchanged(local_workspace: Workspace, enable_at: Enable) -> None:
    original = pq.read_table(file_of(local_workspace))
    enable_at(local_workspace, "users.email", "email")
    local_workspace.protect("users", PARTITION)
    protected = pq.read_table(file_of(local_workspace))
    untouched = [n for n in original.column_names if n != "email"]
    assert protected.select(untouched).equals(original.select(untouched))
    assert protected.column_names == [*original.column_names, "email__fc_ct", "email__fc_dek"]


def test_row_groups_are_kept(make_local_workspace: Callable[..., Workspace], enable_at: Enable) -> None:
    workspace = make_local_workspace()
    times = pa.array([NOON + i * US for i in range(250)], pa.timestamp("us", tz="UTC"))
    path = land(workspace, users([f"u{i}@example.com" for i in range(250)], times), row_group_size=100)
    enable_at(workspace, "users.email", "full", NOON)
    report = workspace.protect("users", PARTITION)
    assert report.attributes["users.email"].newly_encrypted == 250
    metadata = pq.ParquetFile(path).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [100, 100, 50]


def test_no_temporary_file_is_left_behind(protected_users: Workspace) -> None:
    assert no_temp_files(file_of(protected_users))
    assert protected_users.store.list_files("users") == ["users/date=2026-11-01/part-0.parquet"]


def test_protected_file_opens_in_polars_with_masks_in_the_original_column(protected_users: Workspace) -> None:
    frame = pl.read_parquet(file_of(protected_users))
    protected = frame.filter(pl.col("email__fc_ct").is_not_null())
    assert protected.height > 0
    assert protected["email"].str.starts_with("****@").all()
    assert frame.schema["email"] == pl.String


def test_large_string_column_is_protected_and_keeps_its_type(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    table = users(["A@Example.com", "b@mail.test"], pa.array([NOON] * 2, pa.timestamp("us", tz="UTC")))
    table = table.set_column(1, pa.field("email", pa.large_string()), table.column("email").cast(pa.large_string()))
    path = land(workspace, table)
    enable_at(workspace, "users.email", "email", NOON)
    workspace.protect("users", PARTITION)
    protected = pq.read_table(path)
    assert protected.schema.field("email").type == pa.large_string()
    assert protected.column("email").to_pylist() == ["****@example.com", "****@mail.test"]
    assert workspace.verify("users", PARTITION) == {"users.email": 2}


# -- bad input: a clear error, the stored file unchanged --------------------------------------


def refused_unchanged(workspace: Workspace, dataset: str, problem: str) -> None:
    path = file_of(workspace, dataset)
    content = path.read_bytes()
    with pytest.raises(InputError, match=problem):
        workspace.protect(dataset, PARTITION)
    assert path.read_bytes() == content
    assert no_temp_files(path)


def test_file_missing_the_protected_column_is_refused_and_left_unchanged(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    enable_at(workspace, "users.email", "email", NOON)
    land(workspace, users(["x@example.com"], pa.array([NOON], pa.timestamp("us", tz="UTC"))).drop_columns(["email"]))
    refused_unchanged(workspace, "users", "part-0.parquet: column 'email' not found")


def test_file_missing_the_ingestion_column_is_refused_and_left_unchanged(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    enable_at(workspace, "users.email", "email", NOON)
    land(
        workspace,
        users(["x@example.com"], pa.array([NOON], pa.timestamp("us", tz="UTC"))).drop_columns(["ingested_at"]),
    )
    refused_unchanged(workspace, "users", "ingestion-time column 'ingested_at' of users not found")


def test_file_where_the_protected_column_is_an_integer_is_refused_and_left_unchanged(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    enable_at(workspace, "users.email", "email", NOON)
    table = users(["x"], pa.array([NOON], pa.timestamp("us", tz="UTC")))
    land(workspace, table.set_column(1, "email", pa.array([42], pa.int64())))
    refused_unchanged(workspace, "users", "users.email is int64; only string columns can be protected")


def test_null_ingestion_time_is_refused_and_the_file_left_unchanged(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    enable_at(workspace, "users.email", "email", NOON)
    land(workspace, users(["x@example.com", "y@example.com"], pa.array([NOON, None], pa.timestamp("us", tz="UTC"))))
    refused_unchanged(workspace, "users", "ingestion-time column has 1 null values")


def test_null_primary_key_on_a_row_to_encrypt_is_refused_and_the_file_left_unchanged(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    enable_at(workspace, "users.email", "email", NOON)
    table = users(["x@example.com", "y@example.com"], pa.array([NOON] * 2, pa.timestamp("us", tz="UTC")))
    land(workspace, table.set_column(0, "user_id", pa.array([1, None], pa.int64())))
    refused_unchanged(workspace, "users", r"row group 0 row 1: primary key \(user_id\) of users is null")


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda data: b"definitely not parquet",
        lambda data: data[: len(data) // 2],
        lambda data: data[:-8] + b"\x00" * 8,
    ],
    ids=["garbage", "truncated", "broken-footer"],
)
def test_corrupt_parquet_file_is_refused_naming_it_and_left_unchanged(
    protected_users: Workspace, corrupt: Callable[[bytes], bytes]
) -> None:
    path = file_of(protected_users)
    path.write_bytes(corrupt(path.read_bytes()))
    refused_unchanged(protected_users, "users", "users/date=2026-11-01/part-0.parquet is not a readable Parquet file")


def test_partition_without_files_is_reported_empty_not_an_error(local_workspace: Workspace, enable_at: Enable) -> None:
    enable_at(local_workspace, "users.email", "email")
    report = local_workspace.protect("users", "2026-12-01")
    assert (report.files, report.rows, report.rewritten) == (0, 0, False)
    assert report.path.endswith("users/date=2026-12-01")


@pytest.mark.parametrize("partition", ["../etc", "2026-13-01", "2026-11-1", "20261101"])
def test_partition_that_is_not_a_date_is_refused(local_workspace: Workspace, partition: str) -> None:
    with pytest.raises(InputError, match=f"partition '{partition}' is not a valid daily partition key"):
        local_workspace.protect("users", partition)
