"""Control state that cannot be silently corrupted (issue 8): key check values, stale
processes, validate-first changes, resumable completion, authenticated policy, keystore
hardening, decryption audit, cache eviction."""

from __future__ import annotations

import base64
import json
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fieldcrypt import KeyMaterialError, KeyProviderError, PolicyError, Workspace
from fieldcrypt.errors import KeyVersionError, WrongMasterKeyError
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys.binding import BINDING_PATH
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.keys.keystore import Keystore, parse_base64_key
from fieldcrypt.keys.policy_auth import UnauthenticatedPolicyError
from fieldcrypt.keys.providers.local import LocalKeyProvider
from fieldcrypt.policy.policy import POLICY_PATH, DatasetSpec, Policy
from tests.conftest import SAMPLE_DAY
from tests.policy_support import backdate_policy

DAY = SAMPLE_DAY.isoformat()


class FakeClock:
    """A monotonic clock moved by hand: TTL expiry without sleeping."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def protected(local_workspace: Workspace) -> Workspace:
    local_workspace.enable("users.email", "email", acknowledge_irreversible=True)
    backdate_policy(local_workspace)
    assert local_workspace.protect("users", DAY).newly_encrypted > 0
    return local_workspace


def fresh(workspace: Workspace, actor: str = "test") -> Workspace:
    """Another process on the same workspace configuration."""
    return Workspace(workspace.config, actor=actor)


def users_file(workspace: Workspace) -> Path:
    return Path(workspace.store.full_path(workspace.files("users", DAY)[0]))


def keystore_doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def write_keystore_doc(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc))
    path.chmod(0o600)


def flip_key_byte(path: Path, version: int = 1) -> None:
    doc = keystore_doc(path)
    entry = next(v for v in doc["versions"] if v["version"] == version)
    key = bytearray(base64.b64decode(entry["key"]))
    key[0] ^= 0x01
    entry["key"] = base64.b64encode(bytes(key)).decode()
    write_keystore_doc(path, doc)


def policy_doc(workspace: Workspace) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Path(workspace.store.full_path(POLICY_PATH)).read_text())
    return doc


def write_policy_doc(workspace: Workspace, doc: dict[str, Any]) -> None:
    Path(workspace.store.full_path(POLICY_PATH)).write_text(json.dumps(doc, indent=2) + "\n")


def operations(workspace: Workspace) -> list[str]:
    return [e["operation"] for e in workspace.audit.events()]


# -- 1. key check value ------------------------------------------------------------------------


def test_keystore_key_with_one_byte_flipped_is_refused_as_a_wrong_master_key_before_any_write(
    protected: Workspace, keystore_path: Path
) -> None:
    flip_key_byte(keystore_path)
    before = users_file(protected).read_bytes()
    with pytest.raises(WrongMasterKeyError, match="wrong master key"):
        fresh(protected).protect("users", DAY)
    assert users_file(protected).read_bytes() == before


def test_keystore_holding_other_key_bytes_under_the_bound_id_and_version_is_refused_by_the_binding(
    protected: Workspace, keystore_path: Path
) -> None:
    doc = keystore_doc(keystore_path)
    impostor = Keystore.create(keystore_path.with_name("other.json"), "acme")
    other = keystore_doc(impostor.path)["versions"][0]
    doc["versions"][0]["key"], doc["versions"][0]["kcv"] = other["key"], other["kcv"]  # a self-consistent keystore
    write_keystore_doc(keystore_path, doc)
    with pytest.raises(WrongMasterKeyError, match="wrong master key") as refused:
        fresh(protected).protect("users", DAY)
    assert "tampered" not in str(refused.value)


def test_keystore_and_binding_without_check_values_get_them_on_first_use_and_it_is_audited(
    protected: Workspace, keystore_path: Path
) -> None:
    doc = keystore_doc(keystore_path)
    del doc["versions"][0]["kcv"]
    write_keystore_doc(keystore_path, doc)
    binding_path = Path(protected.store.full_path(BINDING_PATH))
    binding = json.loads(binding_path.read_text())
    del binding["check_values"]
    binding_path.write_text(json.dumps(binding))

    fresh(protected).protect("users", DAY)

    assert keystore_doc(keystore_path)["versions"][0]["kcv"]
    assert json.loads(binding_path.read_text())["check_values"]
    assert operations(protected).count("key_check_value_added") == 2


@pytest.mark.parametrize("policy_authenticated", [True, False], ids=["policy-mac-key", "data-keys-of-a-legacy-lake"])
def test_legacy_binding_never_adopts_the_check_value_of_a_keystore_whose_bytes_do_not_fit_the_lake(
    protected: Workspace, keystore_path: Path, policy_authenticated: bool
) -> None:
    if not policy_authenticated:
        legacy = policy_doc(protected)
        del legacy["authentication"]
        write_policy_doc(protected, legacy)
    doc = keystore_doc(keystore_path)
    impostor = Keystore.create(keystore_path.with_name("other.json"), "acme")
    doc["versions"][0]["key"] = keystore_doc(impostor.path)["versions"][0]["key"]
    del doc["versions"][0]["kcv"]  # a keystore and binding from before check values, the key swapped meanwhile
    write_keystore_doc(keystore_path, doc)
    binding_path = Path(protected.store.full_path(BINDING_PATH))
    binding = json.loads(binding_path.read_text())
    del binding["check_values"]
    binding_path.write_text(json.dumps(binding))
    keystore_before, binding_before = keystore_path.read_bytes(), binding_path.read_bytes()

    workspace = fresh(protected)
    with pytest.raises(WrongMasterKeyError, match="do not unwrap the data keys"):
        workspace.protect("users", DAY) if policy_authenticated else workspace.adopt_policy()

    assert keystore_path.read_bytes() == keystore_before
    assert binding_path.read_bytes() == binding_before


# -- 2. stale long-lived process ---------------------------------------------------------------


def test_process_loaded_before_another_process_rotated_stops_instead_of_wrapping_under_the_retired_key(
    protected: Workspace,
) -> None:
    from demo.sample_data import land_sample_lake

    land_sample_lake(protected.store, SAMPLE_DAY.replace(day=2), 1, users=50, events=10)
    clock = FakeClock()
    protected.key_cache().clock = clock
    protected.key_cache().clear()
    protected.policy()  # this process has its keys cached
    other = fresh(protected, actor="rotator")
    other.start_rotation()
    other.rotate("users", DAY)
    other.complete_rotation()
    clock.now += protected.key_cache().ttl_seconds  # the stale process's data keys expire
    rel = Path(protected.store.full_path(protected.files("users", "2026-11-02")[0]))
    before = rel.read_bytes()
    with pytest.raises(KeyProviderError, match="moved from .* to .*restart this run"):
        protected.protect("users", "2026-11-02")
    assert rel.read_bytes() == before


# -- 3. validate first, write last -------------------------------------------------------------


def test_second_rotate_start_during_a_campaign_changes_neither_keystore_nor_binding(
    protected: Workspace, keystore_path: Path
) -> None:
    protected.start_rotation()
    keystore_before = keystore_path.read_bytes()
    binding_before = Path(protected.store.full_path(BINDING_PATH)).read_bytes()
    with pytest.raises(PolicyError, match="in progress"):
        fresh(protected).start_rotation()
    assert keystore_path.read_bytes() == keystore_before
    assert Path(protected.store.full_path(BINDING_PATH)).read_bytes() == binding_before


def test_workspace_stays_usable_after_a_refused_second_rotate_start(protected: Workspace) -> None:
    protected.start_rotation()
    with pytest.raises(PolicyError):
        fresh(protected).start_rotation()
    workspace = fresh(protected)
    workspace.rotate("users", DAY)
    workspace.complete_rotation()
    assert fresh(protected).verify("users", DAY)["users.email"] > 0


# -- 4. rotate complete resumable --------------------------------------------------------------


def test_rotate_complete_run_again_after_a_crash_before_retirement_retires_the_old_version(
    protected: Workspace, keystore_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    protected.start_rotation()
    protected.rotate("users", DAY)

    def crash(self: Keystore, version: int) -> None:  # fault injection: the process dies before retiring
        raise SystemExit("killed")

    with monkeypatch.context() as patch:
        patch.setattr(Keystore, "retire", crash)
        with pytest.raises(SystemExit):
            fresh(protected).complete_rotation()
    assert Keystore.load(keystore_path).versions[1].state == "enabled"

    fresh(protected).complete_rotation()

    assert Keystore.load(keystore_path).versions[1].state == "retired"


# -- 5. authenticated policy -------------------------------------------------------------------


def test_policy_with_enabled_at_moved_later_is_refused(protected: Workspace) -> None:
    doc = policy_doc(protected)
    doc["attributes"]["users.email"]["enabled_at"] = "2099-01-01T00:00:00.000000Z"
    write_policy_doc(protected, doc)
    with pytest.raises(PolicyError, match="failed authentication"):
        fresh(protected).protect("users", DAY)


def test_policy_with_an_attribute_deleted_is_refused(protected: Workspace) -> None:
    doc = policy_doc(protected)
    del doc["attributes"]["users.email"]
    write_policy_doc(protected, doc)
    with pytest.raises(PolicyError, match="failed authentication"):
        fresh(protected).verify("users", DAY)


def test_policy_with_the_primary_key_removed_is_refused(protected: Workspace) -> None:
    doc = policy_doc(protected)
    doc["datasets"]["users"]["primary_key"] = None
    write_policy_doc(protected, doc)
    with pytest.raises(PolicyError, match="failed authentication"):
        fresh(protected).status("users", DAY)


def test_deleted_policy_of_a_bound_lake_is_refused_not_read_as_nothing_enabled(protected: Workspace) -> None:
    Path(protected.store.full_path(POLICY_PATH)).unlink()
    with pytest.raises(PolicyError, match="missing"):
        fresh(protected).verify("users", DAY)


def test_deleted_policy_and_binding_still_refuse_a_file_that_says_it_is_protected(protected: Workspace) -> None:
    Path(protected.store.full_path(POLICY_PATH)).unlink()
    Path(protected.store.full_path(BINDING_PATH)).unlink()
    with pytest.raises(PolicyError, match="holds protected attribute users.email"):
        fresh(protected).protect("users", DAY)


def test_authenticated_policy_lacking_an_attribute_a_file_protects_is_refused_before_replacing(
    protected: Workspace,
) -> None:
    policy = protected.policy()
    protected.policies.write_authenticated(replace(policy, attributes={}))  # e.g. an older policy replayed
    workspace = fresh(protected)
    workspace.enable("users.phone", "last4", acknowledge_irreversible=True)
    backdate_policy(workspace)
    before = users_file(protected).read_bytes()
    with pytest.raises(PolicyError, match="holds protected attribute users.email"):
        workspace.protect("users", DAY)
    assert users_file(protected).read_bytes() == before


def test_unauthenticated_legacy_policy_is_refused_with_the_command_that_adopts_it(protected: Workspace) -> None:
    doc = policy_doc(protected)
    del doc["authentication"]
    write_policy_doc(protected, doc)
    with pytest.raises(UnauthenticatedPolicyError, match="fieldcrypt policy adopt"):
        fresh(protected).protect("users", DAY)


def test_adopting_a_legacy_policy_authenticates_it_and_is_audited(protected: Workspace) -> None:
    doc = policy_doc(protected)
    del doc["authentication"]
    write_policy_doc(protected, doc)
    fresh(protected).adopt_policy()
    assert fresh(protected).verify("users", DAY)["users.email"] > 0
    assert "policy_adopt" in operations(protected)


def test_adopting_a_legacy_policy_that_drops_a_protected_attribute_is_refused(protected: Workspace) -> None:
    doc = policy_doc(protected)
    del doc["authentication"]
    del doc["attributes"]["users.email"]
    write_policy_doc(protected, doc)
    with pytest.raises(PolicyError, match="holds protected attribute users.email"):
        fresh(protected).adopt_policy()
    assert "authentication" not in policy_doc(protected)


def test_rotation_rewraps_the_policy_mac_key_and_the_policy_still_authenticates(
    protected: Workspace, keystore_path: Path
) -> None:
    protected.start_rotation()
    protected.rotate("users", DAY)
    protected.complete_rotation()
    mac_key = base64.b64decode(policy_doc(protected)["authentication"]["mac_key"])
    assert WrappedKey.from_bytes(mac_key).key_version == "2"
    assert "users.email" in fresh(protected).policy().attributes


# -- 6. files and keystore ---------------------------------------------------------------------


def test_protecting_a_0600_partition_file_keeps_it_0600(local_workspace: Workspace) -> None:
    users_file(local_workspace).chmod(0o600)
    local_workspace.enable("users.email", "email", acknowledge_irreversible=True)
    backdate_policy(local_workspace)
    assert local_workspace.protect("users", DAY).rewritten
    assert stat.S_IMODE(users_file(local_workspace).stat().st_mode) == 0o600


def test_keystore_reached_through_a_symlink_is_refused(keystore_path: Path) -> None:
    link = keystore_path.with_name("link.json")
    link.symlink_to(keystore_path)
    with pytest.raises(KeyMaterialError, match="symlink"):
        Keystore.load(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_keystore_owned_by_another_user_is_refused(keystore_path: Path) -> None:
    os.chown(keystore_path, 4242, -1)
    with pytest.raises(KeyMaterialError, match="owned by uid 4242"):
        Keystore.load(keystore_path)


def test_keystore_created_by_another_process_between_check_and_write_is_not_overwritten(
    keystore_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = keystore_path.read_bytes()
    # fault injection: the existence check runs before another creator publishes its keystore
    monkeypatch.setattr(os.path, "lexists", lambda path: False)
    monkeypatch.setattr(Path, "exists", lambda self: False)
    with pytest.raises(KeyMaterialError, match="already exists"):
        Keystore.create(keystore_path, "acme")
    assert keystore_path.read_bytes() == before


@pytest.mark.parametrize("version", ["01", "\u0661", "\u00b9", "1\n", "0", ""])
def test_non_canonical_local_key_version_in_a_wrapped_key_is_a_named_error(keystore_path: Path, version: str) -> None:
    provider = LocalKeyProvider(Keystore.load(keystore_path))
    _, wrapped = provider.generate_data_key(provider_context())
    with pytest.raises(KeyVersionError, match="not canonical"):
        provider.unwrap(replace(wrapped, key_version=version), provider_context())


def provider_context() -> Any:
    from fieldcrypt.keys.providers.base import EncryptionContext

    return EncryptionContext("acme", "users", "email")


def test_non_canonical_version_in_the_keystore_is_a_named_error(keystore_path: Path) -> None:
    doc = keystore_doc(keystore_path)
    doc["versions"][0]["version"] = "01"
    write_keystore_doc(keystore_path, doc)
    with pytest.raises(KeyVersionError):
        Keystore.load(keystore_path)


def test_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(PolicyError, match="letters, digits and underscores"):
        Policy("acme").with_dataset(DatasetSpec("users\n", "ingested_at", "user_id"))


@pytest.mark.parametrize("byte", [0x00, 0x41, 0xFF])
def test_constant_32_byte_key_is_refused_on_import(tmp_path: Path, byte: int) -> None:
    text = base64.b64encode(bytes([byte]) * 32).decode()
    with pytest.raises(KeyMaterialError, match="all 32 bytes are the same"):
        Keystore.create(tmp_path / "keystore.json", "acme", parse_base64_key(text))
    assert not (tmp_path / "keystore.json").exists()


# -- 7. audit ----------------------------------------------------------------------------------


def test_dispatch_reveal_writes_an_attributable_event_with_cell_counts(protected: Workspace) -> None:
    reader = fresh(protected, actor="dispatch-42")
    rows = sum(batch.num_rows for batch in reader.reveal("users", DAY, ["email"]))
    events = [e for e in protected.audit.events() if e["operation"] == "reveal"]
    assert rows > 0 and events
    assert {(e["actor"], e["dataset"], e["partition"], e["attribute"]) for e in events} == {
        ("dispatch-42", "users", DAY, "email")
    }
    assert sum(e["cells"] for e in events) == protected.status("users", DAY).attributes["users.email"].already_protected


def test_verify_writes_an_event_per_attribute_with_cell_counts(protected: Workspace) -> None:
    counts = fresh(protected, actor="auditor").verify("users", DAY)
    events = [e for e in protected.audit.events() if e["operation"] == "verify_decrypt"]
    assert sum(e["cells"] for e in events) == counts["users.email"]
    assert {e["actor"] for e in events} == {"auditor"}


def test_crash_between_replace_and_its_audit_record_leaves_an_unconfirmed_intent(
    local_workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fieldcrypt.lake.audit import AuditLog

    local_workspace.enable("users.email", "email", acknowledge_irreversible=True)
    backdate_policy(local_workspace)
    real = AuditLog.record

    def dies_at_the_encrypt_record(self: AuditLog, operation: str, **fields: Any) -> None:
        if operation == "encrypt":  # fault injection: the process dies right after the replace
            raise SystemExit("killed")
        real(self, operation, **fields)

    monkeypatch.setattr(AuditLog, "record", dies_at_the_encrypt_record)
    with pytest.raises(SystemExit):
        local_workspace.protect("users", DAY)
    monkeypatch.undo()
    unconfirmed = local_workspace.audit.unconfirmed()
    assert [(e["operation"], e["partition"]) for e in unconfirmed] == [("encrypt_intent", DAY)]


def test_completed_protection_leaves_no_unconfirmed_intent(protected: Workspace) -> None:
    assert "encrypt_intent" in operations(protected)
    assert protected.audit.unconfirmed() == []


# -- 9. caches ---------------------------------------------------------------------------------


def _cache(keystore_path: Path, **kwargs: Any) -> tuple[DataKeyCache, LocalKeyProvider]:
    provider = LocalKeyProvider(Keystore.load(keystore_path))
    return DataKeyCache(provider, "acme", **kwargs), provider


def test_expired_unwrapped_keys_are_evicted_not_only_skipped(keystore_path: Path) -> None:
    clock = FakeClock()
    cache, provider = _cache(keystore_path, clock=clock, ttl_seconds=60)
    for attribute in ("a", "b", "c"):
        _, wrapped = provider.generate_data_key(cache.context("users", attribute))
        cache.cipher_for(wrapped.to_bytes(), "users", attribute)
    assert cache.size() == 3
    clock.now += 60
    assert cache.size() == 0


def test_cache_holds_at_most_its_bound_of_keys(keystore_path: Path) -> None:
    cache, provider = _cache(keystore_path, max_entries=2)
    for attribute in ("a", "b", "c", "d"):
        _, wrapped = provider.generate_data_key(cache.context("users", attribute))
        cache.cipher_for(wrapped.to_bytes(), "users", attribute)
    assert cache.size() == 2


def test_retired_master_key_bytes_do_not_linger_in_the_provider_after_rotation(protected: Workspace) -> None:
    protected.start_rotation()
    protected.rotate("users", DAY)
    provider = protected.key_cache().provider  # the provider that held both versions during the campaign
    protected.complete_rotation()
    assert isinstance(provider, LocalKeyProvider)
    with pytest.raises(KeyMaterialError, match="retired"):
        provider._keystore.key_for(1)


@pytest.fixture
def cli_args(tmp_path: Path, keystore_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """CLI flags for the test workspace, declared in a catalog found through FIELDCRYPT_CATALOG."""
    from tests.catalogs import write_catalog

    keystore = str(keystore_path.relative_to(tmp_path))
    catalog = write_catalog(tmp_path / "fieldcrypt.yaml", "acme", "lake", {"provider": "local", "keystore": keystore})
    monkeypatch.setenv("FIELDCRYPT_CATALOG", str(catalog))
    return ["--workspace", "acme"]


def test_cli_lists_only_unconfirmed_intents(
    local_workspace: Workspace, cli_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from fieldcrypt.cli import run

    local_workspace.audit.intent("encrypt", dataset="users", partition=DAY)
    confirmed = local_workspace.audit.intent("encrypt", dataset="users", partition="2026-11-02")
    local_workspace.audit.record("encrypt", dataset="users", partition="2026-11-02", intent=confirmed)
    capsys.readouterr()
    assert run([*cli_args, "audit", "--unconfirmed"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["operation"], e["partition"]) for e in printed] == [("encrypt_intent", DAY)]


def test_cli_policy_adopt_authenticates_a_legacy_policy(
    protected: Workspace, cli_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from fieldcrypt.cli import run

    doc = policy_doc(protected)
    del doc["authentication"]
    write_policy_doc(protected, doc)
    assert run([*cli_args, "policy", "adopt"]) == 0
    assert "users.email" in capsys.readouterr().out
    assert "authentication" in policy_doc(protected)


def test_another_process_completing_a_rotation_drops_the_retired_key_from_this_process(protected: Workspace) -> None:
    protected.start_rotation()
    protected.rotate("users", DAY)
    provider = protected.key_cache().provider  # this process holds versions 1 and 2
    fresh(protected, actor="completer").complete_rotation()
    from demo.sample_data import land_sample_lake

    land_sample_lake(protected.store, SAMPLE_DAY.replace(day=2), 1, users=50, events=10)
    protected.protect("users", "2026-11-02")  # a new data key re-checks the binding first
    assert isinstance(provider, LocalKeyProvider)
    with pytest.raises(KeyMaterialError, match="retired"):
        provider._keystore.key_for(1)


def test_verify_under_a_policy_lacking_an_attribute_the_file_protects_fails_instead_of_checking_nothing(
    protected: Workspace,
) -> None:
    policy = protected.policy()
    protected.policies.write_authenticated(replace(policy, attributes={}))  # e.g. an older policy replayed
    with pytest.raises(PolicyError, match="holds protected attribute users.email"):
        fresh(protected).verify("users", DAY)
