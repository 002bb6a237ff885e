"""Enabling attributes: acknowledgment, irreversibility, and input checks at enablement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from demo.sample_data import write_snapshot
from fieldcrypt import InputError, PolicyError, Workspace
from fieldcrypt.policy.policy import POLICY_PATH, DatasetSpec, Policy, PolicyStore
from tests.catalogs import TEST_DATASETS, declared

DAY = date(2026, 11, 1)
ORDERS = DatasetSpec("orders", "ingested_at", "order_id")


def policy_file(workspace: Workspace) -> Path:
    return Path(workspace.store.full_path(POLICY_PATH))


def audit_operations(workspace: Workspace) -> list[str]:
    return [event["operation"] for event in workspace.audit.events()]


def land_orders(workspace: Workspace, **columns: pa.Array) -> str:
    base = {
        "order_id": pa.array([1, 2], pa.int64()),
        "note": pa.array(["a", "b"]),
        "amount": pa.array([10, 20], pa.int64()),
        "ingested_at": pa.array([datetime(2026, 11, 1, 12, tzinfo=UTC)] * 2, pa.timestamp("us", tz="UTC")),
    }
    base.update(columns)
    return write_snapshot(workspace.store, "orders", DAY, pa.table({k: v for k, v in base.items() if v is not None}))


# -- acknowledgment and irreversibility -----------------------------------------------------


def test_enabling_without_acknowledgment_is_refused(local_workspace: Workspace) -> None:
    with pytest.raises(PolicyError, match="irreversible.*acknowledge"):
        local_workspace.enable("users.email", "email", acknowledge_irreversible=False)
    assert not policy_file(local_workspace).exists()
    assert "enable" not in audit_operations(local_workspace)


def test_enabling_records_enablement_time_and_mask_in_the_lake(
    local_workspace: Workspace, make_local_workspace: Callable[..., Workspace]
) -> None:
    before = datetime.now(UTC)
    entry = local_workspace.enable("users.email", "email", acknowledge_irreversible=True)
    after = datetime.now(UTC)
    assert entry.enabled_at.utcoffset() == timedelta(0)
    assert before <= entry.enabled_at <= after
    reread = make_local_workspace(local_workspace.config.lake_uri).policy().attributes["users.email"]
    assert (reread.mask, reread.enabled_at, reread.enabled_by) == ("email", entry.enabled_at, "test")
    assert "enable" in audit_operations(local_workspace)


def test_enabling_a_struct_field_is_accepted(local_workspace: Workspace) -> None:
    entry = local_workspace.enable("events.properties.email", "email", acknowledge_irreversible=True)
    assert (entry.path, entry.ciphertext_column, entry.wrapped_key_column) == (
        "properties.email",
        "properties__email__fc_ct",
        "properties__email__fc_dek",
    )


def test_enabling_twice_is_refused(local_workspace: Workspace) -> None:
    local_workspace.enable("users.email", "email", acknowledge_irreversible=True)
    stored = policy_file(local_workspace).read_bytes()
    with pytest.raises(PolicyError, match="users.email is already enabled"):
        local_workspace.enable("users.email", "full", acknowledge_irreversible=True)
    assert policy_file(local_workspace).read_bytes() == stored


def test_policy_that_drops_an_enabled_attribute_is_refused(local_workspace: Workspace) -> None:
    local_workspace.enable("users.email", "email", acknowledge_irreversible=True)
    stored = policy_file(local_workspace).read_bytes()
    policy = local_workspace.policy()
    with pytest.raises(PolicyError, match="drops enabled attribute users.email"):
        local_workspace.policies.save(replace(policy, attributes={}))
    assert policy_file(local_workspace).read_bytes() == stored


def test_policy_that_changes_the_mask_of_an_enabled_attribute_is_refused(local_workspace: Workspace) -> None:
    local_workspace.enable("users.email", "email", acknowledge_irreversible=True)
    stored = policy_file(local_workspace).read_bytes()
    policy = local_workspace.policy()
    changed = replace(policy.attributes["users.email"], mask="full")
    with pytest.raises(PolicyError, match="changes enabled attribute users.email"):
        local_workspace.policies.save(replace(policy, attributes={"users.email": changed}))
    assert policy_file(local_workspace).read_bytes() == stored


def test_policy_that_moves_the_enablement_time_is_refused(local_workspace: Workspace) -> None:
    local_workspace.enable("users.email", "email", acknowledge_irreversible=True)
    policy = local_workspace.policy()
    entry = policy.attributes["users.email"]
    later = replace(entry, enabled_at=entry.enabled_at + timedelta(days=1))
    with pytest.raises(PolicyError, match="changes enabled attribute users.email"):
        local_workspace.policies.save(replace(policy, attributes={"users.email": later}))


def test_policy_that_changes_the_ingestion_column_of_a_protected_dataset_is_refused(
    local_workspace: Workspace,
) -> None:
    local_workspace.enable("users.email", "email", acknowledge_irreversible=True)
    policy = local_workspace.policy()
    with pytest.raises(PolicyError, match="ingestion column and primary key"):
        policy.with_dataset(DatasetSpec("users", "landed_at", "user_id"))
    moved = replace(policy, datasets={**policy.datasets, "users": DatasetSpec("users", "landed_at", "user_id")})
    with pytest.raises(PolicyError, match="changes dataset users"):
        local_workspace.policies.save(moved)


def test_policy_of_another_workspace_is_refused(local_workspace: Workspace) -> None:
    local_workspace.enable("users.email", "email", acknowledge_irreversible=True)
    policy = local_workspace.policy()
    with pytest.raises(PolicyError, match="workspace 'acme', not 'globex'"):
        local_workspace.policies.save(replace(policy, workspace="globex"))
    with pytest.raises(PolicyError, match="belongs to workspace 'acme', not 'globex'"):
        PolicyStore(local_workspace.store, "globex").load()


def test_corrupt_policy_file_is_refused(local_workspace: Workspace) -> None:
    local_workspace.enable("users.email", "email", acknowledge_irreversible=True)
    policy_file(local_workspace).write_text('{"format": "fieldcrypt-policy-v1", "workspace": "acme"')
    with pytest.raises(PolicyError, match="policy.json is not a valid fieldcrypt policy"):
        local_workspace.policy()


def test_adding_an_attribute_keeps_the_enabled_ones(local_workspace: Workspace) -> None:
    first = local_workspace.enable("users.email", "email", acknowledge_irreversible=True)
    local_workspace.enable("users.phone", "last4", acknowledge_irreversible=True)
    attributes = local_workspace.policy().attributes
    assert set(attributes) == {"users.email", "users.phone"}
    assert attributes["users.email"] == first


def test_policy_json_round_trips() -> None:
    policy = (
        Policy("acme")
        .with_dataset(ORDERS)
        .with_enabled("orders.note", "full", "me", now=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
    )
    assert Policy.from_json(policy.to_json(), "policy.json") == policy


# -- bad input at enablement ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "problem"),
    [
        ("users.nickname", "column 'nickname' not found"),
        ("events.properties.fax", "struct properties has no field 'fax'"),
        ("users.email.domain", "email is string, not a struct"),
    ],
)
def test_unknown_attribute_is_refused_naming_it(local_workspace: Workspace, attribute: str, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        local_workspace.enable(attribute, "full", acknowledge_irreversible=True)
    assert not policy_file(local_workspace).exists()


def test_integer_column_is_refused(local_workspace: Workspace) -> None:
    land_orders(local_workspace)
    with pytest.raises(InputError, match="orders.amount is int64; only string columns can be protected"):
        local_workspace.enable("orders.amount", "full", acknowledge_irreversible=True)
    assert not policy_file(local_workspace).exists()


def test_missing_ingestion_column_is_refused_naming_it(make_local_workspace: Callable[..., Workspace]) -> None:
    workspace = make_local_workspace(datasets={**TEST_DATASETS, "orders": declared("orders", "landed_at", "order_id")})
    land_orders(workspace)
    with pytest.raises(InputError, match="ingestion-time column 'landed_at' of orders not found"):
        workspace.enable("orders.note", "full", acknowledge_irreversible=True)
    assert not policy_file(workspace).exists()


def test_ingestion_column_that_is_not_a_timestamp_is_refused(local_workspace: Workspace) -> None:
    land_orders(local_workspace, ingested_at=pa.array(["2026-11-01T12:00:00Z"] * 2))
    with pytest.raises(InputError, match="ingestion-time column 'ingested_at' is string, expected a timestamp"):
        local_workspace.enable("orders.note", "full", acknowledge_irreversible=True)


def test_missing_primary_key_column_is_refused(local_workspace: Workspace) -> None:
    land_orders(local_workspace, order_id=None)
    with pytest.raises(InputError, match="primary-key column 'order_id' of orders not found"):
        local_workspace.enable("orders.note", "full", acknowledge_irreversible=True)


def test_corrupt_latest_partition_is_refused_naming_the_file(local_workspace: Workspace) -> None:
    rel = land_orders(local_workspace)
    Path(local_workspace.store.full_path(rel)).write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match=r"orders/date=2026-11-01/part-0.parquet is not a readable Parquet file"):
        local_workspace.enable("orders.note", "full", acknowledge_irreversible=True)


@pytest.mark.parametrize("column", ["users.ingested_at", "users.user_id"])
def test_ingestion_time_and_primary_key_columns_cannot_be_encrypted(local_workspace: Workspace, column: str) -> None:
    with pytest.raises(PolicyError, match="ingestion-time or primary-key column of users"):
        local_workspace.enable(column, "full", acknowledge_irreversible=True)


def test_unknown_mask_is_refused(local_workspace: Workspace) -> None:
    with pytest.raises(PolicyError, match="mask 'first3' for users.email is not one of full, email, last4"):
        local_workspace.enable("users.email", "first3", acknowledge_irreversible=True)


def test_dataset_not_declared_in_the_catalog_is_refused(local_workspace: Workspace) -> None:
    with pytest.raises(InputError, match="dataset 'invoices' is not declared in workspace 'acme'"):
        local_workspace.enable("invoices.note", "full", acknowledge_irreversible=True)


@pytest.mark.parametrize("attribute", ["users", "users.", "users.e-mail", "users.1email", "users.email..x"])
def test_malformed_attribute_name_is_refused(local_workspace: Workspace, attribute: str) -> None:
    with pytest.raises(PolicyError):
        local_workspace.enable(attribute, "full", acknowledge_irreversible=True)


def test_attribute_enabled_before_its_dataset_has_data_is_accepted(
    make_local_workspace: Callable[..., Workspace],
) -> None:
    workspace = make_local_workspace()
    entry = workspace.enable("users.email", "email", acknowledge_irreversible=True)
    assert workspace.policy().attributes == {"users.email": entry}
