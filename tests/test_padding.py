"""Opt-in length padding (cell format 2): ciphertext shows only the bucket of a value's length."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from demo.sample_data import snapshot_path, write_snapshot
from fieldcrypt import IntegrityError, PolicyError, Workspace
from fieldcrypt.format.cell import CELL_OVERHEAD
from fieldcrypt.format.padding import pad, padded_length, unpad
from fieldcrypt.policy.policy import POLICY_PATH

NOON = datetime(2026, 11, 1, 12, tzinfo=UTC)
DAY = date(2026, 11, 1)
PARTITION = DAY.isoformat()
EMAILS = ["a@x.io", "bob@example.com", "a-much-longer-address@mail.example.org", "", None, "é@ü.de"]


@pytest.fixture(params=["python", "native"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from fieldcrypt.format.kernel import NATIVE

    if request.param == "native" and NATIVE is None:
        pytest.skip("the native kernel is not built here")
    monkeypatch.setenv("FIELDCRYPT_KERNEL", request.param)
    yield request.param


def padded_workspace(make_local_workspace: Callable[..., Workspace], pad_to: int = 16) -> Workspace:
    workspace = make_local_workspace()
    table = pa.table(
        {
            "user_id": pa.array(range(len(EMAILS)), pa.int64()),
            "email": pa.array(EMAILS, pa.string()),
            "ingested_at": pa.array(
                [NOON + timedelta(minutes=i) for i in range(len(EMAILS))], pa.timestamp("us", "UTC")
            ),
        }
    )
    write_snapshot(workspace.store, "users", DAY, table)
    policy = workspace.policy().with_dataset(workspace.layout("users").spec)
    policy = policy.with_enabled("users.email", "email", "test", now=NOON, pad_to=pad_to)
    workspace.policies.save(policy)
    return workspace


def stored(workspace: Workspace) -> pa.Table:
    return pq.read_table(workspace.store.full_path(snapshot_path("users", PARTITION)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20), st.sampled_from([16, 32, 64, 4096]))
def test_padding_round_trips_and_fills_whole_blocks(values: list[bytes], pad_to: int) -> None:
    array = pa.array(values, pa.binary())
    padded = pad(array, pad_to)
    assert all(len(p) % pad_to == 0 and len(p) >= len(v) + 4 for p, v in zip(padded.to_pylist(), values, strict=True))
    assert unpad(padded, "test").to_pylist() == values
    assert unpad(pad(array.slice(1), pad_to), "test").to_pylist() == values[1:]


def test_padded_cells_hide_lengths_within_a_block_and_decrypt(
    make_local_workspace: Callable[..., Workspace], kernel: str
) -> None:
    workspace = padded_workspace(make_local_workspace)

    report = workspace.protect("users", PARTITION)

    table = stored(workspace)
    cells = table["email__fc_ct"].to_pylist()
    assert report.newly_encrypted == 5
    lengths = [None if c is None else len(c) - CELL_OVERHEAD for c in cells]
    assert lengths == [16, 32, 48, 16, None, 16]  # 0-, 6- and 8-byte values share one size
    assert {c[0] for c in cells if c is not None} == {2}
    assert workspace.verify("users", PARTITION) == {"users.email": 5}
    (batch,) = workspace.reveal("users", PARTITION, ["email"])
    assert batch.column("users.email").to_pylist() == EMAILS


def test_a_padded_cell_relabelled_as_format_1_is_refused_naming_its_row(
    make_local_workspace: Callable[..., Workspace], kernel: str
) -> None:
    workspace = padded_workspace(make_local_workspace)
    workspace.protect("users", PARTITION)
    table = stored(workspace)
    cells = table["email__fc_ct"].to_pylist()
    cells[1] = b"\x01" + cells[1][1:]
    at = table.schema.get_field_index("email__fc_ct")
    path = workspace.store.full_path(snapshot_path("users", PARTITION))
    pq.write_table(table.set_column(at, "email__fc_ct", pa.array(cells, pa.binary())), path)

    with pytest.raises(IntegrityError, match=r"row 1, users.email: cell format version 1, but the attribute is padded"):
        workspace.verify("users", PARTITION)


def test_format_2_cells_fail_authentication_under_format_1_rules(
    make_local_workspace: Callable[..., Workspace], kernel: str
) -> None:
    """The version byte is bound through the associated data: a padded cell read as an unpadded one fails."""
    workspace = padded_workspace(make_local_workspace)
    workspace.protect("users", PARTITION)
    from fieldcrypt.reads.reveal import decrypt_rows

    table = stored(workspace)
    batch = table.to_batches()[0]
    attribute = workspace.policy().attributes["users.email"]
    unpadded_rules = type(attribute)(**{**attribute.__dict__, "pad_to": 0})
    cells = batch.column("email__fc_ct").to_pylist()
    cells[0] = b"\x01" + cells[0][1:]
    relabelled = batch.set_column(
        batch.schema.get_field_index("email__fc_ct"), "email__fc_ct", pa.array(cells, pa.binary())
    )
    with pytest.raises(IntegrityError, match="ciphertext failed authentication"):
        decrypt_rows(
            relabelled, workspace.layout("users").spec, unpadded_rules, workspace.key_cache(), pa.array([0]), "t"
        )


def test_rotation_keeps_padded_cells_byte_identical(make_local_workspace: Callable[..., Workspace]) -> None:
    workspace = padded_workspace(make_local_workspace)
    workspace.protect("users", PARTITION)
    before = stored(workspace)["email__fc_ct"]
    workspace.start_rotation()
    workspace.rotate("users", PARTITION)
    workspace.complete_rotation()
    assert stored(workspace)["email__fc_ct"].equals(before)
    assert workspace.verify("users", PARTITION) == {"users.email": 5}


@pytest.mark.parametrize("pad_to", [8, 24, 8192, -16])
def test_a_block_size_that_is_not_a_power_of_two_in_range_is_refused(
    make_local_workspace: Callable[..., Workspace], pad_to: int
) -> None:
    with pytest.raises(PolicyError, match=f"pad_to {pad_to} for users.email must be 0"):
        padded_workspace(make_local_workspace, pad_to)


def test_the_policy_records_padding_only_for_padded_attributes(
    make_local_workspace: Callable[..., Workspace], tmp_path: Path
) -> None:
    workspace = padded_workspace(make_local_workspace, 32)
    policy = workspace.policy().with_enabled("users.phone", "last4", "test", now=NOON)
    workspace.policies.save(policy)
    doc = json.loads(Path(workspace.store.full_path(POLICY_PATH)).read_text())
    assert doc["attributes"]["users.email"]["pad_to"] == 32
    assert "pad_to" not in doc["attributes"]["users.phone"]  # unpadded entries read as before
    assert workspace.policy().attributes["users.email"].pad_to == 32


def test_padded_length_is_the_next_multiple_of_the_block_past_the_length_prefix() -> None:
    import numpy as np

    assert padded_length(np.array([0, 12, 13, 28, 29]), 16).tolist() == [16, 16, 32, 32, 48]
