"""Data-key cache: TTL (30 min by default, never more), cells per key, provider call counts.

Time is injected through the cache's `clock`; provider calls are counted by a thin
subclass of the real local provider that delegates every call (no behaviour replaced).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path
from fieldcrypt import InputError, KeyConfig, Workspace, WorkspaceConfig
from fieldcrypt.engine.protect import protect_file
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys.cache import MAX_CELLS_PER_KEY, MAX_TTL_SECONDS, DataKeyCache
from fieldcrypt.keys.keystore import Keystore
from fieldcrypt.keys.providers.base import EncryptionContext
from fieldcrypt.keys.providers.local import LocalKeyProvider

PARTITION = date(2026, 11, 1).isoformat()


class CountingProvider(LocalKeyProvider):
    """The real local provider, counting the calls that would reach a KMS."""

    def __init__(self, keystore: Keystore) -> None:
        super().__init__(keystore)
        self.generated = 0
        self.unwrapped = 0

    def generate_data_key(self, context: EncryptionContext) -> tuple[bytes, WrappedKey]:
        self.generated += 1
        return super().generate_data_key(context)

    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> bytes:
        self.unwrapped += 1
        return super().unwrap(wrapped, context)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def provider(keystore_path: Path) -> CountingProvider:
    return CountingProvider(Keystore.load(keystore_path))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_cache(provider: CountingProvider, clock: Clock) -> Callable[..., DataKeyCache]:
    def make(**settings: Any) -> DataKeyCache:
        return DataKeyCache(provider, "acme", clock=clock, **settings)

    return make


def test_data_key_ttl_is_30_minutes_by_default(provider: CountingProvider) -> None:
    assert MAX_TTL_SECONDS == 30 * 60
    assert DataKeyCache(provider, "acme").ttl_seconds == 1800
    assert WorkspaceConfig("acme", "lake", KeyConfig("local", "ks.json")).data_key_ttl_seconds == 1800


@pytest.mark.parametrize("ttl", [1800.001, 3600, 0, -1])
def test_data_key_ttl_above_30_minutes_or_not_positive_is_refused(provider: CountingProvider, ttl: float) -> None:
    with pytest.raises(InputError, match="TTL must be between 0 and 1800 seconds"):
        DataKeyCache(provider, "acme", ttl_seconds=ttl)


def test_workspace_configured_with_a_ttl_above_30_minutes_is_refused(
    make_local_workspace: Callable[..., Workspace],
) -> None:
    workspace = make_local_workspace(data_key_ttl_seconds=3600)
    with pytest.raises(InputError, match="TTL"):
        workspace.key_cache()


def test_data_key_ttl_can_be_set_lower(make_cache: Callable[..., DataKeyCache]) -> None:
    assert make_cache(ttl_seconds=60).ttl_seconds == 60


@pytest.mark.parametrize("cells", [0, MAX_CELLS_PER_KEY + 1])
def test_cells_per_data_key_outside_the_bound_are_refused(provider: CountingProvider, cells: int) -> None:
    with pytest.raises(InputError, match="cells per data key"):
        DataKeyCache(provider, "acme", max_cells_per_key=cells)


def test_cells_per_data_key_stay_well_under_the_random_nonce_limit() -> None:
    assert MAX_CELLS_PER_KEY <= 2**32 // 64


def test_encryption_key_is_reused_within_its_ttl(make_cache: Callable[..., DataKeyCache], clock: Clock) -> None:
    cache = make_cache()
    first = cache.reserve("users", "email", 10)
    clock.now += MAX_TTL_SECONDS - 1
    second = cache.reserve("users", "email", 10)
    assert first[1] == second[1]
    assert cache.calls.generate == 1


def test_expired_encryption_key_is_replaced_by_a_new_provider_call(
    make_cache: Callable[..., DataKeyCache], provider: CountingProvider, clock: Clock
) -> None:
    cache = make_cache(ttl_seconds=60)
    first = cache.reserve("users", "email", 10)
    clock.now += 60
    second = cache.reserve("users", "email", 10)
    assert first[1] != second[1]
    assert cache.calls.generate == provider.generated == 2


def test_each_attribute_gets_its_own_data_key(make_cache: Callable[..., DataKeyCache]) -> None:
    cache = make_cache()
    email = cache.reserve("users", "email", 1)[1]
    phone = cache.reserve("users", "phone", 1)[1]
    other = cache.reserve("events", "email", 1)[1]
    assert len({email, phone, other}) == 3
    assert cache.calls.generate == 3


def test_cell_budget_of_a_data_key_is_granted_then_a_new_key_is_generated(
    make_cache: Callable[..., DataKeyCache],
) -> None:
    cache = make_cache(max_cells_per_key=100)
    _, first, granted = cache.reserve("users", "email", 70)
    _, same, partial = cache.reserve("users", "email", 70)
    _, fresh, rest = cache.reserve("users", "email", 40)
    assert (granted, partial, rest) == (70, 30, 40)
    assert first == same != fresh
    assert cache.calls.generate == 2


def test_unwrapped_key_is_cached_within_its_ttl(
    make_cache: Callable[..., DataKeyCache], provider: CountingProvider, clock: Clock
) -> None:
    cache = make_cache(ttl_seconds=120)
    wrapped = cache.reserve("users", "email", 1)[1]
    cache.cipher_for(wrapped, "users", "email")
    clock.now += 119
    cache.cipher_for(wrapped, "users", "email")
    assert cache.calls.unwrap == provider.unwrapped == 1


def test_expired_unwrapped_key_goes_back_to_the_provider(
    make_cache: Callable[..., DataKeyCache], provider: CountingProvider, clock: Clock
) -> None:
    cache = make_cache(ttl_seconds=120)
    wrapped = cache.reserve("users", "email", 1)[1]
    cache.cipher_for(wrapped, "users", "email")
    clock.now += 120
    cache.cipher_for(wrapped, "users", "email")
    assert cache.calls.unwrap == provider.unwrapped == 2


def test_cleared_cache_goes_back_to_the_provider(
    make_cache: Callable[..., DataKeyCache], provider: CountingProvider
) -> None:
    cache = make_cache()
    wrapped = cache.reserve("users", "email", 1)[1]
    cache.cipher_for(wrapped, "users", "email")
    cache.clear()
    cache.cipher_for(wrapped, "users", "email")
    cache.reserve("users", "email", 1)
    assert (provider.generated, provider.unwrapped) == (2, 2)
    assert cache.calls.total == 4


def test_small_cell_budget_puts_several_wrapped_keys_in_the_files_dictionary(
    local_workspace: Workspace, enable_at: Callable[..., Any], provider: CountingProvider, clock: Clock
) -> None:
    enable_at(local_workspace, "users.email", "email")
    policy = local_workspace.policy()
    cache = DataKeyCache(provider, "acme", clock=clock, max_cells_per_key=50)
    rel = snapshot_path("users", PARTITION)
    spec, attributes = policy.datasets["users"], policy.for_dataset("users")
    ledger = local_workspace.ledger_step(PARTITION, spec, attributes)  # recorded as Workspace.protect records it
    report = protect_file(
        local_workspace.store,
        rel,
        spec,
        attributes,
        cache,
        dataset_root=local_workspace.layout("users").path,
        partition=PARTITION,
        ledger=ledger,
    )
    cells = report.attributes["users.email"].newly_encrypted
    expected_keys = -(-cells // 50)
    assert cells > 100
    dictionary = pq.read_table(local_workspace.store.full_path(rel)).column("email__fc_dek").combine_chunks().dictionary
    assert len(dictionary) == expected_keys == report.data_keys
    assert provider.generated == cache.calls.generate == expected_keys
    assert local_workspace.verify("users", PARTITION) == {"users.email": cells}


def test_report_counts_the_provider_calls_of_a_run(local_workspace: Workspace, enable_at: Callable[..., Any]) -> None:
    enable_at(local_workspace, "users.email", "email")
    enable_at(local_workspace, "users.phone", "last4")
    report = local_workspace.protect("users", PARTITION)
    # one data key generated per attribute, and one unwrap per attribute when the new file is verified
    assert report.kms_calls == 4
    # + the policy MAC key and the audit key, made when the lake was bound
    assert local_workspace.key_cache().calls.generate == 2 + 2
    assert local_workspace.key_cache().calls.unwrap == 2


def test_data_keys_are_reused_across_partitions_within_the_ttl(
    local_workspace: Workspace, enable_at: Callable[..., Any]
) -> None:
    from demo.sample_data import land_sample_lake

    land_sample_lake(local_workspace.store, date(2026, 11, 2), 2, users=100, events=10)
    enable_at(local_workspace, "users.email", "email")
    for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
        local_workspace.protect("users", day)
    # + the policy MAC key and the audit key, made when the lake was bound
    assert local_workspace.key_cache().calls.generate == 1 + 2


def test_every_provider_call_is_audited_with_ids_and_no_key(
    local_workspace: Workspace, enable_at: Callable[..., Any]
) -> None:
    enable_at(local_workspace, "users.email", "email")
    local_workspace.protect("users", PARTITION)
    events = list(local_workspace.audit.events())
    key_uses = [e for e in events if e["operation"] in ("generate_data_key", "unwrap")]
    assert [e["operation"] for e in key_uses] == ["generate_data_key", "unwrap"]
    master = local_workspace.key_cache().master_key.ref
    for event in key_uses:
        assert (event["dataset"], event["attribute"], event["partition"], event["master_key"]) == (
            "users",
            "email",
            PARTITION,
            master,
        )
        assert event["actor"] == "test" and event["workspace"] == "acme"
    (encrypt,) = [e for e in events if e["operation"] == "encrypt"]
    assert encrypt["cells"] > 0


def test_cache_repr_shows_no_key_material(make_cache: Callable[..., DataKeyCache], keystore_path: Path) -> None:
    cache = make_cache()
    wrapped = cache.reserve("users", "email", 1)[1]
    cache.cipher_for(wrapped, "users", "email")
    master = Keystore.load(keystore_path).key_for(1)
    shown = repr(cache)
    assert master.hex() not in shown and repr(master) not in shown
    assert "_encrypting" not in shown and "_decrypting" not in shown


def test_cache_is_per_workspace_instance(make_local_workspace: Callable[..., Workspace], tmp_path: Path) -> None:
    first = make_local_workspace(str(tmp_path / "lake"))
    second = make_local_workspace(str(tmp_path / "lake"))
    assert first.key_cache() is first.key_cache()
    assert first.key_cache() is not second.key_cache()
