"""Blind index: analysts join and count distinct on a protected attribute without decrypting."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path, write_snapshot
from fieldcrypt import IntegrityError, PolicyError, VerificationError, Workspace
from fieldcrypt.keys.blind_index import INDEX_KEYS_PATH, INDEX_SIZE
from fieldcrypt.keys.keystore import Keystore
from tests.catalogs import TEST_DATASETS
from tests.conftest import NOON, SAMPLE_DAY
from tests.policy_support import backdate_policy

DAYS = [SAMPLE_DAY, SAMPLE_DAY + timedelta(days=1)]
EMAILS = ["a@example.com", "b@example.com", "a@example.com", None, "c@example.com"]


def _land(workspace: Workspace) -> None:
    for offset, day in enumerate(DAYS):
        times = [NOON + timedelta(days=offset, minutes=i) for i in range(len(EMAILS))]
        table = pa.table(
            {
                "user_id": pa.array([10 * offset + i for i in range(len(EMAILS))], pa.int64()),
                "email": pa.array(EMAILS, pa.string()),
                "ingested_at": pa.array(times, pa.timestamp("us", tz="UTC")),
            }
        )
        write_snapshot(workspace.store, "users", day, table)


def _backdate(workspace: Workspace) -> None:
    backdate_policy(workspace)


@pytest.fixture
def indexed(make_local_workspace: Callable[..., Workspace]) -> Workspace:
    workspace = make_local_workspace()
    _land(workspace)
    workspace.enable("users.email", "email", acknowledge_irreversible=True, blind_index=True)
    _backdate(workspace)
    for day in DAYS:
        assert workspace.protect("users", day.isoformat()).newly_encrypted == 4
    return workspace


def _indexes(workspace: Workspace, day: Any = SAMPLE_DAY) -> list[bytes | None]:
    path = workspace.store.full_path(snapshot_path("users", day.isoformat()))
    return pq.read_table(path).column("email__fc_bidx").to_pylist()


def test_equal_values_get_equal_indexes_and_different_values_different_ones(indexed: Workspace) -> None:
    first, second, again, null, third = _indexes(indexed)
    assert first == again and len(first or b"") == INDEX_SIZE
    assert len({first, second, third}) == 3
    assert null is None


def test_index_is_stable_across_partitions_so_analysts_can_join(indexed: Workspace) -> None:
    lake = indexed.store.uri
    joined = (
        duckdb.connect()
        .execute(
            f"select count(*) from read_parquet('{lake}/users/date={DAYS[0]}/*.parquet') a "
            f"join read_parquet('{lake}/users/date={DAYS[1]}/*.parquet') b on a.email__fc_bidx = b.email__fc_bidx"
        )
        .fetchone()
    )
    assert joined == (6,)  # a x a (2 x 2) + b x b + c x c; nulls never join
    distinct = (
        duckdb.connect()
        .execute(f"select count(distinct email__fc_bidx) from read_parquet('{lake}/users/*/*.parquet')")
        .fetchone()
    )
    assert distinct == (3,)


def test_index_key_is_stored_wrapped_and_plaintext_never_appears(indexed: Workspace, keystore_path: Path) -> None:
    doc = json.loads(Path(indexed.store.full_path(INDEX_KEYS_PATH)).read_text())
    assert set(doc["keys"]) == {"users.email"}
    lake_bytes = b"".join(p.read_bytes() for p in Path(indexed.store.uri).rglob("*") if p.is_file())
    assert b"a@example.com" not in lake_bytes.replace(b"****@example.com", b"")
    master = Keystore.load(keystore_path).key_for(1)
    assert master not in lake_bytes


def test_enabling_twice_with_a_blind_index_creates_no_second_key(indexed: Workspace) -> None:
    before = Path(indexed.store.full_path(INDEX_KEYS_PATH)).read_bytes()
    with pytest.raises(PolicyError, match="already enabled"):
        indexed.enable("users.email", "email", acknowledge_irreversible=True, blind_index=True)
    assert Path(indexed.store.full_path(INDEX_KEYS_PATH)).read_bytes() == before


def test_rotation_rewraps_the_index_key_and_keeps_indexes_byte_identical(indexed: Workspace) -> None:
    before = [_indexes(indexed, day) for day in DAYS]
    campaign = indexed.start_rotation()
    assert INDEX_KEYS_PATH not in indexed.rotation_status().remaining  # rewrapped at start
    for day in DAYS:
        indexed.rotate("users", day.isoformat())
    indexed.complete_rotation()
    assert [_indexes(indexed, day) for day in DAYS] == before
    extra = SAMPLE_DAY + timedelta(days=5)
    table = pa.table(
        {
            "user_id": pa.array([99], pa.int64()),
            "email": pa.array(["a@example.com"], pa.string()),
            "ingested_at": pa.array([NOON + timedelta(days=5)], pa.timestamp("us", tz="UTC")),
        }
    )
    write_snapshot(indexed.store, "users", extra, table)
    indexed.protect("users", extra.isoformat())  # the rewrapped key still gives the same index
    assert _indexes(indexed, extra) == [before[0][0]]
    assert indexed.rotation_status().campaign is None and campaign.old.key_version == "1"


def test_completion_rewraps_an_index_key_left_under_the_old_key(indexed: Workspace) -> None:
    stored = Path(indexed.store.full_path(INDEX_KEYS_PATH)).read_bytes()
    indexed.start_rotation()
    Path(indexed.store.full_path(INDEX_KEYS_PATH)).write_bytes(stored)  # as if start died before rewrapping
    assert INDEX_KEYS_PATH in indexed.rotation_status().remaining
    for day in DAYS:
        indexed.rotate("users", day.isoformat())
    indexed.complete_rotation()
    assert indexed.rotation_status().complete


def test_verification_refuses_a_rewrite_with_a_wrong_index(indexed: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from fieldcrypt.keys.blind_index import BlindIndexKey

    extra = SAMPLE_DAY + timedelta(days=3)
    table = pa.table(
        {
            "user_id": pa.array([7], pa.int64()),
            "email": pa.array(["z@example.com"], pa.string()),
            "ingested_at": pa.array([NOON + timedelta(days=3)], pa.timestamp("us", tz="UTC")),
        }
    )
    write_snapshot(indexed.store, "users", extra, table)
    path = Path(indexed.store.full_path(snapshot_path("users", extra.isoformat())))
    original = path.read_bytes()
    real = BlindIndexKey.index
    calls: list[int] = []

    def faulty(self: BlindIndexKey, values: pa.Array) -> pa.Array:  # fault injection: a corrupt index writer
        calls.append(1)
        result = real(self, values)
        return pa.array([b"\x00" * INDEX_SIZE] * len(result), pa.binary()) if len(calls) == 1 else result

    monkeypatch.setattr(BlindIndexKey, "index", faulty)
    with pytest.raises(VerificationError, match="blind index"):
        indexed.protect("users", extra.isoformat())
    assert path.read_bytes() == original


def test_blind_index_on_aws_kms_uses_its_own_encryption_context(
    tmp_path: Path, moto: str, make_kms_key: Callable[..., str]
) -> None:
    import boto3

    from fieldcrypt import KeyConfig, WorkspaceConfig
    from fieldcrypt.format.wrapped_key import WrappedKey

    config = WorkspaceConfig(
        "acme",
        str(tmp_path / "lake"),
        KeyConfig(provider="aws-kms", kms_key=make_kms_key(), kms_endpoint_url=moto),
        datasets=TEST_DATASETS,
    )
    workspace = Workspace(config, actor="test")
    _land(workspace)
    workspace.enable("users.email", "email", acknowledge_irreversible=True, blind_index=True)
    _backdate(workspace)
    workspace.protect("users", SAMPLE_DAY.isoformat())
    first, _, again, _, _ = _indexes(workspace)
    assert first is not None and first == again
    wrapped = WrappedKey.from_bytes(workspace.index_keys.load()["users.email"])
    kms = boto3.client("kms", endpoint_url=moto, region_name="us-east-1")
    context = {
        "fieldcrypt:workspace": "acme",
        "fieldcrypt:dataset": "users",
        "fieldcrypt:attribute": "email#blind-index",
    }
    assert len(kms.decrypt(CiphertextBlob=wrapped.wrapped, EncryptionContext=context)["Plaintext"]) == 32


def test_index_key_bytes_never_reach_the_lake_or_the_audit_log(
    make_local_workspace: Callable[..., Workspace], monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    from fieldcrypt.keys.providers.local import LocalKeyProvider

    issued: list[bytes] = []
    real = LocalKeyProvider.generate_data_key

    def recording(self: LocalKeyProvider, context: Any) -> Any:  # records keys to search for; passes through
        key, wrapped = real(self, context)
        issued.append(key)
        return key, wrapped

    monkeypatch.setattr(LocalKeyProvider, "generate_data_key", recording)
    workspace = make_local_workspace()
    _land(workspace)
    workspace.enable("users.email", "email", acknowledge_irreversible=True, blind_index=True)
    _backdate(workspace)
    workspace.protect("users", SAMPLE_DAY.isoformat())
    assert len(issued) == 4  # the policy MAC key, the audit key, the index key and one data key
    stored = b"".join(p.read_bytes() for p in Path(workspace.store.uri).rglob("*") if p.is_file())
    for key in issued:
        for form in (key, key.hex().encode(), base64.b64encode(key)):
            assert form not in stored


def _set_indexes(workspace: Workspace, changes: dict[int, bytes | None]) -> None:
    """Rewrite the first day's file with some blind-index cells replaced (as an outside writer could)."""
    path = workspace.store.full_path(snapshot_path("users", SAMPLE_DAY.isoformat()))
    table = pq.read_table(path)
    indexes = table.column("email__fc_bidx").to_pylist()
    for row, value in changes.items():
        indexes[row] = value
    at = table.schema.get_field_index("email__fc_bidx")
    pq.write_table(table.set_column(at, table.schema.field(at), pa.array(indexes, pa.binary())), path)


