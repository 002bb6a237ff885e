"""A workspace's master-key rotation campaigns: start, rotate partitions, prove completion, retire the old key.

`Workspace` delegates its rotation methods here; each function is handed the workspace's master-key
access (fieldcrypt.access.master_key_access: the bound key, its cache, the lake's control files) and, to work
on data files, the partition job or the enabled datasets (fieldcrypt.access.partition_job)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fieldcrypt.access.master_key_access import MasterKeyAccess
from fieldcrypt.access.partition_job import EnabledDataset, PartitionJob
from fieldcrypt.campaigns.blind_index_campaign import attributes_reindexing
from fieldcrypt.engine.reindex import RetiringIndexKeys
from fieldcrypt.engine.rotate import RotateReport, rotate_file, wrapped_key_refs
from fieldcrypt.errors import (
    ConfigError,
    KeyProviderError,
    PolicyError,
)
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys.binding import Campaign, KeyBinding
from fieldcrypt.keys.blind_index import INDEX_KEYS_PATH, index_context_attribute
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.keys.keystore import parse_key_version
from fieldcrypt.keys.providers.aws_kms import PROVIDER_ID as KMS
from fieldcrypt.keys.providers.aws_kms import validate_kms_key
from fieldcrypt.keys.providers.base import MasterKeyInfo as KeyRef
from fieldcrypt.keys.providers.local import PROVIDER_ID as LOCAL
from fieldcrypt.keys.providers.pkcs11 import PROVIDER_ID as PKCS11
from fieldcrypt.keys.providers.pkcs11 import Pkcs11Provider, Pkcs11Token
from fieldcrypt.lake.audit import AUDIT_KEY_PATH
from fieldcrypt.lake.store import FileVersion, LakeStore
from fieldcrypt.policy.policy import POLICY_PATH, AttributePolicy


def _fingerprint(versions: Mapping[str, FileVersion]) -> str:
    """A short digest of a partition's file names, sizes and modification times."""
    listed = "\n".join(f"{rel}\t{v.size}\t{v.mtime_ns}" for rel, v in sorted(versions.items()))
    return hashlib.blake2b(listed.encode(), digest_size=8).hexdigest()


# Partitions whose wrapped-key columns the completion scan reads at once (I/O bound: S3 requests).
SCAN_THREADS = 8

# The enabled datasets, listed when a scan needs them (after the policy's own key was rewrapped).
EnabledDatasets = Callable[[], Sequence[EnabledDataset]]


@dataclass
class RotationStatus:
    campaign: Campaign | None
    remaining: dict[str, list[str]]  # "dataset/partition" (or "dataset") -> old master key refs still present
    scanned: int
    # "dataset/partition" -> the fingerprint of its files (names, sizes, modification times) as listed now
    fingerprints: dict[str, str] = field(default_factory=dict)
    read: int = 0  # partitions whose files were read (the others were known clean and unchanged)
    unread: list[str] = field(default_factory=list)  # not read for lack of budget (`max_reads`): unknown

    @property
    def complete(self) -> bool:
        return not self.remaining and not self.unread

    @property
    def clean(self) -> dict[str, str]:
        """Partitions known to hold no old key now -> fingerprint: what a next scan may pass as `known_clean`.
        Never an unread partition."""
        unknown = set(self.remaining) | set(self.unread)
        return {label: fp for label, fp in self.fingerprints.items() if label not in unknown}


