"""A workspace's master key: the provider of the bound key, binding a new lake, and checking the key stays bound.

`Workspace` delegates here; each function takes the workspace whose lake, keystore or KMS key it
reaches. Nothing here contacts a KMS until a data key is first needed.
"""

from __future__ import annotations

import contextlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fieldcrypt import policy_auth, rate_limit
from fieldcrypt.binding import KeyBinding
from fieldcrypt.blind_index import index_context_attribute
from fieldcrypt.cache import DataKeyCache
from fieldcrypt.errors import (
    FieldcryptError,
    IntegrityError,
    KeyProviderError,
    WrongMasterKeyError,
)
from fieldcrypt.keystore import Keystore, parse_key_version
from fieldcrypt.policy import POLICY_PATH, Policy
from fieldcrypt.policy_auth import MAC_KEY_ATTRIBUTE, MAC_KEY_DATASET
from fieldcrypt.providers.aws_kms import PROVIDER_ID as KMS
from fieldcrypt.providers.aws_kms import AwsKmsProvider, kms_client, validate_kms_key
from fieldcrypt.providers.base import EncryptionContext, KeyProvider
from fieldcrypt.providers.base import MasterKeyInfo as KeyRef
from fieldcrypt.providers.local import PROVIDER_ID as LOCAL
from fieldcrypt.providers.local import LocalKeyProvider
from fieldcrypt.providers.pkcs11 import PROVIDER_ID as PKCS11
from fieldcrypt.providers.pkcs11 import MigratingProvider, Pkcs11Provider, Pkcs11Token
from fieldcrypt.rotate import stored_wrapped_keys
from fieldcrypt.wrapped_key import WrappedKey

if TYPE_CHECKING:
    from fieldcrypt.workspace import Workspace


def key_cache(workspace: Workspace) -> DataKeyCache:
    """The data-key cache over the bound master key, built (and the key described) on first use.

    A lake seen for the first time is bound here: its (empty) authenticated policy is
    written first, then the binding with the key's check value, so a crash between the
    two leaves a lake that the next run binds.
    """
    # Always under the lock: while a new lake is bound, `_cache` is set early for this thread's re-entrant calls,
    # and another thread must not take that cache before the binding is written.
    # Key uses on the way (describe, bind) are written once the audit key is in hand (fieldcrypt.audit).
    with workspace._cache_lock, workspace.audit.deferred():
        return _built_key_cache(workspace)


def _built_key_cache(workspace: Workspace) -> DataKeyCache:
    if workspace._cache is None:
        provider, binding = bound_provider(workspace)
        info = provider.describe()
        cache = DataKeyCache(
            provider,
            workspace.name,
            workspace.audit,
            ttl_seconds=workspace.config.data_key_ttl_seconds,
            guard=workspace._check_binding,
            rate_limit=rate_limit.for_workspace(workspace.name, workspace.config.kms_calls_per_second),
        )
        if binding is None:
            workspace._cache = cache  # the policy store below reaches the cache through key_cache()
            try:
                workspace.policies.create(Policy(workspace.name))  # another worker's first policy is kept
                bound = KeyBinding(info).with_check_value(info, check_value(provider, info))
                workspace.bindings.save(bound, previous=None)
            except BaseException:
                workspace._cache = None
                raise
            workspace.audit.record("bind_master_key", master_key=info.ref)
        workspace._bound = info
        workspace._binding_seen = workspace.bindings.version()
        workspace._cache = cache
    return workspace._cache


def check_binding(workspace: Workspace) -> None:
    """Stop a process whose master key another process rotated away (one stat while unchanged)."""
    seen = workspace.bindings.version()
    if seen == workspace._binding_seen:
        return
    binding = workspace.bindings.load()
    if binding is None or workspace._bound is None or binding.current != workspace._bound:
        now = binding.current.ref if binding else "nothing"
        was = workspace._bound.ref if workspace._bound else "?"
        raise KeyProviderError(
            f"master key of lake {workspace.store.uri} moved from {was} to {now} "
            "after this process loaded it (a rotation by another process); nothing was written under the old "
            "key - restart this run"
        )
    cache = workspace._cache
    if cache is not None and isinstance(cache.provider, LocalKeyProvider) and binding.active_campaign is None:
        for campaign in binding.campaigns:  # another process retired them: drop our copy of the bytes
            if campaign.status == "complete" and campaign.old.provider == LOCAL:
                cache.provider.forget(parse_key_version(campaign.old.key_version))
    workspace._binding_seen = seen


