"""Dispatch decryption: protect -> reveal round trips through real files, and what reveal refuses."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demo.sample_data import snapshot_path, write_snapshot
from fieldcrypt import InputError, Workspace
from fieldcrypt.policy.policy import DatasetSpec
from fieldcrypt.reads.reveal import decrypt_rows

NOON = datetime(2026, 11, 1, 12, tzinfo=UTC)
PARTITION = "2026-11-01"
Enable = Callable[..., Any]
values = st.one_of(
    st.none(),
    st.just(""),
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), min_size=1000, max_size=3000),
    st.emails(),
)
rows = st.lists(st.tuples(values, st.booleans()), min_size=1, max_size=12)  # (value, ingested after enablement)
fresh_days = itertools.count()
function_fixtures = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def next_day() -> date:
    return date(2030, 1, 1) + timedelta(days=next(fresh_days))


def ingested(after: list[bool]) -> pa.Array:
    return pa.array(
        [NOON + timedelta(minutes=i) if a else NOON - timedelta(minutes=1) for i, a in enumerate(after)],
        pa.timestamp("us", tz="UTC"),
    )


def revealed(workspace: Workspace, dataset: str, day: date, attributes: list[str]) -> pa.Table:
    return pa.Table.from_batches(list(workspace.reveal(dataset, day.isoformat(), attributes)))


@pytest.fixture
def users_workspace(make_local_workspace: Callable[..., Workspace], enable_at: Enable) -> Workspace:
    workspace = make_local_workspace()
    enable_at(workspace, "users.email", "email", NOON)
    enable_at(workspace, "users.phone", "last4", NOON)
    return workspace


@function_fixtures
@given(data=rows)
def test_any_text_round_trips_through_protect_and_reveal(
    users_workspace: Workspace, data: list[tuple[str | None, bool]]
) -> None:
    day = next_day()
    texts = [value for value, _ in data]
    table = pa.table(
        {
            "user_id": pa.array(range(len(data)), pa.int64()),
            "email": pa.array(texts, pa.string()),
            "phone": pa.array(list(reversed(texts)), pa.string()),
            "ingested_at": ingested([after for _, after in data]),
        }
    )
    write_snapshot(users_workspace.store, "users", day, table)
    report = users_workspace.protect("users", day.isoformat())
    expected_cells = sum(1 for value, after in data if after and value is not None)
    assert report.attributes["users.email"].newly_encrypted == expected_cells
    stored = pq.read_table(users_workspace.store.full_path(snapshot_path("users", day.isoformat())))
    for (value, after), stored_value in zip(data, stored.column("email").to_pylist(), strict=True):
        if after and value is not None:
            assert stored_value.startswith("****")
        else:
            assert stored_value == value
    result = revealed(users_workspace, "users", day, ["email", "phone"])
    assert result.column("users.email").to_pylist() == texts
    assert result.column("users.phone").to_pylist() == list(reversed(texts))
    assert result.column("user_id").to_pylist() == list(range(len(data)))


@function_fixtures
@given(data=st.lists(st.tuples(st.none() | st.tuples(values, values), st.booleans()), min_size=1, max_size=10))
def test_any_struct_field_round_trips_through_protect_and_reveal(
    make_local_workspace: Callable[..., Workspace],
    enable_at: Enable,
    tmp_path: Path,
    data: list[tuple[tuple[str | None, str | None] | None, bool]],
) -> None:
    day = next_day()
    workspace = make_local_workspace(str(tmp_path / "lake"))
    if "events.properties.email" not in workspace.policy().attributes:
        enable_at(workspace, "events.properties.email", "email", NOON)
    properties = [None if p is None else {"email": p[0], "phone": p[1]} for p, _ in data]
    table = pa.table(
        {
            "event_id": pa.array([f"e{i}" for i in range(len(data))]),
            "properties": pa.array(properties, pa.struct([("email", pa.string()), ("phone", pa.string())])),
            "ingested_at": ingested([after for _, after in data]),
        }
    )
    write_snapshot(workspace.store, "events", day, table)
    workspace.protect("events", day.isoformat())
    stored = pq.read_table(workspace.store.full_path(snapshot_path("events", day.isoformat())))
    assert stored.column("properties").is_null().equals(table.column("properties").is_null())
    assert pc.struct_field(stored.column("properties"), "phone").equals(
        pc.struct_field(table.column("properties"), "phone")
    )
    result = revealed(workspace, "events", day, ["properties.email"])
    assert result.column("events.properties.email").to_pylist() == [
        None if p is None else p["email"] for p in properties
    ]


def test_reveal_returns_plaintext_where_protected_and_stored_values_where_historical(
    local_workspace: Workspace, enable_at: Enable
) -> None:
    original = pq.read_table(local_workspace.store.full_path(snapshot_path("users", PARTITION)))
    enable_at(local_workspace, "users.email", "email")
    local_workspace.protect("users", PARTITION)
    result = revealed(local_workspace, "users", date(2026, 11, 1), ["users.email"])
    assert result.column("users.email").equals(original.column("email"))
    assert result.column("user_id").equals(original.column("user_id"))


def test_reveal_of_a_dataset_without_a_primary_key_round_trips(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    enable_at(workspace, "logs.message", "full", NOON, DatasetSpec("logs", "ingested_at", None))
    day = date(2026, 11, 1)
    messages = ["one", None, "three", ""]
    write_snapshot(
        workspace.store, "logs", day, pa.table({"message": messages, "ingested_at": ingested([True, True, True, True])})
    )
    assert workspace.protect("logs", PARTITION).newly_encrypted == 3
    assert revealed(workspace, "logs", day, ["message"]).column("logs.message").to_pylist() == messages


def test_reveal_writes_nothing_to_the_data_files(local_workspace: Workspace, enable_at: Enable) -> None:
    enable_at(local_workspace, "users.email", "email")
    local_workspace.protect("users", PARTITION)
    path = Path(local_workspace.store.full_path(snapshot_path("users", PARTITION)))
    before = path.read_bytes(), path.stat().st_mtime_ns
    revealed(local_workspace, "users", date(2026, 11, 1), ["email"])
    local_workspace.verify("users", PARTITION)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_verify_counts_every_protected_cell(local_workspace: Workspace, enable_at: Enable) -> None:
    enable_at(local_workspace, "users.email", "email")
    enable_at(local_workspace, "users.phone", "last4")
    report = local_workspace.protect("users", PARTITION)
    assert local_workspace.verify("users", PARTITION) == {
        "users.email": report.attributes["users.email"].newly_encrypted,
        "users.phone": report.attributes["users.phone"].newly_encrypted,
    }


def test_verify_of_a_file_with_only_historical_rows_counts_zero(local_workspace: Workspace, enable_at: Enable) -> None:
    enable_at(local_workspace, "users.email", "email", NOON + timedelta(days=30))
    local_workspace.protect("users", PARTITION)
    assert local_workspace.verify("users", PARTITION) == {"users.email": 0}


def test_reveal_of_an_attribute_that_is_not_enabled_is_refused(local_workspace: Workspace, enable_at: Enable) -> None:
    enable_at(local_workspace, "users.email", "email")
    with pytest.raises(InputError, match="name not enabled for users"):
        list(local_workspace.reveal("users", PARTITION, ["name"]))


def test_reveal_of_a_dataset_not_in_the_catalog_is_refused(local_workspace: Workspace) -> None:
    with pytest.raises(InputError, match="dataset 'invoices' is not declared in workspace 'acme'"):
        list(local_workspace.reveal("invoices", PARTITION, ["note"]))


def test_decrypting_a_row_that_is_not_protected_is_refused(local_workspace: Workspace, enable_at: Enable) -> None:
    entry = enable_at(local_workspace, "users.email", "email")
    local_workspace.protect("users", PARTITION)
    rel = snapshot_path("users", PARTITION)
    batch = pq.read_table(local_workspace.store.full_path(rel)).combine_chunks().to_batches()[0]
    historical = pc.indices_nonzero(batch.column("email__fc_ct").is_null())[:1]
    spec = local_workspace.policy().datasets["users"]
    with pytest.raises(InputError, match="asked to decrypt a row that is not protected"):
        decrypt_rows(batch, spec, entry, local_workspace.key_cache(), historical, rel)