def start_rotation(
    keys: MasterKeyAccess, retiring: RetiringIndexKeys, to: str | None = None, *, to_kms_key: str | None = None
) -> Campaign:
    """Start moving every wrapped data key to a new master key (local: a new key version).

    `to`: aws-kms, the new key's ARN; `pkcs11:<label>`, a key in the configured token (from
    local or pkcs11; the workspace must be configured with the pkcs11 provider).

    Everything is validated before the first write (the keystore's new version), and
    the binding is written last; a crash between them is resumed by running it again.
    """
    to = to or to_kms_key
    binding = keys.lake.bindings.load()
    if binding is None:
        raise PolicyError(f"lake {keys.lake.store.uri} has no bound master key yet; nothing to rotate")
    under_way = attributes_reindexing(keys.lake.index_keys, retiring)
    if under_way:
        raise PolicyError(
            f"a blind-index re-index of {', '.join(under_way)} is under way; complete it before a rotation"
        )
    if to is not None and to.startswith(f"{PKCS11}:"):
        updated = start_pkcs11_rotation(keys, binding, to.removeprefix(f"{PKCS11}:"))
        new = updated.current
    elif binding.current.provider == LOCAL:
        if to_kms_key:
            raise PolicyError("rotation from the local provider to aws-kms is not supported")
        keystore = keys.load_keystore()
        binding = keys.with_check_values(binding, keystore)  # a wrong master key is refused here
        bound_version = parse_key_version(binding.current.key_version)
        # Resume: a start interrupted after the keystore gained its version reuses that version.
        resuming = keystore.current > bound_version
        version = keystore.current if resuming else keystore.next_version()
        new = KeyRef(LOCAL, keystore.key_id, str(version))
        binding.start(new, keys.lake.audit.actor)  # validation only: refuses a second campaign before any write
        if not resuming:
            keystore.add_version()
        updated = binding.start(new, keys.lake.audit.actor, keystore.check_value(version))
    elif binding.current.provider == PKCS11:
        raise PolicyError("rotation on pkcs11 needs the new key's label (--to pkcs11:<label>)")
    else:
        if not to:
            raise PolicyError("rotation on aws-kms needs the new key's ARN (--to)")
        keys.key_cache()  # the configured key is the bound one
        new = KeyRef(KMS, validate_kms_key(keys.kms_client(), to))
        updated = binding.start(new, keys.lake.audit.actor)
    keys.lake.bindings.save(updated, previous=binding)
    campaign = updated.active_campaign
    assert campaign is not None
    keys.drop_cache()
    keys.lake.audit.record(
        "rotation_start", master_key=campaign.old.ref, to_master_key=new.ref, detail=campaign.campaign_id
    )
    rotate_index_keys(keys)
    return campaign


def start_pkcs11_rotation(keys: MasterKeyAccess, binding: KeyBinding, label: str) -> KeyBinding:
    """Validate the new pkcs11 key (and the bound key) before writing the binding that starts the campaign."""
    key = keys.config.key
    if key.provider != PKCS11:
        raise PolicyError(
            f"rotation to pkcs11:{label} needs the workspace configured with the pkcs11 provider (module, token, "
            "PIN source; and, from local, `keystore:` with the current keystore)"
        )
    if not label:
        raise PolicyError("rotation to pkcs11 needs the new key's label (--to pkcs11:<label>)")
    token = Pkcs11Token.for_settings(key.pkcs11_settings())
    if binding.current.provider == LOCAL:
        if not key.keystore_path:
            raise PolicyError(
                f"rotation from local master key {binding.current.ref} to pkcs11 needs the current keystore "
                "(`keystore:` in the catalog's pkcs11 key)"
            )
        keystore = keys.load_keystore()
        binding = keys.with_check_values(binding, keystore)  # a wrong local master key is refused here
        if binding.current != KeyRef(LOCAL, keystore.key_id, str(keystore.current)):
            raise KeyProviderError(
                f"lake {keys.lake.store.uri} is bound to {binding.current.ref}, keystore {keystore.path} holds "
                f"{keystore.key_id}#{keystore.current}; use the keystore of this workspace"
            )
    elif binding.current.provider == PKCS11:
        if label == binding.current.key_id:
            raise PolicyError(f"pkcs11 key {label!r} is already the current master key")
        Pkcs11Provider(token, binding.current.key_id)  # the bound key is still usable
    else:
        raise PolicyError(f"rotation from {binding.current.provider} to pkcs11 is not supported")
    target = Pkcs11Provider(token, label)  # refuses a key without the required attributes, naming it
    new = KeyRef(PKCS11, label)
    return binding.start(new, keys.lake.audit.actor, target.check_value(label))


