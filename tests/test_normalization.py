"""Blind-index value normalisation, chosen at enablement: equal after normalisation means equal index."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path, write_snapshot
from fieldcrypt import PolicyError, Workspace
from fieldcrypt.keys.blind_index import normalize
from fieldcrypt.policy.policy import Policy
from tests.conftest import NOON, SAMPLE_DAY
from tests.policy_support import backdate_policy

PARTITION = SAMPLE_DAY.isoformat()


def _indexed(make: Callable[..., Workspace], values: list[str | None], how: str) -> tuple[Workspace, list[object]]:
    workspace = make()
    table = pa.table(
        {
            "user_id": pa.array(range(len(values)), pa.int64()),
            "email": pa.array(values, pa.string()),
            "ingested_at": pa.array([NOON] * len(values), pa.timestamp("us", tz="UTC")),
        }
    )
    write_snapshot(workspace.store, "users", SAMPLE_DAY, table)
    workspace.enable("users.email", "email", acknowledge_irreversible=True, blind_index=True, normalize=how)
    backdate_policy(workspace)
    workspace.protect("users", PARTITION)
    path = workspace.store.full_path(snapshot_path("users", PARTITION))
    return workspace, pq.read_table(path).column("email__fc_bidx").to_pylist()


def test_email_normalisation_indexes_case_and_surrounding_space_alike(
    make_local_workspace: Callable[..., Workspace],
) -> None:
    _, (a, b, c, other) = _indexed(
        make_local_workspace,
        [" Alice@Example.COM ", "alice@example.com", "ALICE@EXAMPLE.COM", "bob@example.com"],
        "email",
    )
    assert a == b == c != other


def test_e164_normalisation_indexes_spacing_punctuation_and_00_prefix_alike(
    make_local_workspace: Callable[..., Workspace],
) -> None:
    _, (a, b, c, other) = _indexed(
        make_local_workspace,
        ["+33 6 12 34 56 78", "0033 6-12.34.56.78", "+33 (6) 12345678", "+33 6 12 34 56 79"],
        "e164",
    )
    assert a == b == c != other


def test_without_normalisation_values_are_indexed_exactly_as_stored(
    make_local_workspace: Callable[..., Workspace],
) -> None:
    _, (a, b) = _indexed(make_local_workspace, ["Alice@example.com", "alice@example.com"], "none")
    assert a != b


def test_normalisation_changes_only_the_index_not_the_decrypted_value(
    make_local_workspace: Callable[..., Workspace],
) -> None:
    workspace, _ = _indexed(make_local_workspace, [" Alice@Example.COM "], "email")
    (row,) = [r for batch in workspace.reveal("users", PARTITION, ["email"]) for r in batch.to_pylist()]
    assert row["users.email"] == " Alice@Example.COM "


def test_reindex_keeps_the_normalisation(make_local_workspace: Callable[..., Workspace]) -> None:
    workspace, before = _indexed(make_local_workspace, [" Alice@Example.COM ", "alice@example.com"], "email")
    workspace.start_reindex("users.email")
    workspace.reindex("users", PARTITION)
    after = pq.read_table(workspace.store.full_path(snapshot_path("users", PARTITION))).column("email__fc_bidx")
    assert after[0] == after[1] and after.to_pylist() != before


def test_normalisation_without_a_blind_index_is_refused(make_local_workspace: Callable[..., Workspace]) -> None:
    workspace = make_local_workspace()
    write_snapshot(
        workspace.store,
        "users",
        SAMPLE_DAY,
        pa.table({"user_id": [1], "email": ["a@b.c"], "ingested_at": pa.array([NOON], pa.timestamp("us", tz="UTC"))}),
    )
    with pytest.raises(PolicyError, match="normalisation 'email' of users.email applies to a blind index"):
        workspace.enable("users.email", "email", acknowledge_irreversible=True, normalize="email")


def test_unknown_normalisation_is_refused_naming_the_choices() -> None:
    with pytest.raises(PolicyError, match="'upper' is not one of none, trim, email, e164"):
        normalize(pa.array(["x"]), "upper")


def test_policy_keeps_the_normalisation_and_omits_it_when_none(make_local_workspace: Callable[..., Workspace]) -> None:
    workspace, _ = _indexed(make_local_workspace, ["a@example.com"], "email")
    policy = workspace.policy()
    assert Policy.from_json(policy.to_json(), "test").attributes["users.email"].normalize == "email"
    plain = Policy(policy.workspace, policy.datasets).with_enabled("users.email", "email", "t", blind_index=True)
    assert "normalize" not in plain.to_json()


def test_email_normalisation_lowercases_with_unicode_simple_case_mapping() -> None:
    """docs/FORMAT.md section 8: İ (U+0130) becomes i and a final Σ becomes σ (no context), as Arrow's
    utf8_lower, not Python's str.lower() (i + U+0307, ς)."""
    assert normalize(pa.array([" İNCİ@EXAMPLE.COM ", "ΟΔΟΣ@EXAMPLE.GR"]), "email").to_pylist() == [
        "inci@example.com",
        "οδοσ@example.gr",
    ]