def check_value(provider: KeyProvider, info: KeyRef) -> str:
    if isinstance(provider, LocalKeyProvider):
        return provider.check_value(int(info.key_version))
    if isinstance(provider, Pkcs11Provider):
        return provider.check_value(info.key_id)
    return ""  # aws-kms: the key ARN is the check (docs/FORMAT.md section 5)


def bound_provider(workspace: Workspace) -> tuple[KeyProvider, KeyBinding | None]:
    """The provider of the bound (or, on a new lake, configured) key, and the stored binding."""
    binding = workspace.bindings.load()
    key = workspace.config.key
    if key.provider == LOCAL:
        keystore = load_keystore(workspace)  # refuses a version whose bytes do not match its own KCV
        configured = KeyRef(LOCAL, keystore.key_id, str(keystore.current))
        if binding is not None and binding.current != configured:
            raise KeyProviderError(
                f"lake {workspace.store.uri} is bound to master key {binding.current.ref}, but keystore "
                f"{keystore.path} holds {configured.ref}; use the keystore of this workspace, or finish "
                f"`fieldcrypt rotate start` if a rotation was interrupted"
            )
        if binding is not None:  # the binding's KCVs first: a wrong key is refused before any write
            binding = with_check_values(workspace, binding, keystore)
        added = keystore.add_missing_check_values()
        if added:
            workspace.audit.record(
                "key_check_value_added", master_key=keystore.key_id, detail=f"keystore versions {added}"
            )
        provider: KeyProvider = LocalKeyProvider(keystore)
    elif key.provider == PKCS11:
        provider = bound_pkcs11_provider(workspace, binding)
    else:
        client = workspace_kms_client(workspace)
        configured_arn = validate_kms_key(client, key.kms_key or "")
        if binding is None:
            current, also = configured_arn, []
        else:
            campaign = binding.active_campaign
            allowed = {binding.current.key_id} | ({campaign.old.key_id} if campaign else set())
            if binding.current.provider != KMS or configured_arn not in allowed:
                retired = [c for c in binding.campaigns if c.status == "complete" and c.old.key_id == configured_arn]
                advice = (
                    f"it was rotated out by {retired[-1].campaign_id}; configure the current key instead"
                    if retired
                    else "to move to it, run a rotation"
                )
                raise KeyProviderError(
                    f"lake {workspace.store.uri} is bound to master key {binding.current.ref}, but this workspace is "
                    f"configured with {configured_arn}; {advice}"
                )
            current, also = binding.current.key_id, ([campaign.old.key_id] if campaign else [])
        provider = AwsKmsProvider(current, workspace.name, client, also_decrypt=also)
    info = provider.describe()
    workspace.audit.record("describe_key", master_key=info.ref)
    return provider, binding


def bound_pkcs11_provider(workspace: Workspace, binding: KeyBinding | None) -> KeyProvider:
    """The pkcs11 provider of the bound key (and, mid-rotation, of the old one), key check values compared."""
    key = workspace.config.key
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
            f"lake {workspace.store.uri} is bound to master key {binding.current.provider}:{binding.current.ref}, but "
            f"this workspace is configured with pkcs11 key {configured!r} on token {token.label!r}; {advice}"
        )
    also = [old.key_id] if old is not None and old.provider == PKCS11 else []
    provider = Pkcs11Provider(token, binding.current.key_id, also_decrypt=also)
    for ref in [binding.current] + ([old] if old is not None and old.provider == PKCS11 else []):
        expected = binding.check_values.get(ref.ref)
        if expected is not None and not hmac.compare_digest(expected, provider.check_value(ref.key_id)):
            raise WrongMasterKeyError(
                f"wrong master key: pkcs11 key {ref.key_id!r} on token {token.label!r} does not match the key "
                f"check value lake {workspace.store.uri} was bound to (another key under the same label); nothing "
                "was written - restore the key or the token"
            )
    if old is not None and old.provider == LOCAL:  # mid-rotation from local: the old keystore unwraps
        if not key.keystore_path:
            raise KeyProviderError(
                f"lake {workspace.store.uri} is rotating from local master key {old.ref} to pkcs11 key "
                f"{binding.current.key_id!r}; the catalog's pkcs11 key needs `keystore:` until it completes"
            )
        keystore = load_keystore(workspace)
        with_check_values(workspace, binding, keystore)
        return MigratingProvider(provider, LocalKeyProvider(keystore))
    return provider