def rotate(job: PartitionJob, cache: DataKeyCache, store: LakeStore) -> RotateReport:
    """Rewrap the data keys of every file of a partition under the current master key."""
    reports = job.each_file(
        lambda rel: rotate_file(
            store,
            rel,
            job.dataset.spec,
            job.dataset.attributes,
            cache,
            dataset_root=job.dataset.layout.path,
            partition=job.partition,
            ledger=job.ledger,
            commit=job.commit,
        ),
    )
    return RotateReport.total(job.where, reports)


def old_key_refs(keys: MasterKeyAccess, attributes: list[AttributePolicy], files: list[str]) -> list[str]:
    """Master keys (refs) other than the current one that still wrap data keys of `files` (no KMS call)."""
    binding = keys.lake.bindings.load()
    return stale_key_refs(keys.lake.store, attributes, files, binding.current.ref if binding else None)


def stale_key_refs(
    store: LakeStore, attributes: list[AttributePolicy], files: list[str], current: str | None
) -> list[str]:
    refs: set[str] = set()
    for rel in files:
        refs.update(wrapped_key_refs(store, rel, attributes).values())
    return sorted(ref for ref in refs if ref != current)


def rotation_status(
    keys: MasterKeyAccess,
    datasets: EnabledDatasets,
    *,
    threads: int = SCAN_THREADS,
    known_clean: Mapping[str, str] | None = None,
    max_reads: int | None = None,
) -> RotationStatus:
    """Scan every partition for wrapped keys not under the current master key (no KMS call).

    Each dataset is listed once (names, sizes, modification times); the partitions'
    wrapped-key columns are then read `threads` at a time. `known_clean` maps a partition
    ("dataset/partition") to the fingerprint it had when a previous scan found it holding
    no old key under the same current key: a partition whose files are unchanged since is
    not read again (the rotation driver's cursor). A partition once clean stays clean while
    its files are unchanged: during a campaign every write wraps under the new key.
    `max_reads` bounds the partitions read (in dataset and partition order); the others are
    `unread`, and the status is not complete while any are (the rotation driver's time bound).
    """
    if threads < 1:
        raise ConfigError(f"scan threads must be at least 1, got {threads}")
    if max_reads is not None and max_reads < 1:
        raise ConfigError(f"max reads must be at least 1, got {max_reads}")
    binding = keys.lake.bindings.load()
    current = binding.current.ref if binding else None
    known = known_clean or {}
    fingerprints: dict[str, str] = {}
    to_read: list[tuple[str, list[AttributePolicy], list[str]]] = []
    store = keys.lake.store
    for enabled in datasets():  # a protected dataset the catalog dropped is an error
        dataset, attributes, layout = enabled.name, enabled.attributes, enabled.layout
        versions = store.list_file_versions(layout.path)
        for partition, files in layout.partitions(store, versions).items():
            label = dataset if partition is None else f"{dataset}/{partition}"
            fingerprints[label] = _fingerprint({rel: versions[rel] for rel in files})
            if known.get(label) != fingerprints[label]:
                to_read.append((label, attributes, files))

    unread = [label for label, _, _ in to_read[max_reads:]] if max_reads is not None else []
    to_read = to_read[:max_reads] if max_reads is not None else to_read

    def old_refs(item: tuple[str, list[AttributePolicy], list[str]]) -> tuple[str, list[str]]:
        label, attributes, files = item
        return label, stale_key_refs(store, attributes, files, current)

    if threads == 1 or len(to_read) <= 1:
        found = [old_refs(item) for item in to_read]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            found = list(pool.map(old_refs, to_read))
    remaining = {label: stale for label, stale in found if stale}
    index_refs = {WrappedKey.from_bytes(value).master_key_ref for value in keys.lake.index_keys.load().values()}
    if index_refs - {current}:
        remaining[INDEX_KEYS_PATH] = sorted(index_refs - {current})
    mac_key = keys.lake.policies.mac_key_value()
    if mac_key is not None and WrappedKey.from_bytes(mac_key).master_key_ref != current:
        remaining[POLICY_PATH] = [WrappedKey.from_bytes(mac_key).master_key_ref]
    audit_key = keys.lake.audit.stored_key()
    if audit_key is not None and WrappedKey.from_bytes(audit_key).master_key_ref != current:
        remaining[AUDIT_KEY_PATH] = [WrappedKey.from_bytes(audit_key).master_key_ref]
    return RotationStatus(
        binding.active_campaign if binding else None,
        remaining,
        len(fingerprints),
        fingerprints,
        len(to_read),
        unread,
    )