def _every_read_refuses(workspace: Workspace, match: str) -> None:
    partition = SAMPLE_DAY.isoformat()
    with pytest.raises(IntegrityError, match=match):
        workspace.verify("users", partition)
    with pytest.raises(IntegrityError, match=match):
        list(workspace.reveal("users", partition, ["email"]))
    with pytest.raises(IntegrityError, match=match):
        list(workspace.dispatch("users", range(len(EMAILS)), ["email"], reason="test", partition=partition))


def test_tampered_blind_index_is_refused_by_verify_reveal_and_dispatch(indexed: Workspace) -> None:
    indexes = _indexes(indexed)
    assert indexes[0] != indexes[1]
    _set_indexes(indexed, {0: indexes[1]})  # analysts would join row 0 with every b@example.com
    _every_read_refuses(indexed, r"part-0.parquet row group 0 row 0: the blind index of users.email is not the index")


def test_nulled_blind_index_of_a_protected_row_is_refused(indexed: Workspace) -> None:
    _set_indexes(indexed, {1: None})
    _every_read_refuses(indexed, r"part-0.parquet row group 0 row 1: protected users.email has no blind index")


def test_blind_index_on_a_row_that_is_not_protected_is_refused(indexed: Workspace) -> None:
    assert EMAILS[3] is None
    _set_indexes(indexed, {3: _indexes(indexed)[0]})
    _every_read_refuses(indexed, r"row group 0 row 3: users.email is not protected but has a blind index")


def test_indexes_under_the_old_key_verify_while_a_reindex_is_under_way(indexed: Workspace) -> None:
    indexed.start_reindex("users.email")
    indexed.reindex("users", DAYS[1].isoformat())  # one partition under the new key, one still under the old
    for day in DAYS:
        assert indexed.verify("users", day.isoformat()) == {"users.email": 4}
