"""The aws-kms key provider against a real moto server on loopback (S3 + KMS over HTTP).

Everything here talks to moto over HTTP with real boto3 clients. moto cannot enforce
key policies, revoke grants or throttle, so access denial and throttling are injected
with a botocore `before-send` handler (tests/faults.py); nothing else is mocked.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import botocore.retries.standard
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from demo.sample_data import land_sample_lake, snapshot_path, users_table
from fieldcrypt import (
    AccessDeniedError,
    IntegrityError,
    KeyConfig,
    KeyProviderError,
    PolicyError,
    ThrottledError,
    Workspace,
    WorkspaceConfig,
)
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys.binding import BINDING_PATH
from fieldcrypt.keys.providers.aws_kms import AwsKmsProvider, key_policy_statements, kms_client
from fieldcrypt.keys.providers.base import EncryptionContext
from fieldcrypt.lake.store import TEMP_MARKER
from tests.catalogs import TEST_DATASETS
from tests.conftest import WORKSPACE
from tests.faults import KmsFaults

# Ingestion times on this day are all after "now", so every row is encrypted on enablement.
DAY = date(2099, 1, 1)
DAY1, DAY2, DAY3 = "2099-01-01", "2099-01-02", "2099-01-03"
ROWS = 40
CONTEXT_KEYS = {"fieldcrypt:workspace", "fieldcrypt:dataset", "fieldcrypt:attribute"}


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries without sleeping: the retry count is under test, not botocore's backoff."""
    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, context: 0)


@pytest.fixture
def make_kms_workspace(moto: str, tmp_path: Path) -> Callable[..., Workspace]:
    def make(key: str, lake: str | None = None, ttl: float | None = None, **key_options: Any) -> Workspace:
        key_config = KeyConfig(
            provider="aws-kms", kms_key=key, kms_region="us-east-1", kms_endpoint_url=moto, **key_options
        )
        extra: dict[str, Any] = {} if ttl is None else {"data_key_ttl_seconds": ttl}
        config = WorkspaceConfig(
            WORKSPACE,
            lake or str(tmp_path / "lake"),
            key_config,
            s3_endpoint_url=moto,
            s3_region="us-east-1",
            datasets=TEST_DATASETS,
            **extra,
        )
        return Workspace(config, actor="test")

    return make


@pytest.fixture
def key_a(make_kms_key: Callable[..., str]) -> str:
    return make_kms_key(Description="fieldcrypt key A")


@pytest.fixture
def key_b(make_kms_key: Callable[..., str]) -> str:
    return make_kms_key(Description="fieldcrypt key B")


@pytest.fixture(params=["local", "s3"])
def lake_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return f"s3://{bucket}/prefix"
    return str(tmp_path / "lake")


