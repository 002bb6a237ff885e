"""A workspace's master key: the provider of the bound key, binding a new lake, and checking the key stays bound.

`MasterKeyAccess` owns that state; the `Workspace` builds one from its configuration and control
files (`LakeKeyFiles`) and delegates to it. Nothing here contacts a KMS until a data key is first needed.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fieldcrypt.access.workspace_config import WorkspaceConfig
from fieldcrypt.engine.rotate import stored_wrapped_keys
from fieldcrypt.errors import (
    FieldcryptError,
    IntegrityError,
    KeyProviderError,
    WrongMasterKeyError,
)
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys import policy_auth, rate_limit
from fieldcrypt.keys.binding import BindingStore, KeyBinding
from fieldcrypt.keys.blind_index import IndexKeyStore, index_context_attribute
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.keys.keystore import Keystore, parse_key_version
from fieldcrypt.keys.policy_auth import MAC_KEY_ATTRIBUTE, MAC_KEY_DATASET
from fieldcrypt.keys.providers.aws_kms import PROVIDER_ID as KMS
from fieldcrypt.keys.providers.aws_kms import AwsKmsProvider, kms_client, validate_kms_key
from fieldcrypt.keys.providers.base import EncryptionContext, KeyProvider
from fieldcrypt.keys.providers.base import MasterKeyInfo as KeyRef
from fieldcrypt.keys.providers.local import PROVIDER_ID as LOCAL
from fieldcrypt.keys.providers.local import LocalKeyProvider
from fieldcrypt.keys.providers.pkcs11 import PROVIDER_ID as PKCS11
from fieldcrypt.keys.providers.pkcs11 import MigratingProvider, Pkcs11Provider, Pkcs11Token
from fieldcrypt.lake.audit import AuditLog
from fieldcrypt.lake.store import FileVersion, LakeStore
from fieldcrypt.policy.policy import POLICY_PATH, Policy, PolicyStore


@dataclass(frozen=True)
class LakeKeyFiles:
    """The lake's control files master-key access reads and writes: the Workspace's own stores, handed in."""

    store: LakeStore
    bindings: BindingStore
    policies: PolicyStore
    index_keys: IndexKeyStore
    audit: AuditLog


class MasterKeyAccess:
    """One workspace's master key: the provider of the bound key, the data-key cache over it (built on
    first use), binding a new lake, and checking the key stays bound.

    Owns the state the Workspace used to keep for it (the cache and its lock, the bound key, the
    binding version last seen); the Workspace holds one and delegates, the campaigns
    (fieldcrypt.campaigns.rotation_campaign, fieldcrypt.campaigns.blind_index_campaign) are handed it. Nothing here
    contacts a KMS until a data key is first needed.
    """

    def __init__(self, config: WorkspaceConfig, lake: LakeKeyFiles) -> None:
        self.config = config
        self.name = config.name
        self.lake = lake
        self._cache: DataKeyCache | None = None
        # Threads of one run may share the workspace (the Dagster assets' ranged runs): the cache is built once.
        # Re-entrant: binding a new lake writes its first policy, which reaches the cache through key_cache().
        self._cache_lock = threading.RLock()
        self._bound: KeyRef | None = None  # the master key this process's cache wraps under
        self._binding_seen: FileVersion | None = None

    def key_cache(self) -> DataKeyCache:
        """The data-key cache over the bound master key, built (and the key described) on first use.

        A lake seen for the first time is bound here: its (empty) authenticated policy is
        written first, then the binding with the key's check value, so a crash between the
        two leaves a lake that the next run binds.
        """
        # Always under the lock: while a new lake is bound, `_cache` is set early for this thread's re-entrant calls,
        # and another thread must not take that cache before the binding is written.
        # Key uses on the way (describe, bind) are written once the audit key is in hand (fieldcrypt.lake.audit).
        with self._cache_lock, self.lake.audit.deferred():
            return self._built_key_cache()

    def _built_key_cache(self) -> DataKeyCache:
        if self._cache is None:
            provider, binding = self.bound_provider()
            info = provider.describe()
            cache = DataKeyCache(
                provider,
                self.name,
                self.lake.audit,
                ttl_seconds=self.config.data_key_ttl_seconds,
                guard=self.check_binding,
                rate_limit=rate_limit.for_workspace(self.name, self.config.kms_calls_per_second),
            )
            if binding is None:
                self._cache = cache  # the policy store below reaches the cache through key_cache()
                try:
                    self.lake.policies.create(Policy(self.name))  # another worker's first policy is kept
                    bound = KeyBinding(info).with_check_value(info, check_value(provider, info))
                    self.lake.bindings.save(bound, previous=None)
                except BaseException:
                    self._cache = None
                    raise
                self.lake.audit.record("bind_master_key", master_key=info.ref)
            self._bound = info
            self._binding_seen = self.lake.bindings.version()
            self._cache = cache
        return self._cache

    def check_binding(self) -> None:
        """Stop a process whose master key another process rotated away (one stat while unchanged)."""
        seen = self.lake.bindings.version()
        if seen == self._binding_seen:
            return
        binding = self.lake.bindings.load()
        if binding is None or self._bound is None or binding.current != self._bound:
            now = binding.current.ref if binding else "nothing"
            was = self._bound.ref if self._bound else "?"
            raise KeyProviderError(
                f"master key of lake {self.lake.store.uri} moved from {was} to {now} "
                "after this process loaded it (a rotation by another process); nothing was written under the old "
                "key - restart this run"
            )
        cache = self._cache
        if cache is not None and isinstance(cache.provider, LocalKeyProvider) and binding.active_campaign is None:
            for campaign in binding.campaigns:  # another process retired them: drop our copy of the bytes
                if campaign.status == "complete" and campaign.old.provider == LOCAL:
                    cache.provider.forget(parse_key_version(campaign.old.key_version))
        self._binding_seen = seen

    def bound_provider(self) -> tuple[KeyProvider, KeyBinding | None]:
        """The provider of the bound (or, on a new lake, configured) key, and the stored binding."""
        binding = self.lake.bindings.load()
        key = self.config.key
        if key.provider == LOCAL:
            keystore = self.load_keystore()  # refuses a version whose bytes do not match its own KCV
            configured = KeyRef(LOCAL, keystore.key_id, str(keystore.current))
            if binding is not None and binding.current != configured:
                raise KeyProviderError(
                    f"lake {self.lake.store.uri} is bound to master key {binding.current.ref}, but keystore "
                    f"{keystore.path} holds {configured.ref}; use the keystore of this workspace, or finish "
                    f"`fieldcrypt rotate start` if a rotation was interrupted"
                )
            if binding is not None:  # the binding's KCVs first: a wrong key is refused before any write
                binding = self.with_check_values(binding, keystore)
            added = keystore.add_missing_check_values()
            if added:
                self.lake.audit.record(
                    "key_check_value_added", master_key=keystore.key_id, detail=f"keystore versions {added}"
                )
            provider: KeyProvider = LocalKeyProvider(keystore)
        elif key.provider == PKCS11:
            provider = self._bound_pkcs11_provider(binding)
        else:
            client = self.kms_client()
            configured_arn = validate_kms_key(client, key.kms_key or "")
            if binding is None:
                current, also = configured_arn, []
            else:
                campaign = binding.active_campaign
                allowed = {binding.current.key_id} | ({campaign.old.key_id} if campaign else set())
                if binding.current.provider != KMS or configured_arn not in allowed:
                    retired = [
                        c for c in binding.campaigns if c.status == "complete" and c.old.key_id == configured_arn
                    ]
                    advice = (
                        f"it was rotated out by {retired[-1].campaign_id}; configure the current key instead"
                        if retired
                        else "to move to it, run a rotation"
                    )
                    raise KeyProviderError(
                        f"lake {self.lake.store.uri} is bound to master key {binding.current.ref}, but this "
                        f"workspace is configured with {configured_arn}; {advice}"
                    )
                current, also = binding.current.key_id, ([campaign.old.key_id] if campaign else [])
            provider = AwsKmsProvider(current, self.name, client, also_decrypt=also)
        info = provider.describe()
        self.lake.audit.record("describe_key", master_key=info.ref)
        return provider, binding

    def _bound_pkcs11_provider(self, binding: KeyBinding | None) -> KeyProvider:
        """The pkcs11 provider of the bound key (and, mid-rotation, of the old one), key check values compared."""
        key = self.config.key
        token = Pkcs11Token.for_settings(key.pkcs11_settings())
        configured = key.pkcs11_key_label or ""
        if binding is None:
            return Pkcs11Provider(token, configured)
        campaign = binding.active_campaign
        old = campaign.old if campaign else None
        allowed = {binding.current.key_id} | ({old.key_id} if old and old.provider == PKCS11 else set())
        if binding.current.provider != PKCS11 or configured not in allowed:
            retired = [
                c
                for c in binding.campaigns
                if c.status == "complete" and c.old.provider == PKCS11 and c.old.key_id == configured
            ]
            advice = (
                f"it was rotated out by {retired[-1].campaign_id}; configure the current key instead"
                if retired
                else f"to move to it, run `fieldcrypt rotate start --to pkcs11:{configured}`"
            )
            raise KeyProviderError(
                f"lake {self.lake.store.uri} is bound to master key {binding.current.provider}:"
                f"{binding.current.ref}, but this workspace is configured with pkcs11 key {configured!r} on token "
                f"{token.label!r}; {advice}"
            )
        also = [old.key_id] if old is not None and old.provider == PKCS11 else []
        provider = Pkcs11Provider(token, binding.current.key_id, also_decrypt=also)
        for ref in [binding.current] + ([old] if old is not None and old.provider == PKCS11 else []):
            expected = binding.check_values.get(ref.ref)
            if expected is not None and not hmac.compare_digest(expected, provider.check_value(ref.key_id)):
                raise WrongMasterKeyError(
                    f"wrong master key: pkcs11 key {ref.key_id!r} on token {token.label!r} does not match the key "
                    f"check value lake {self.lake.store.uri} was bound to (another key under the same label); nothing "
                    "was written - restore the key or the token"
                )
        if old is not None and old.provider == LOCAL:  # mid-rotation from local: the old keystore unwraps
            if not key.keystore_path:
                raise KeyProviderError(
                    f"lake {self.lake.store.uri} is rotating from local master key {old.ref} to pkcs11 key "
                    f"{binding.current.key_id!r}; the catalog's pkcs11 key needs `keystore:` until it completes"
                )
            keystore = self.load_keystore()
            self.with_check_values(binding, keystore)
            return MigratingProvider(provider, LocalKeyProvider(keystore))
        return provider

    def with_check_values(self, binding: KeyBinding, keystore: Keystore) -> KeyBinding:
        """Compare the keystore's key check values with the binding's; record the missing ones (migration)."""
        campaign = binding.active_campaign
        refs = [binding.current] + ([campaign.old] if campaign and campaign.old.provider == LOCAL else [])
        updated = binding
        for ref in refs:
            if ref.key_id != keystore.key_id:
                continue
            actual = keystore.check_value(parse_key_version(ref.key_version))
            expected = binding.check_values.get(ref.ref)
            if expected is None:
                if actual:
                    self._prove_local_key(keystore, ref)  # never adopt a KCV for bytes that do not fit the lake
                updated = updated.with_check_value(ref, actual)
            elif actual and not hmac.compare_digest(expected, actual):
                raise WrongMasterKeyError(
                    f"wrong master key: keystore {keystore.path} holds {ref.ref}, but its key check value differs "
                    f"from the one lake {self.lake.store.uri} was bound to (same id and version, other key bytes); "
                    "nothing was written - restore this lake's keystore"
                )
        if updated != binding:
            self.lake.bindings.save(updated, previous=binding)
            added = sorted(set(updated.check_values) - set(binding.check_values))
            self.lake.audit.record("key_check_value_added", detail=f"binding: {', '.join(added)}")
        return updated

    def _prove_local_key(self, keystore: Keystore, ref: KeyRef) -> None:
        """Migration check: the first stored wrapped key under `ref` must unwrap with the keystore's bytes.

        Looks at the policy's MAC key, the blind-index keys, then the partitions of the
        datasets the stored policy names (read for their names only, not trusted), and
        stops at the first key under `ref`. Nothing stored under `ref`: nothing to lose.
        """
        provider = LocalKeyProvider(keystore)
        for value, context in self._wrapped_keys_in_lake():
            wrapped = WrappedKey.from_bytes(value)
            if wrapped.master_key_ref != ref.ref:
                continue
            try:
                provider.unwrap(wrapped, context)
            except IntegrityError:
                raise WrongMasterKeyError(
                    f"wrong master key: keystore {keystore.path} holds {ref.ref}, but its bytes do not unwrap the "
                    f"data keys lake {self.lake.store.uri} stores under it; nothing was written - restore this lake's "
                    "keystore"
                ) from None
            return

    def _wrapped_keys_in_lake(self) -> Iterator[tuple[bytes, EncryptionContext]]:
        with contextlib.suppress(FieldcryptError):
            mac_key = self.lake.policies.mac_key_value()
            if mac_key is not None:
                yield mac_key, EncryptionContext(self.name, MAC_KEY_DATASET, MAC_KEY_ATTRIBUTE)
        with contextlib.suppress(FieldcryptError):
            for name, value in self.lake.index_keys.load().items():
                dataset, _, path = name.partition(".")
                yield value, EncryptionContext(self.name, dataset, index_context_attribute(path))
        try:
            where = self.lake.store.display(POLICY_PATH)
            doc, _ = policy_auth.split(self.lake.store.read_bytes(POLICY_PATH), where)
            named = Policy.from_json(json.dumps(doc), where)
        except (FieldcryptError, OSError):
            return
        for dataset in sorted(set(named.datasets) & set(self.config.datasets)):
            attributes = named.for_dataset(dataset)
            for files in self.config.datasets[dataset].partitions(self.lake.store).values():
                for rel in files:
                    with contextlib.suppress(FieldcryptError):
                        for value, attribute in stored_wrapped_keys(self.lake.store, rel, attributes).items():
                            yield value, EncryptionContext(self.name, dataset, attribute.path)

    def load_keystore(self) -> Keystore:
        keystore = Keystore.load(Path(self.config.key.keystore_path or ""))
        if keystore.workspace != self.name:
            raise KeyProviderError(
                f"keystore {keystore.path} belongs to workspace {keystore.workspace!r}, not {self.name!r}"
            )
        return keystore

    def kms_client(self) -> object:
        key = self.config.key
        return kms_client(key.kms_region, key.kms_endpoint_url, key.kms_retry_mode, key.kms_max_attempts)

    def drop_cache(self, retired_version: int | None = None) -> None:
        """Forget every cached key and the provider (and with it any retired key material); with
        `retired_version`, a local key version just retired is also forgotten by the provider."""
        with self._cache_lock:
            if self._cache is not None:
                if retired_version is not None and isinstance(self._cache.provider, LocalKeyProvider):
                    self._cache.provider.forget(retired_version)
                self._cache.clear()
            self._cache = None
            self._bound = None
            self._binding_seen = None


def check_value(provider: KeyProvider, info: KeyRef) -> str:
    if isinstance(provider, LocalKeyProvider):
        return provider.check_value(int(info.key_version))
    if isinstance(provider, Pkcs11Provider):
        return provider.check_value(info.key_id)
    return ""  # aws-kms: the key ARN is the check (docs/FORMAT.md section 5)
