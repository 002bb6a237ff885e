"""Tampered, moved or mis-keyed ciphertext in a protected file is detected, never decrypted to wrong data.

Each test edits a protected Parquet file the way an attacker or a buggy job could
(rewriting it with pyarrow), then asks for the plaintext through `verify` and `reveal`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path, users_table, write_snapshot
from fieldcrypt import InputError, IntegrityError, KeyProviderError, VerificationError, Workspace
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.policy.select import FILE_METADATA_KEY

DAY = date(2026, 11, 1)
PARTITION = DAY.isoformat()


class Lake:
    """A protected users partition, the plaintext it held, and tools to tamper with it."""

    def __init__(self, workspace: Workspace, plaintext: pa.Table) -> None:
        self.workspace = workspace
        self.plaintext = plaintext
        self.path = Path(workspace.store.full_path(snapshot_path("users", PARTITION)))
        self.table = pq.read_table(self.path)
        both = pc.and_(self.table.column("email__fc_ct").is_valid(), self.table.column("phone__fc_ct").is_valid())
        self.rows = pc.indices_nonzero(both.combine_chunks()).to_pylist()
        assert len(self.rows) >= 2
        protected = self.table.column("email__fc_ct").is_valid()
        self.secrets = [
            v
            for column in ("email", "phone")
            for v in plaintext.column(column).filter(self.table.column(f"{column}__fc_ct").is_valid()).to_pylist()
            if v
        ]
        assert protected.combine_chunks().true_count > 0 and self.secrets

    def other_file(self, rows: list[int]) -> Path:
        """A second file of the partition holding copies of some rows of the first (every column), its
        `ledgered` mark stripped: a plain copy is named by the protection ledger (tests/test_ledger.py),
        this one gets past it as a file fieldcrypt never wrote, and the read rule must catch it."""
        copy = self.path.with_name("part-1.parquet")
        table = self.table.take(rows)
        metadata = dict(table.schema.metadata or {})
        described = json.loads(metadata[FILE_METADATA_KEY])
        described.pop("ledgered", None)
        metadata[FILE_METADATA_KEY] = json.dumps(described, sort_keys=True).encode()
        pq.write_table(table.replace_schema_metadata(metadata), copy)
        return copy

    def cell(self, column: str, row: int) -> Any:
        return self.table.column(column)[row].as_py()

    def set_cells(self, column: str, changes: dict[int, Any]) -> None:
        """Rewrite the file with some cells of `column` replaced (wrapped keys stay dictionary-encoded)."""
        index = self.table.schema.get_field_index(column)
        field = self.table.schema.field(index)
        values = self.table.column(index).combine_chunks()
        if pa.types.is_dictionary(field.type):
            values = values.dictionary_decode()
        py = values.to_pylist()
        for row, value in changes.items():
            py[row] = value
        new = pa.array(py, values.type)
        if pa.types.is_dictionary(field.type):
            new = new.dictionary_encode().cast(field.type)
        self.table = self.table.set_column(index, field, new)
        pq.write_table(self.table, self.path)

    def refused(self, error: type[Exception] = IntegrityError, match: str | None = None) -> str:
        """Verify, reveal and dispatch all refuse (one read rule); returns verify's message after
        checking that no message holds plaintext."""
        with pytest.raises(error, match=match) as verified:
            self.workspace.verify("users", PARTITION)
        with pytest.raises(error, match=match) as revealed:
            list(self.workspace.reveal("users", PARTITION, ["email", "phone"]))
        segment = self.table.column("user_id").to_pylist()
        with pytest.raises(error, match=match) as dispatched:
            list(self.workspace.dispatch("users", segment, ["email", "phone"], reason="test", partition=PARTITION))
        for refusal in (revealed, dispatched):
            assert not [secret for secret in self.secrets if secret in str(refusal.value)]
        message = str(verified.value)
        assert "users/date=2026-11-01/part-0.parquet row " in message  # names the file and row
        for secret in self.secrets:
            assert secret not in message
            assert secret not in repr(verified.value)
        return message


@pytest.fixture
def lake(local_workspace: Workspace, enable_at: Callable[..., Any]) -> Lake:
    plaintext = pq.read_table(local_workspace.store.full_path(snapshot_path("users", PARTITION)))
    enable_at(local_workspace, "users.email", "email")
    enable_at(local_workspace, "users.phone", "last4")
    local_workspace.protect("users", PARTITION)
    return Lake(local_workspace, plaintext)


def test_untampered_file_verifies(lake: Lake) -> None:
    counts = lake.workspace.verify("users", PARTITION)
    assert counts["users.email"] > 0 and counts["users.phone"] > 0


@pytest.mark.parametrize("position", [0, 1, 13, -17, -1], ids=["version", "nonce", "body", "tag-start", "tag-end"])
def test_bit_flip_in_a_ciphertext_is_detected(lake: Lake, position: int) -> None:
    row = lake.rows[0]
    cell = bytearray(lake.cell("email__fc_ct", row))
    cell[position] ^= 0x04
    lake.set_cells("email__fc_ct", {row: bytes(cell)})
    message = lake.refused()
    assert f"part-0.parquet row group 0 row {row}" in message


def test_truncated_ciphertext_is_detected(lake: Lake) -> None:
    row = lake.rows[0]
    lake.set_cells("email__fc_ct", {row: lake.cell("email__fc_ct", row)[:-1]})
    assert "failed authentication" in lake.refused()


def test_ciphertext_truncated_below_the_cell_overhead_is_detected(lake: Lake) -> None:
    row = lake.rows[0]
    lake.set_cells("email__fc_ct", {row: lake.cell("email__fc_ct", row)[:20]})
    assert "shorter than the 29-byte minimum" in lake.refused()


def test_ciphertext_copied_to_another_row_is_detected(lake: Lake) -> None:
    source, target = lake.rows[0], lake.rows[1]
    lake.set_cells("email__fc_ct", {target: lake.cell("email__fc_ct", source)})
    message = lake.refused(match="moved to another row or column")
    assert f"row {target}" in message


def test_rows_with_swapped_primary_keys_are_detected(lake: Lake) -> None:
    first, second = lake.rows[0], lake.rows[1]
    lake.set_cells("user_id", {first: lake.cell("user_id", second), second: lake.cell("user_id", first)})
    lake.refused(match="failed authentication")


def test_ciphertext_copied_to_another_column_is_detected(lake: Lake) -> None:
    row = lake.rows[0]
    lake.set_cells("phone__fc_ct", {row: lake.cell("email__fc_ct", row)})
    lake.refused(match="moved to another row or column")


def test_ciphertext_and_wrapped_key_copied_to_another_column_are_detected(lake: Lake) -> None:
    row = lake.rows[0]
    lake.set_cells("phone__fc_ct", {row: lake.cell("email__fc_ct", row)})
    lake.set_cells("phone__fc_dek", {row: lake.cell("email__fc_dek", row)})
    assert "users.phone failed authentication" in lake.refused()


def test_wrapped_key_of_another_attribute_is_detected(lake: Lake) -> None:
    row = lake.rows[0]
    lake.set_cells("email__fc_dek", {row: lake.cell("phone__fc_dek", row)})
    assert "users.email failed authentication" in lake.refused()


def test_wrong_wrapped_key_of_the_same_attribute_is_detected(
    lake: Lake, make_local_workspace: Callable[..., Workspace], enable_at: Callable[..., Any]
) -> None:
    # Another day, protected by another run: a valid wrapped key of users.email, for another data key.
    next_day = DAY + timedelta(days=1)
    write_snapshot(lake.workspace.store, "users", next_day, users_table(next_day, 50))
    other_run = make_local_workspace(lake.workspace.config.lake_uri)
    other_run.protect("users", next_day.isoformat())
    other = pq.read_table(other_run.store.full_path(snapshot_path("users", next_day.isoformat())))
    foreign = other.column("email__fc_dek").combine_chunks().dictionary[0].as_py()
    assert foreign != lake.cell("email__fc_dek", lake.rows[0])
    lake.set_cells("email__fc_dek", {lake.rows[0]: foreign})
    assert "wrong data key" in lake.refused()


@pytest.mark.parametrize("position", [0, 30, 59])
def test_tampered_wrapped_key_is_detected(lake: Lake, position: int) -> None:
    row = lake.rows[0]
    wrapped = WrappedKey.from_bytes(lake.cell("email__fc_dek", row))
    body = bytearray(wrapped.wrapped)
    body[position] ^= 0x80
    tampered = WrappedKey(wrapped.provider, wrapped.key_id, wrapped.key_version, bytes(body)).to_bytes()
    lake.set_cells("email__fc_dek", {row: tampered})
    assert "failed authentication" in lake.refused()


def test_truncated_wrapped_key_is_detected(lake: Lake) -> None:
    row = lake.rows[0]
    lake.set_cells("email__fc_dek", {row: lake.cell("email__fc_dek", row)[:-5]})
    assert "wrapped key truncated" in lake.refused()


def test_wrapped_key_relabelled_as_another_master_key_version_is_detected(lake: Lake) -> None:
    lake.workspace.start_rotation()  # the keystore now holds versions 1 and 2, both decrypting
    row = lake.rows[0]
    wrapped = WrappedKey.from_bytes(lake.cell("email__fc_dek", row))
    lake.set_cells("email__fc_dek", {row: WrappedKey("local", wrapped.key_id, "2", wrapped.wrapped).to_bytes()})
    assert "failed authentication" in lake.refused()


def test_wrapped_key_of_another_master_key_is_refused_naming_both_keys(lake: Lake, tmp_path: Path) -> None:
    row = lake.rows[0]
    wrapped = WrappedKey.from_bytes(lake.cell("email__fc_dek", row))
    lake.set_cells("email__fc_dek", {row: WrappedKey("local", "lk-stranger", "1", wrapped.wrapped).to_bytes()})
    message = lake.refused(KeyProviderError, match="lk-stranger")
    assert wrapped.key_id in message


def test_ciphertext_of_another_file_for_the_same_row_key_decrypts_only_with_its_own_data_key(
    lake: Lake, make_local_workspace: Callable[..., Workspace]
) -> None:
    # Same dataset, attribute and user_id on the next day, but another run's data key: the
    # cell copied without its wrapped key does not authenticate under this file's key.
    next_day = DAY + timedelta(days=1)
    write_snapshot(lake.workspace.store, "users", next_day, users_table(next_day, 300))
    other_run = make_local_workspace(lake.workspace.config.lake_uri)
    other_run.protect("users", next_day.isoformat())
    other = pq.read_table(other_run.store.full_path(snapshot_path("users", next_day.isoformat())))
    row = lake.rows[0]
    assert other.column("user_id")[row].as_py() == lake.cell("user_id", row)
    foreign_cell = other.column("email__fc_ct")[row].as_py()
    assert foreign_cell is not None
    lake.set_cells("email__fc_ct", {row: foreign_cell})
    lake.refused(match="failed authentication")


def test_ciphertext_removed_with_its_mask_kept_is_refused(lake: Lake) -> None:
    row = lake.rows[0]
    lake.set_cells("email__fc_ct", {row: None})
    lake.set_cells("email__fc_dek", {row: None})
    message = lake.refused(match="its ciphertext was removed")
    assert f"part-0.parquet row group 0 row {row}: users.email holds a value but no ciphertext" in message


def test_ciphertext_removed_and_mask_replaced_by_another_value_is_refused(lake: Lake) -> None:
    row = lake.rows[0]
    lake.set_cells("email__fc_ct", {row: None})
    lake.set_cells("email__fc_dek", {row: None})
    lake.set_cells("email", {row: "attacker@evil.example"})
    assert f"row {row}" in lake.refused(match="its ciphertext was removed")


def test_mask_replaced_on_a_protected_row_is_refused_by_every_read(lake: Lake) -> None:
    row = lake.rows[0]
    lake.set_cells("phone", {row: "****0000" if lake.cell("phone", row) != "****0000" else "****1111"})
    message = lake.refused(VerificationError, match="users.phone value does not hold the mask of its decrypted value")
    assert f"row group 0 row {row}" in message


def test_row_copied_into_another_file_of_the_partition_is_refused(lake: Lake) -> None:
    lake.other_file([lake.rows[1]])
    message = lake.refused(match="primary key \\(user_id\\) of users repeats")
    assert f"part-0.parquet row group 0 row {lake.rows[1]} and " in message
    assert "part-1.parquet row group 0 row 0" in message


def test_primary_key_landed_in_two_files_of_the_partition_is_refused_by_protect(lake: Lake) -> None:
    # A second file landed with a user of the first: each file is consistent, the partition is
    # not (a row's cells bind its key, not its file), so protection refuses before writing.
    second = lake.path.with_name("part-1.parquet")
    pq.write_table(lake.plaintext.take([lake.rows[1]]), second)
    before = second.read_bytes()
    with pytest.raises(InputError, match="repeats across files"):
        lake.workspace.protect("users", PARTITION)
    assert second.read_bytes() == before


def test_dispatch_of_a_segment_without_the_repeated_key_is_served(lake: Lake) -> None:
    lake.other_file([lake.rows[1]])
    repeated = lake.cell("user_id", lake.rows[1])
    segment = [key for key in lake.table.column("user_id").to_pylist() if key != repeated]
    batches = list(lake.workspace.dispatch("users", segment, ["email"], reason="test", partition=PARTITION))
    assert sum(batch.num_rows for batch in batches) == len(segment)


def test_reveal_of_a_repeated_row_key_is_refused(lake: Lake) -> None:
    lake.other_file([lake.rows[1]])
    key = str(lake.cell("user_id", lake.rows[1]))
    with pytest.raises(IntegrityError, match="repeats on"):
        list(lake.workspace.reveal("users", PARTITION, ["email"], row_keys=[key], reason="test"))


def test_row_copied_within_its_own_file_is_refused(lake: Lake) -> None:
    # Its cells authenticate (same key, same data key); protection refuses such a file, reads do too.
    lake.table = pa.concat_tables([lake.table, lake.table.take([lake.rows[1]])])
    pq.write_table(lake.table, lake.path)
    copy = lake.table.num_rows - 1
    assert f"part-0.parquet row group 0 row {copy}" in lake.refused(match="repeats on")