class FakeClock:
    """A monotonic clock the test moves by hand, so TTL expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- helpers ------------------------------------------------------------------------------


def land_users(workspace: Workspace, days: int = 1) -> None:
    land_sample_lake(workspace.store, DAY, days, users=ROWS, events=ROWS)


def enable_users(workspace: Workspace, *attributes: str) -> None:
    masks = {"users.email": "email", "users.phone": "last4"}
    for attribute in attributes or ("users.email",):
        workspace.enable(attribute, masks[attribute], acknowledge_irreversible=True)


def original(partition: str, column: str) -> list[str | None]:
    """The values landed in a users partition (the sample is seeded by its day)."""
    values: list[str | None] = users_table(date.fromisoformat(partition), ROWS).column(column).to_pylist()
    return values


def revealed(workspace: Workspace, partition: str, attribute: str) -> list[str | None]:
    values: list[str | None] = []
    for batch in workspace.reveal("users", partition, [attribute]):
        values.extend(batch.column(attribute).to_pylist())
    return values


def users_file(workspace: Workspace, partition: str) -> pa.Table:
    with workspace.store.open_input(snapshot_path("users", partition)) as handle:
        return pq.read_table(handle)


def users_bytes(workspace: Workspace, partition: str) -> bytes:
    return workspace.store.read_bytes(snapshot_path("users", partition))


def distinct_wrapped_keys(table: pa.Table) -> set[bytes]:
    found: set[bytes] = set()
    for name in table.column_names:
        if name.endswith("__fc_dek"):
            column = table.column(name).combine_chunks()
            if pa.types.is_dictionary(column.type):
                column = column.dictionary_decode()
            found.update(pc.unique(column.drop_null()).to_pylist())
    return found


def lake_snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def parse_wrapped_key(value: bytes) -> tuple[str, str, str, bytes]:
    """The wrapped-key layout of docs/FORMAT.md, parsed by hand (no fieldcrypt code)."""
    assert value[0] == 1
    at = 1
    fields: list[bytes] = []
    for width in (1, 2, 2, 2):
        (length,) = struct.unpack(">B" if width == 1 else ">H", value[at : at + width])
        at += width
        fields.append(value[at : at + length])
        at += length
    assert at == len(value)
    provider, key_id, version, wrapped = fields
    return provider.decode(), key_id.decode(), version.decode(), wrapped


def cell_associated_data(dataset: str, attribute: str, row_key: str) -> bytes:
    """The associated data layout of docs/FORMAT.md, built by hand."""
    ds, attr, key = dataset.encode(), attribute.encode(), row_key.encode()
    return (
        b"\x01"
        + struct.pack(">H", len(ds))
        + ds
        + struct.pack(">H", len(attr))
        + attr
        + b"\x01"
        + struct.pack(">I", len(key))
        + key
    )


# -- round trip ---------------------------------------------------------------------------


def test_protect_then_reveal_round_trips_through_kms(
    make_kms_workspace: Callable[..., Workspace], key_a: str, lake_uri: str
) -> None:
    workspace = make_kms_workspace(key_a, lake=lake_uri)
    land_users(workspace)
    enable_users(workspace, "users.email", "users.phone")

    report = workspace.protect("users", DAY1)

    assert report.rewritten
    assert report.master_key == key_a
    masked = [None if v is None else "****@" + v.split("@")[1].lower() for v in original(DAY1, "email")]
    assert users_file(workspace, DAY1).column("email").to_pylist() == masked
    assert revealed(workspace, DAY1, "users.email") == original(DAY1, "email")
    assert revealed(workspace, DAY1, "users.phone") == original(DAY1, "phone")


def test_a_second_workspace_with_a_cold_cache_reveals_through_kms(
    make_kms_workspace: Callable[..., Workspace], key_a: str, lake_uri: str, kms_faults: KmsFaults
) -> None:
    writer = make_kms_workspace(key_a, lake=lake_uri)
    land_users(writer)
    enable_users(writer)
    writer.protect("users", DAY1)
    kms_faults.reset_counts()

    reader = make_kms_workspace(key_a, lake=lake_uri)

    assert revealed(reader, DAY1, "users.email") == original(DAY1, "email")
    # one Decrypt per distinct data key, plus one for the policy's MAC key (the policy is authenticated)
    # and one for the audit key (the reveal is recorded in the chained audit log)
    assert kms_faults.calls["Decrypt"] == len(distinct_wrapped_keys(users_file(reader, DAY1))) + 2


# -- encryption context and key pinning -----------------------------------------------------


def test_every_data_key_call_carries_workspace_dataset_and_attribute_as_encryption_context(
    make_kms_workspace: Callable[..., Workspace], key_a: str, kms_faults: KmsFaults
) -> None:
    workspace = make_kms_workspace(key_a)
    land_users(workspace)
    enable_users(workspace, "users.email", "users.phone")
    kms_faults.reset_counts()

    workspace.protect("users", DAY1)

    data_key_calls = [(op, body) for op, body in kms_faults.requests if op in ("GenerateDataKey", "Decrypt")]
    assert {op for op, _ in data_key_calls} == {"GenerateDataKey", "Decrypt"}
    contexts = {tuple(sorted(body["EncryptionContext"].items())) for _, body in data_key_calls}
    assert contexts == {
        (("fieldcrypt:attribute", attribute), ("fieldcrypt:dataset", "users"), ("fieldcrypt:workspace", WORKSPACE))
        for attribute in ("email", "phone")
    }


def test_decrypt_is_pinned_to_the_key_id_named_in_the_wrapped_key(
    make_kms_workspace: Callable[..., Workspace], key_a: str, kms_faults: KmsFaults
) -> None:
    workspace = make_kms_workspace(key_a)
    land_users(workspace)
    enable_users(workspace)
    workspace.protect("users", DAY1)
    kms_faults.reset_counts()

    make_kms_workspace(key_a).verify("users", DAY1)

    decrypts = [body for op, body in kms_faults.requests if op == "Decrypt"]
    assert decrypts
    assert {body["KeyId"] for body in decrypts} == {key_a}


def test_wrapped_data_key_does_not_decrypt_under_another_encryption_context(
    make_kms_workspace: Callable[..., Workspace], key_a: str, kms: Any
) -> None:
    workspace = make_kms_workspace(key_a)
    land_users(workspace)
    enable_users(workspace)
    workspace.protect("users", DAY1)
    _, key_id, _, wrapped = parse_wrapped_key(next(iter(distinct_wrapped_keys(users_file(workspace, DAY1)))))
    right = {"fieldcrypt:workspace": WORKSPACE, "fieldcrypt:dataset": "users", "fieldcrypt:attribute": "email"}

    for wrong in (
        {**right, "fieldcrypt:attribute": "phone"},
        {**right, "fieldcrypt:dataset": "events"},
        {**right, "fieldcrypt:workspace": "other-customer"},
        {},
    ):
        with pytest.raises(ClientError) as refused:
            kms.decrypt(CiphertextBlob=wrapped, KeyId=key_id, EncryptionContext=wrong)
        assert refused.value.response["Error"]["Code"] == "InvalidCiphertextException"
    assert len(kms.decrypt(CiphertextBlob=wrapped, KeyId=key_id, EncryptionContext=right)["Plaintext"]) == 32


def test_a_third_party_decrypts_a_cell_with_boto3_and_cryptography_alone(
    make_kms_workspace: Callable[..., Workspace], key_a: str, kms: Any
) -> None:
    workspace = make_kms_workspace(key_a)
    land_users(workspace)
    enable_users(workspace)
    workspace.protect("users", DAY1)
    table = users_file(workspace, DAY1)
    row = 0
    user_id = table.column("user_id")[row].as_py()
    cell = table.column("email__fc_ct")[row].as_py()
    provider, key_id, version, wrapped = parse_wrapped_key(table.column("email__fc_dek")[row].as_py())
    assert (provider, key_id, version) == ("aws-kms", key_a, "")

    context = {"fieldcrypt:workspace": WORKSPACE, "fieldcrypt:dataset": "users", "fieldcrypt:attribute": "email"}
    data_key = kms.decrypt(CiphertextBlob=wrapped, KeyId=key_id, EncryptionContext=context)["Plaintext"]
    assert cell[0] == 1
    plaintext = AESGCM(data_key).decrypt(cell[1:13], cell[13:], cell_associated_data("users", "email", str(user_id)))

    assert plaintext.decode() == original(DAY1, "email")[row]


def test_wrapped_key_relabelled_with_another_kms_key_is_not_decrypted(
    make_kms_workspace: Callable[..., Workspace], key_a: str, key_b: str, moto: str
) -> None:
    workspace = make_kms_workspace(key_a)
    land_users(workspace)
    enable_users(workspace)
    workspace.protect("users", DAY1)
    stored = WrappedKey.from_bytes(next(iter(distinct_wrapped_keys(users_file(workspace, DAY1)))))
    relabelled = WrappedKey("aws-kms", key_b, "", stored.wrapped)
    provider_b = AwsKmsProvider(key_b, WORKSPACE, kms_client("us-east-1", moto, "standard", 3))

    # Decrypt is pinned to key B, which did not wrap this blob: real KMS answers
    # IncorrectKeyException (IntegrityError), moto AccessDeniedException. Never a data key.
    with pytest.raises((IntegrityError, AccessDeniedError)):
        provider_b.unwrap(relabelled, EncryptionContext(WORKSPACE, "users", "email"))


def test_wrapped_key_of_a_master_key_foreign_to_the_workspace_is_refused_without_calling_kms(
    key_a: str, key_b: str, moto: str, kms_faults: KmsFaults
) -> None:
    provider = AwsKmsProvider(key_a, WORKSPACE, kms_client("us-east-1", moto, "standard", 3))
    kms_faults.reset_counts()

    with pytest.raises(KeyProviderError, match="not a master key of this workspace") as refused:
        provider.unwrap(WrappedKey("aws-kms", key_b, "", b"\x01" * 64), EncryptionContext(WORKSPACE, "users", "email"))

    assert key_b in str(refused.value)
    assert sum(kms_faults.calls.values()) == 0


# -- naming the key -----------------------------------------------------------------------


def test_master_key_given_by_alias_is_resolved_to_its_arn(
    make_kms_workspace: Callable[..., Workspace], key_a: str, kms: Any
) -> None:
    kms.create_alias(AliasName="alias/fieldcrypt-acme", TargetKeyId=key_a)
    workspace = make_kms_workspace("alias/fieldcrypt-acme")
    land_users(workspace)
    enable_users(workspace)

    report = workspace.protect("users", DAY1)

    assert report.master_key == key_a
    assert workspace.bindings.load().current.key_id == key_a  # type: ignore[union-attr]
    assert {WrappedKey.from_bytes(v).key_id for v in distinct_wrapped_keys(users_file(workspace, DAY1))} == {key_a}
    assert revealed(workspace, DAY1, "users.email") == original(DAY1, "email")


def test_lake_protected_through_an_alias_is_read_by_a_workspace_configured_with_the_key_arn(
    make_kms_workspace: Callable[..., Workspace], key_a: str, kms: Any
) -> None:
    kms.create_alias(AliasName="alias/fieldcrypt-acme", TargetKeyId=key_a)
    by_alias = make_kms_workspace("alias/fieldcrypt-acme")
    land_users(by_alias)
    enable_users(by_alias)
    by_alias.protect("users", DAY1)

    assert revealed(make_kms_workspace(key_a), DAY1, "users.email") == original(DAY1, "email")


def test_key_policy_statement_names_the_key_the_role_and_the_workspace_context(key_a: str) -> None:
    role = "arn:aws:iam::210987654321:role/fieldcrypt-platform"

    statements = json.loads(key_policy_statements(key_a, role, WORKSPACE))

    assert {s["Resource"] for s in statements} == {key_a}
    assert {s["Principal"]["AWS"] for s in statements} == {role}
    data_keys = next(s for s in statements if "kms:Decrypt" in s["Action"])
    assert set(data_keys["Action"]) == {"kms:GenerateDataKey", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo"}
    assert data_keys["Condition"] == {"StringEquals": {"kms:EncryptionContext:fieldcrypt:workspace": WORKSPACE}}
    assert any(s["Action"] == "kms:DescribeKey" for s in statements)


# -- DescribeKey validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("create", "refused_property"),
    [
        ({"KeySpec": "RSA_2048", "KeyUsage": "ENCRYPT_DECRYPT"}, "KeySpec"),
        ({"MultiRegion": True}, "MultiRegion"),
    ],
    ids=["asymmetric", "multi_region"],
)
def test_key_with_a_wrong_property_is_refused_naming_it(
    make_kms_key: Callable[..., str], moto: str, create: dict[str, Any], refused_property: str
) -> None:
    arn = make_kms_key(**create)

    with pytest.raises(KeyProviderError, match=f"{refused_property} is") as refused:
        AwsKmsProvider(arn, WORKSPACE, kms_client("us-east-1", moto, "standard", 3))

    assert arn in str(refused.value)


def test_disabled_key_is_refused_naming_its_key_state(make_kms_key: Callable[..., str], kms: Any, moto: str) -> None:
    arn = make_kms_key()
    kms.disable_key(KeyId=arn.rsplit("/", 1)[-1])  # moto looks keys up by id, not ARN

    with pytest.raises(KeyProviderError, match="KeyState is Disabled, must be Enabled"):
        AwsKmsProvider(arn, WORKSPACE, kms_client("us-east-1", moto, "standard", 3))


def test_unknown_key_is_refused_as_not_found(moto: str, kms: Any) -> None:
    with pytest.raises(KeyProviderError, match="not found"):
        AwsKmsProvider("alias/does-not-exist", WORKSPACE, kms_client("us-east-1", moto, "standard", 3))


def test_refused_key_leaves_the_lake_unbound_and_unchanged(
    make_kms_workspace: Callable[..., Workspace], make_kms_key: Callable[..., str], tmp_path: Path
) -> None:
    asymmetric = make_kms_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    workspace = make_kms_workspace(asymmetric)
    land_users(workspace)
    before = lake_snapshot(tmp_path / "lake")

    with pytest.raises(KeyProviderError, match="KeySpec is RSA_2048"):  # enabling authenticates the policy
        enable_users(workspace)

    assert not workspace.store.exists(BINDING_PATH)
    assert lake_snapshot(tmp_path / "lake") == before


# -- retry configuration ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["standard", "adaptive"])
def test_standard_and_adaptive_retry_modes_are_accepted(moto: str, mode: str) -> None:
    client = kms_client("us-east-1", moto, mode, 4)

    assert client.meta.config.retries == {"mode": mode, "total_max_attempts": 4}


@pytest.mark.parametrize("mode", ["legacy", "", "STANDARD"])
def test_any_other_retry_mode_is_refused(moto: str, mode: str) -> None:
    with pytest.raises(KeyProviderError, match="retry mode .* is not one of standard, adaptive"):
        kms_client("us-east-1", moto, mode, 3)


def test_key_config_refuses_an_unknown_retry_mode_when_constructed() -> None:
    with pytest.raises(KeyProviderError, match="retry mode 'legacy'"):
        KeyConfig(provider="aws-kms", kms_key="alias/any", kms_retry_mode="legacy")


def test_key_config_refuses_fewer_than_one_attempt() -> None:
    with pytest.raises(KeyProviderError, match="at least 1"):
        KeyConfig(provider="aws-kms", kms_key="alias/any", kms_max_attempts=0)


# -- revocation ---------------------------------------------------------------------------
# moto cannot enforce key policies, so "revoking" the platform role's access is an
# AccessDeniedException injected for Decrypt and GenerateDataKey (what KMS answers then).


@pytest.fixture
def revoked(
    make_kms_workspace: Callable[..., Workspace], key_a: str, kms_faults: KmsFaults
) -> tuple[Workspace, FakeClock, KmsFaults]:
    """DAY1 protected (its data keys cached), DAY2 landed unprotected, then access revoked."""
    workspace = make_kms_workspace(key_a)
    land_users(workspace, days=3)
    clock = FakeClock()
    workspace.key_cache().clock = clock
    workspace.key_cache().clear()  # the policy's MAC key, cached when the lake was bound, is cached again on this clock
    enable_users(workspace)
    workspace.protect("users", DAY1)
    kms_faults.fail("Decrypt", "AccessDeniedException")
    kms_faults.fail("GenerateDataKey", "AccessDeniedException")
    kms_faults.reset_counts()
    return workspace, clock, kms_faults


def test_cached_data_keys_keep_decrypting_after_access_is_revoked(
    revoked: tuple[Workspace, FakeClock, KmsFaults],
) -> None:
    workspace, clock, faults = revoked
    clock.advance(workspace.key_cache().ttl_seconds - 1)

    assert revealed(workspace, DAY1, "users.email") == original(DAY1, "email")
    assert faults.calls["Decrypt"] == 0


def test_cached_data_key_keeps_encrypting_after_access_is_revoked(
    revoked: tuple[Workspace, FakeClock, KmsFaults],
) -> None:
    workspace, clock, faults = revoked
    clock.advance(workspace.key_cache().ttl_seconds - 1)

    report = workspace.protect("users", DAY2)

    assert report.newly_encrypted == sum(v is not None for v in original(DAY2, "email"))
    assert faults.calls["GenerateDataKey"] == faults.calls["Decrypt"] == 0


def test_after_the_cache_ttl_revoked_access_stops_decryption_with_access_denied(
    revoked: tuple[Workspace, FakeClock, KmsFaults],
) -> None:
    workspace, clock, _ = revoked
    clock.advance(workspace.key_cache().ttl_seconds)

    with pytest.raises(AccessDeniedError, match="access denied") as denied:
        revealed(workspace, DAY1, "users.email")

    assert "Decrypt" in str(denied.value)


def test_access_denied_is_reported_at_once_without_retrying(revoked: tuple[Workspace, FakeClock, KmsFaults]) -> None:
    workspace, clock, faults = revoked
    clock.advance(workspace.key_cache().ttl_seconds)

    with pytest.raises(AccessDeniedError):
        revealed(workspace, DAY1, "users.email")

    assert faults.calls["Decrypt"] == 1


def test_after_the_cache_ttl_revoked_access_stops_protection_and_changes_nothing_stored(
    revoked: tuple[Workspace, FakeClock, KmsFaults], tmp_path: Path
) -> None:
    workspace, clock, _ = revoked
    clock.advance(workspace.key_cache().ttl_seconds)
    before = lake_snapshot(tmp_path / "lake")

    with pytest.raises(AccessDeniedError, match="access denied") as denied:
        workspace.protect("users", DAY2)

    assert "Decrypt" in str(denied.value)  # the policy's MAC key is unwrapped first, then refused
    assert lake_snapshot(tmp_path / "lake") == before


def test_work_resumes_cleanly_once_access_is_restored(revoked: tuple[Workspace, FakeClock, KmsFaults]) -> None:
    workspace, clock, faults = revoked
    clock.advance(workspace.key_cache().ttl_seconds)
    with pytest.raises(AccessDeniedError):
        workspace.protect("users", DAY2)
    with pytest.raises(AccessDeniedError):
        revealed(workspace, DAY1, "users.email")

    faults.clear()

    assert workspace.protect("users", DAY2).rewritten
    assert revealed(workspace, DAY1, "users.email") == original(DAY1, "email")
    assert revealed(workspace, DAY2, "users.email") == original(DAY2, "email")


# -- throttling ---------------------------------------------------------------------------
# moto does not throttle, so ThrottlingException is injected (what KMS answers over quota).


@pytest.mark.parametrize("throttled", [1, 2])
def test_throttling_fewer_times_than_the_attempt_budget_is_retried_to_success(
    make_kms_workspace: Callable[..., Workspace], key_a: str, kms_faults: KmsFaults, no_backoff: None, throttled: int
) -> None:
    workspace = make_kms_workspace(key_a, kms_max_attempts=3)
    land_users(workspace)
    enable_users(workspace)
    workspace.key_cache()
    kms_faults.reset_counts()
    kms_faults.fail("GenerateDataKey", "ThrottlingException", times=throttled)

    report = workspace.protect("users", DAY1)

    assert report.rewritten
    assert kms_faults.calls["GenerateDataKey"] == throttled + 1
    assert revealed(workspace, DAY1, "users.email") == original(DAY1, "email")


def test_persistent_throttling_raises_throttled_error_after_exactly_the_configured_attempts(
    make_kms_workspace: Callable[..., Workspace], key_a: str, kms_faults: KmsFaults, no_backoff: None, tmp_path: Path
) -> None:
    workspace = make_kms_workspace(key_a, kms_max_attempts=4)
    land_users(workspace)
    enable_users(workspace)
    workspace.key_cache()
    before = lake_snapshot(tmp_path / "lake")
    kms_faults.reset_counts()
    kms_faults.fail("GenerateDataKey", "ThrottlingException")

    with pytest.raises(ThrottledError, match="throttled"):
        workspace.protect("users", DAY1)

    assert kms_faults.calls["GenerateDataKey"] == 4
    assert lake_snapshot(tmp_path / "lake") == before


# -- binding ------------------------------------------------------------------------------


def test_lake_bound_to_one_kms_key_refuses_a_workspace_configured_with_another(
    make_kms_workspace: Callable[..., Workspace], key_a: str, key_b: str, tmp_path: Path
) -> None:
    workspace_a = make_kms_workspace(key_a)
    land_users(workspace_a, days=2)
    enable_users(workspace_a)
    workspace_a.protect("users", DAY1)
    before = lake_snapshot(tmp_path / "lake")

    with pytest.raises(KeyProviderError, match="bound to master key") as refused:
        make_kms_workspace(key_b).protect("users", DAY2)

    assert key_a in str(refused.value) and key_b in str(refused.value)
    assert "rotation" in str(refused.value)
    assert lake_snapshot(tmp_path / "lake") == before


# -- rotation (core level) ----------------------------------------------------------------


@pytest.fixture
def rotating(make_kms_workspace: Callable[..., Workspace], key_a: str, key_b: str, kms_faults: KmsFaults) -> Workspace:
    """Two users partitions protected under key A with several data keys each (a third landed
    but unprotected); rotation to B started."""
    workspace = make_kms_workspace(key_a)
    land_users(workspace, days=3)
    enable_users(workspace, "users.email", "users.phone")
    workspace.key_cache().max_cells_per_key = 8  # several data keys per attribute and partition
    workspace.protect("users", DAY1)
    workspace.protect("users", DAY2)
    workspace.start_rotation(to_kms_key=key_b)
    kms_faults.reset_counts()
    return workspace


def test_rotation_moves_every_wrapped_key_to_the_new_kms_key(rotating: Workspace, key_b: str) -> None:
    rotating.rotate("users", DAY1)

    assert {WrappedKey.from_bytes(v).key_id for v in distinct_wrapped_keys(users_file(rotating, DAY1))} == {key_b}


def test_protection_started_during_rotation_wraps_under_the_new_key(rotating: Workspace, key_b: str) -> None:
    rotating.protect("users", DAY3)

    assert {WrappedKey.from_bytes(v).key_id for v in distinct_wrapped_keys(users_file(rotating, DAY3))} == {key_b}
    assert set(rotating.rotation_status().remaining) == {"users/2099-01-01", "users/2099-01-02"}


def test_rotation_leaves_every_column_but_the_wrapped_keys_byte_identical(rotating: Workspace) -> None:
    before = users_file(rotating, DAY1)

    rotating.rotate("users", DAY1)

    after = users_file(rotating, DAY1)
    kept = [name for name in before.column_names if not name.endswith("__fc_dek")]
    assert {"email__fc_ct", "phone__fc_ct"} <= set(kept)
    assert after.select(kept).equals(before.select(kept))


def test_rotation_makes_one_reencrypt_call_per_distinct_wrapped_key(rotating: Workspace, kms_faults: KmsFaults) -> None:
    distinct = distinct_wrapped_keys(users_file(rotating, DAY1))
    assert len(distinct) > 2

    report = rotating.rotate("users", DAY1)

    assert kms_faults.calls["ReEncrypt"] == len(distinct) == report.rewrapped
    assert kms_faults.calls["GenerateDataKey"] == 0


def test_partition_already_under_the_new_key_is_skipped_without_kms_calls(
    rotating: Workspace, kms_faults: KmsFaults
) -> None:
    rotating.rotate("users", DAY1)
    before = users_bytes(rotating, DAY1)
    kms_faults.reset_counts()

    report = rotating.rotate("users", DAY1)

    assert not report.rewritten
    assert sum(kms_faults.calls.values()) == 0
    assert users_bytes(rotating, DAY1) == before


def test_mid_rotation_both_rotated_and_unrotated_partitions_reveal(
    rotating: Workspace, make_kms_workspace: Callable[..., Workspace], key_b: str
) -> None:
    rotating.rotate("users", DAY1)

    for workspace in (rotating, make_kms_workspace(key_b)):
        for partition in (DAY1, DAY2):
            assert revealed(workspace, partition, "users.email") == original(partition, "email")
            assert revealed(workspace, partition, "users.phone") == original(partition, "phone")


def test_rewrap_denied_by_kms_leaves_the_partition_file_byte_identical(
    rotating: Workspace, kms_faults: KmsFaults
) -> None:
    before = users_bytes(rotating, DAY1)
    kms_faults.fail("ReEncrypt", "AccessDeniedException")

    with pytest.raises(AccessDeniedError, match="ReEncrypt"):
        rotating.rotate("users", DAY1)

    assert users_bytes(rotating, DAY1) == before
    assert not [p for p in rotating.store.list_files("users") if TEMP_MARKER in p]
    assert "users/2099-01-01" in rotating.rotation_status().remaining


def test_rotation_rerun_after_a_denied_rewrap_completes(rotating: Workspace, kms_faults: KmsFaults) -> None:
    kms_faults.fail("ReEncrypt", "AccessDeniedException")
    with pytest.raises(AccessDeniedError):
        rotating.rotate("users", DAY1)
    kms_faults.clear()

    report = rotating.rotate("users", DAY1)

    assert report.rewritten
    assert "users/2099-01-01" not in rotating.rotation_status().remaining
    assert revealed(rotating, DAY1, "users.email") == original(DAY1, "email")


def test_complete_rotation_is_refused_while_a_partition_remains_under_the_old_key(rotating: Workspace) -> None:
    rotating.rotate("users", DAY1)

    with pytest.raises(PolicyError, match="rotation incomplete") as refused:
        rotating.complete_rotation()

    assert "users/2099-01-02" in str(refused.value)
    assert "users/2099-01-01" not in str(refused.value)
    assert rotating.bindings.load().active_campaign is not None  # type: ignore[union-attr]


def test_complete_rotation_succeeds_once_every_partition_is_rotated(
    rotating: Workspace, make_kms_workspace: Callable[..., Workspace], key_a: str, key_b: str
) -> None:
    rotating.rotate("users", DAY1)
    rotating.rotate("users", DAY2)

    campaign = rotating.complete_rotation()

    assert (campaign.status, campaign.old.key_id, campaign.new.key_id) == ("complete", key_a, key_b)
    assert rotating.rotation_status().complete
    assert revealed(make_kms_workspace(key_b), DAY2, "users.email") == original(DAY2, "email")
    with pytest.raises(KeyProviderError, match="bound to master key .* rotated out by rot-"):
        make_kms_workspace(key_a).verify("users", DAY1)


def test_rotation_to_a_refused_kms_key_does_not_start(
    make_kms_workspace: Callable[..., Workspace], make_kms_key: Callable[..., str], key_a: str
) -> None:
    workspace = make_kms_workspace(key_a)
    land_users(workspace)
    enable_users(workspace)
    workspace.protect("users", DAY1)
    multi_region = make_kms_key(MultiRegion=True)

    with pytest.raises(KeyProviderError, match="MultiRegion is True"):
        workspace.start_rotation(to_kms_key=multi_region)

    assert workspace.bindings.load().active_campaign is None  # type: ignore[union-attr]