def rotate_index_keys(keys: MasterKeyAccess) -> int:
    """Rewrap every blind-index key, the policy MAC key and the audit key not yet under the current master key."""
    cache = keys.key_cache()
    rewrapped = 0

    def rewrap_stale(stored: dict[str, bytes]) -> dict[str, bytes] | None:
        nonlocal rewrapped
        stale = {name: value for name, value in stored.items() if not cache.is_current(value)}
        rewrapped = len(stale)
        for name, value in stale.items():
            dataset, _, path = name.partition(".")
            stored = {**stored, name: cache.rewrap(value, dataset, index_context_attribute(path))}
        return stored if stale else None

    keys.lake.index_keys.update(rewrap_stale)
    rewrapped += int(keys.lake.policies.rewrap_key())
    return rewrapped + int(keys.lake.audit.rewrap_key(cache))


def complete_rotation(keys: MasterKeyAccess, datasets: EnabledDatasets) -> Campaign:
    """Prove no wrapped key under the old master key remains, then retire it.

    The binding is marked complete first, then the old local version retired; run
    again after a crash between the two, it finishes the retirement.
    """
    binding = keys.lake.bindings.load()
    if binding is None:
        raise PolicyError("no rotation is in progress")
    if binding.active_campaign is None:
        done = binding.last_completed
        if done is not None and retire_old_version(keys, done):
            keys.lake.audit.record(
                "rotation_complete",
                master_key=done.old.ref,
                to_master_key=done.new.ref,
                detail=f"{done.campaign_id}; retirement of the old key version resumed",
            )
            return done
        raise PolicyError("no rotation is in progress")
    keys.key_cache()  # the configured key matches the binding (and its check value)
    rotate_index_keys(keys)  # a handful of keys: done here (and at start), not per partition
    status = rotation_status(keys, datasets)
    if not status.complete:
        listed = ", ".join(sorted(status.remaining)[:20])
        raise PolicyError(
            f"rotation incomplete: {len(status.remaining)} partitions still hold old wrapped keys: {listed}"
        )
    updated, campaign = binding.complete()
    keys.lake.bindings.save(updated, previous=binding)
    retire_old_version(keys, campaign)
    keys.lake.audit.record(
        "rotation_complete",
        master_key=campaign.old.ref,
        to_master_key=campaign.new.ref,
        detail=f"{campaign.campaign_id}; {status.scanned} partitions scanned",
    )
    return campaign


def retire_old_version(keys: MasterKeyAccess, campaign: Campaign) -> bool:
    """Retire a completed campaign's old local key version if still enabled; True if it was."""
    if campaign.old.provider != LOCAL or campaign.new.provider != LOCAL:
        return False  # moved off the keystore (to pkcs11): nothing left to retire in it; the operator destroys it
    keystore = keys.load_keystore()
    version = parse_key_version(campaign.old.key_version)
    entry = keystore.versions.get(version)
    if keystore.key_id != campaign.old.key_id or entry is None or entry.state != "enabled":
        return False
    keystore.retire(version)
    keys.drop_cache(retired_version=version)
    return True