def with_check_values(workspace: Workspace, binding: KeyBinding, keystore: Keystore) -> KeyBinding:
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
                prove_local_key(workspace, keystore, ref)  # never adopt a KCV for bytes that do not fit the lake
            updated = updated.with_check_value(ref, actual)
        elif actual and not hmac.compare_digest(expected, actual):
            raise WrongMasterKeyError(
                f"wrong master key: keystore {keystore.path} holds {ref.ref}, but its key check value differs "
                f"from the one lake {workspace.store.uri} was bound to (same id and version, other key bytes); "
                "nothing was written - restore this lake's keystore"
            )
    if updated != binding:
        workspace.bindings.save(updated, previous=binding)
        added = sorted(set(updated.check_values) - set(binding.check_values))
        workspace.audit.record("key_check_value_added", detail=f"binding: {', '.join(added)}")
    return updated


def prove_local_key(workspace: Workspace, keystore: Keystore, ref: KeyRef) -> None:
    """Migration check: the first stored wrapped key under `ref` must unwrap with the keystore's bytes.

    Looks at the policy's MAC key, the blind-index keys, then the partitions of the
    datasets the stored policy names (read for their names only, not trusted), and
    stops at the first key under `ref`. Nothing stored under `ref`: nothing to lose.
    """
    provider = LocalKeyProvider(keystore)
    for value, context in wrapped_keys_in_lake(workspace):
        wrapped = WrappedKey.from_bytes(value)
        if wrapped.master_key_ref != ref.ref:
            continue
        try:
            provider.unwrap(wrapped, context)
        except IntegrityError:
            raise WrongMasterKeyError(
                f"wrong master key: keystore {keystore.path} holds {ref.ref}, but its bytes do not unwrap the data "
                f"keys lake {workspace.store.uri} stores under it; nothing was written - restore this lake's keystore"
            ) from None
        return


def wrapped_keys_in_lake(workspace: Workspace) -> Iterator[tuple[bytes, EncryptionContext]]:
    with contextlib.suppress(FieldcryptError):
        mac_key = workspace.policies.mac_key_value()
        if mac_key is not None:
            yield mac_key, EncryptionContext(workspace.name, MAC_KEY_DATASET, MAC_KEY_ATTRIBUTE)
    with contextlib.suppress(FieldcryptError):
        for name, value in workspace.index_keys.load().items():
            dataset, _, path = name.partition(".")
            yield value, EncryptionContext(workspace.name, dataset, index_context_attribute(path))
    try:
        where = workspace.store.display(POLICY_PATH)
        doc, _ = policy_auth.split(workspace.store.read_bytes(POLICY_PATH), where)
        named = Policy.from_json(json.dumps(doc), where)
    except (FieldcryptError, OSError):
        return
    for dataset in sorted(set(named.datasets) & set(workspace.config.datasets)):
        attributes = named.for_dataset(dataset)
        for files in workspace.layout(dataset).partitions(workspace.store).values():
            for rel in files:
                with contextlib.suppress(FieldcryptError):
                    for value, attribute in stored_wrapped_keys(workspace.store, rel, attributes).items():
                        yield value, EncryptionContext(workspace.name, dataset, attribute.path)


def load_keystore(workspace: Workspace) -> Keystore:
    keystore = Keystore.load(Path(workspace.config.key.keystore_path or ""))
    if keystore.workspace != workspace.name:
        raise KeyProviderError(
            f"keystore {keystore.path} belongs to workspace {keystore.workspace!r}, not {workspace.name!r}"
        )
    return keystore


def workspace_kms_client(workspace: Workspace) -> object:
    key = workspace.config.key
    return kms_client(key.kms_region, key.kms_endpoint_url, key.kms_retry_mode, key.kms_max_attempts)


# -- policy --------------------------------------------------------------------------
