"""A workspace: one customer's lake, policy and master key; the safe entry point.

`Workspace` exposes what users do - enable, protect, status, verify, reveal, rotate -
and keeps key material, nonces and wrapping internal. Nothing here contacts a KMS
until a key is first needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt import policy_auth
from fieldcrypt.audit import AuditLog
from fieldcrypt.binding import BindingStore, Campaign, KeyBinding
from fieldcrypt.blind_index import INDEX_KEYS_PATH, BlindIndexKey, IndexKeyStore, index_context_attribute
from fieldcrypt.cache import MAX_TTL_SECONDS, DataKeyCache
from fieldcrypt.columns import read_path, row_key_bytes
from fieldcrypt.dispatch import DispatchReport, Segment, segment_row_groups
from fieldcrypt.errors import (
    ConcurrentUpdateError,
    ConfigError,
    FieldcryptError,
    InputError,
    IntegrityError,
    KeyProviderError,
    PolicyError,
    VerificationError,
    WrongMasterKeyError,
)
from fieldcrypt.keystore import Keystore, parse_key_version
from fieldcrypt.layout import DatasetLayout
from fieldcrypt.mask import mask_values
from fieldcrypt.parquet_io import open_parquet, read_ahead, row_groups
from fieldcrypt.policy import POLICY_PATH, AttributePolicy, DatasetSpec, Policy, PolicyStore
from fieldcrypt.policy_auth import MAC_KEY_ATTRIBUTE, MAC_KEY_DATASET, check_file_protection, check_stored_file
from fieldcrypt.protect import ProtectReport, check_schema, protect_file, scan_file
from fieldcrypt.providers.aws_kms import PROVIDER_ID as KMS
from fieldcrypt.providers.aws_kms import RETRY_MODES, AwsKmsProvider, kms_client, validate_kms_key
from fieldcrypt.providers.base import EncryptionContext, KeyProvider
from fieldcrypt.providers.base import MasterKeyInfo as KeyRef
from fieldcrypt.providers.local import PROVIDER_ID as LOCAL
from fieldcrypt.providers.local import LocalKeyProvider
from fieldcrypt.providers.pkcs11 import PROVIDER_ID as PKCS11
from fieldcrypt.providers.pkcs11 import MigratingProvider, Pkcs11Provider, Pkcs11Settings, Pkcs11Token
from fieldcrypt.reindex import IndexKeys, ReindexReport, RetiringIndexKeys, reindex_file
from fieldcrypt.reveal import reveal
from fieldcrypt.rotate import RotateReport, rotate_file, stored_wrapped_keys, wrapped_key_refs
from fieldcrypt.select import existing_ciphertext
from fieldcrypt.store import FileVersion, LakeStore
from fieldcrypt.wrapped_key import WrappedKey


@dataclass(frozen=True)
class KeyConfig:
    """Where the master key lives. `local`: a keystore file; `aws-kms`: a key ARN or alias;
    `pkcs11`: a key label in an HSM token (`keystore_path`: the old local keystore while rotating from local)."""

    provider: str = LOCAL
    keystore_path: str | None = None
    kms_key: str | None = None
    kms_region: str | None = None
    kms_endpoint_url: str | None = None
    kms_retry_mode: str = "standard"
    kms_max_attempts: int = 5
    pkcs11_module: str | None = None
    pkcs11_token: str | None = None
    pkcs11_key_label: str | None = None
    pkcs11_pin_env: str | None = None  # the name of the variable holding the PIN, never the PIN
    pkcs11_pin_file: str | None = None

    def __post_init__(self) -> None:
        if self.provider not in (LOCAL, KMS, PKCS11):
            raise KeyProviderError(f"key provider {self.provider!r} is not one of {LOCAL}, {KMS}, {PKCS11}")
        if self.provider == PKCS11:
            self.pkcs11_settings()  # refuses a missing module, token or PIN source here
            if not self.pkcs11_key_label:
                raise KeyProviderError("the pkcs11 key provider needs a key label")
        if self.provider == LOCAL and not self.keystore_path:
            raise KeyProviderError("the local key provider needs a keystore path")
        if self.provider == KMS and not self.kms_key:
            raise KeyProviderError("the aws-kms key provider needs a key ARN or alias")
        # Refused here, not when the KMS client is first built mid-run.
        if self.kms_retry_mode not in RETRY_MODES:
            raise KeyProviderError(f"KMS retry mode {self.kms_retry_mode!r} is not one of {', '.join(RETRY_MODES)}")
        if self.kms_max_attempts < 1:
            raise KeyProviderError(f"KMS max attempts must be at least 1, got {self.kms_max_attempts}")

    def pkcs11_settings(self) -> Pkcs11Settings:
        return Pkcs11Settings(
            self.pkcs11_module or "", self.pkcs11_token or "", self.pkcs11_pin_env, self.pkcs11_pin_file
        )


@dataclass(frozen=True)
class WorkspaceConfig:
    name: str
    lake_uri: str
    key: KeyConfig
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    data_key_ttl_seconds: float = MAX_TTL_SECONDS
    datasets: Mapping[str, DatasetLayout] = field(default_factory=dict)  # the catalog's declarations
    file_workers: int = 2  # files of one partition processed at once


Result = TypeVar("Result")


def _fingerprint(versions: Mapping[str, FileVersion]) -> str:
    """A short digest of a partition's file names, sizes and modification times."""
    listed = "\n".join(f"{rel}\t{v.size}\t{v.mtime_ns}" for rel, v in sorted(versions.items()))
    return hashlib.blake2b(listed.encode(), digest_size=8).hexdigest()


# Partitions whose wrapped-key columns the completion scan reads at once (I/O bound: S3 requests).
SCAN_THREADS = 8


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


class Workspace:
    def __init__(self, config: WorkspaceConfig, actor: str) -> None:
        self.config = config
        self.name = config.name
        self.store = LakeStore.from_uri(config.lake_uri, endpoint_url=config.s3_endpoint_url, region=config.s3_region)
        self.policies = PolicyStore(self.store, config.name, keys=self.key_cache)
        self.bindings = BindingStore(self.store)
        self.index_keys = IndexKeyStore(self.store)
        self.retiring_index_keys = RetiringIndexKeys(self.store)  # old keys of blind-index re-indexes under way
        self.audit = AuditLog(self.store, config.name, actor)
        self._cache: DataKeyCache | None = None
        self._bound: KeyRef | None = None  # the master key this process's cache wraps under
        self._binding_seen: FileVersion | None = None

    def __repr__(self) -> str:
        return f"Workspace({self.name!r}, lake={self.store.uri!r})"

    # -- keys ----------------------------------------------------------------------------

    def key_cache(self) -> DataKeyCache:
        """The data-key cache over the bound master key, built (and the key described) on first use.

        A lake seen for the first time is bound here: its (empty) authenticated policy is
        written first, then the binding with the key's check value, so a crash between the
        two leaves a lake that the next run binds.
        """
        if self._cache is None:
            provider, binding = self._provider()
            info = provider.describe()
            cache = DataKeyCache(
                provider,
                self.name,
                self.audit,
                ttl_seconds=self.config.data_key_ttl_seconds,
                guard=self._check_binding,
            )
            if binding is None:
                self._cache = cache  # the policy store below reaches the cache through key_cache()
                try:
                    self.policies.create(Policy(self.name))  # another worker's first policy is kept
                    bound = KeyBinding(info).with_check_value(info, self._check_value(provider, info))
                    self.bindings.save(bound, previous=None)
                except BaseException:
                    self._cache = None
                    raise
                self.audit.record("bind_master_key", master_key=info.ref)
            self._bound = info
            self._binding_seen = self.bindings.version()
            self._cache = cache
        return self._cache

    def _check_binding(self) -> None:
        """Stop a process whose master key another process rotated away (one stat while unchanged)."""
        seen = self.bindings.version()
        if seen == self._binding_seen:
            return
        binding = self.bindings.load()
        if binding is None or self._bound is None or binding.current != self._bound:
            now = binding.current.ref if binding else "nothing"
            raise KeyProviderError(
                f"master key of lake {self.store.uri} moved from {self._bound.ref if self._bound else '?'} to {now} "
                "after this process loaded it (a rotation by another process); nothing was written under the old "
                "key - restart this run"
            )
        cache = self._cache
        if cache is not None and isinstance(cache.provider, LocalKeyProvider) and binding.active_campaign is None:
            for campaign in binding.campaigns:  # another process retired them: drop our copy of the bytes
                if campaign.status == "complete" and campaign.old.provider == LOCAL:
                    cache.provider.forget(parse_key_version(campaign.old.key_version))
        self._binding_seen = seen

    @staticmethod
    def _check_value(provider: KeyProvider, info: KeyRef) -> str:
        if isinstance(provider, LocalKeyProvider):
            return provider.check_value(int(info.key_version))
        if isinstance(provider, Pkcs11Provider):
            return provider.check_value(info.key_id)
        return ""  # aws-kms: the key ARN is the check (docs/FORMAT.md section 5)

    def _provider(self) -> tuple[KeyProvider, KeyBinding | None]:
        """The provider of the bound (or, on a new lake, configured) key, and the stored binding."""
        binding = self.bindings.load()
        key = self.config.key
        if key.provider == LOCAL:
            keystore = self._keystore()  # refuses a version whose bytes do not match its own KCV
            configured = KeyRef(LOCAL, keystore.key_id, str(keystore.current))
            if binding is not None and binding.current != configured:
                raise KeyProviderError(
                    f"lake {self.store.uri} is bound to master key {binding.current.ref}, but keystore "
                    f"{keystore.path} holds {configured.ref}; use the keystore of this workspace, or finish "
                    f"`fieldcrypt rotate start` if a rotation was interrupted"
                )
            if binding is not None:  # the binding's KCVs first: a wrong key is refused before any write
                binding = self._checked_values(binding, keystore)
            added = keystore.add_missing_check_values()
            if added:
                self.audit.record(
                    "key_check_value_added", master_key=keystore.key_id, detail=f"keystore versions {added}"
                )
            provider: KeyProvider = LocalKeyProvider(keystore)
        elif key.provider == PKCS11:
            provider = self._pkcs11_provider(binding)
        else:
            client = self._kms_client()
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
                        f"lake {self.store.uri} is bound to master key {binding.current.ref}, but this workspace is "
                        f"configured with {configured_arn}; {advice}"
                    )
                current, also = binding.current.key_id, ([campaign.old.key_id] if campaign else [])
            provider = AwsKmsProvider(current, self.name, client, also_decrypt=also)
        info = provider.describe()
        self.audit.record("describe_key", master_key=info.ref)
        return provider, binding

    def _pkcs11_provider(self, binding: KeyBinding | None) -> KeyProvider:
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
                f"lake {self.store.uri} is bound to master key {binding.current.provider}:{binding.current.ref}, but "
                f"this workspace is configured with pkcs11 key {configured!r} on token {token.label!r}; {advice}"
            )
        also = [old.key_id] if old is not None and old.provider == PKCS11 else []
        provider = Pkcs11Provider(token, binding.current.key_id, also_decrypt=also)
        for ref in [binding.current] + ([old] if old is not None and old.provider == PKCS11 else []):
            expected = binding.check_values.get(ref.ref)
            if expected is not None and not hmac.compare_digest(expected, provider.check_value(ref.key_id)):
                raise WrongMasterKeyError(
                    f"wrong master key: pkcs11 key {ref.key_id!r} on token {token.label!r} does not match the key "
                    f"check value lake {self.store.uri} was bound to (another key under the same label); nothing "
                    "was written - restore the key or the token"
                )
        if old is not None and old.provider == LOCAL:  # mid-rotation from local: the old keystore unwraps
            if not key.keystore_path:
                raise KeyProviderError(
                    f"lake {self.store.uri} is rotating from local master key {old.ref} to pkcs11 key "
                    f"{binding.current.key_id!r}; the catalog's pkcs11 key needs `keystore:` until it completes"
                )
            keystore = self._keystore()
            self._checked_values(binding, keystore)
            return MigratingProvider(provider, LocalKeyProvider(keystore))
        return provider

    def _checked_values(self, binding: KeyBinding, keystore: Keystore) -> KeyBinding:
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
                    f"from the one lake {self.store.uri} was bound to (same id and version, other key bytes); "
                    "nothing was written - restore this lake's keystore"
                )
        if updated != binding:
            self.bindings.save(updated, previous=binding)
            added = sorted(set(updated.check_values) - set(binding.check_values))
            self.audit.record("key_check_value_added", detail=f"binding: {', '.join(added)}")
        return updated

    def _prove_local_key(self, keystore: Keystore, ref: KeyRef) -> None:
        """Migration check: the first stored wrapped key under `ref` must unwrap with the keystore's bytes.

        Looks at the policy's MAC key, the blind-index keys, then the partitions of the
        datasets the stored policy names (read for their names only, not trusted), and
        stops at the first key under `ref`. Nothing stored under `ref`: nothing to lose.
        """
        provider = LocalKeyProvider(keystore)
        for value, context in self._stored_wrapped_keys():
            wrapped = WrappedKey.from_bytes(value)
            if wrapped.master_key_ref != ref.ref:
                continue
            try:
                provider.unwrap(wrapped, context)
            except IntegrityError:
                raise WrongMasterKeyError(
                    f"wrong master key: keystore {keystore.path} holds {ref.ref}, but its bytes do not unwrap the data "
                    f"keys lake {self.store.uri} stores under it; nothing was written - restore this lake's keystore"
                ) from None
            return

    def _stored_wrapped_keys(self) -> Iterator[tuple[bytes, EncryptionContext]]:
        with contextlib.suppress(FieldcryptError):
            mac_key = self.policies.mac_key_value()
            if mac_key is not None:
                yield mac_key, EncryptionContext(self.name, MAC_KEY_DATASET, MAC_KEY_ATTRIBUTE)
        with contextlib.suppress(FieldcryptError):
            for name, value in self.index_keys.load().items():
                dataset, _, path = name.partition(".")
                yield value, EncryptionContext(self.name, dataset, index_context_attribute(path))
        try:
            where = self.store.display(POLICY_PATH)
            doc, _ = policy_auth.split(self.store.read_bytes(POLICY_PATH), where)
            named = Policy.from_json(json.dumps(doc), where)
        except (FieldcryptError, OSError):
            return
        for dataset in sorted(set(named.datasets) & set(self.config.datasets)):
            attributes = named.for_dataset(dataset)
            for files in self.layout(dataset).partitions(self.store).values():
                for rel in files:
                    with contextlib.suppress(FieldcryptError):
                        for value, attribute in stored_wrapped_keys(self.store, rel, attributes).items():
                            yield value, EncryptionContext(self.name, dataset, attribute.path)

    def _keystore(self) -> Keystore:
        keystore = Keystore.load(Path(self.config.key.keystore_path or ""))
        if keystore.workspace != self.name:
            raise KeyProviderError(
                f"keystore {keystore.path} belongs to workspace {keystore.workspace!r}, not {self.name!r}"
            )
        return keystore

    def _kms_client(self) -> object:
        key = self.config.key
        return kms_client(key.kms_region, key.kms_endpoint_url, key.kms_retry_mode, key.kms_max_attempts)

    # -- policy --------------------------------------------------------------------------

    def policy(self) -> Policy:
        return self.policies.load()

    def enable(
        self,
        attribute: str,
        mask: str,
        *,
        acknowledge_irreversible: bool,
        blind_index: bool = False,
        pad_to: int = 0,
        normalize: str = "none",
    ) -> AttributePolicy:
        """Protect `dataset.path` for every row ingested from now on. Irreversible.

        The dataset must be declared in the catalog; the attribute must exist, with a type
        that can be protected, in every file of the newest partition landed so far.
        With `pad_to`, cells are padded to a multiple of that many bytes, so their length shows
        only the bucket of the value's length (cell format 2, docs/FORMAT.md section 2a).
        With `blind_index`, protected rows also get a keyed index of their value (joins and
        distinct counts without decrypting); its key is created here, under the master key.
        `normalize` (with a blind index: trim, email, e164) is applied to values before indexing.
        """
        if not acknowledge_irreversible:
            raise PolicyError(
                f"enabling {attribute} is irreversible and leaves rows ingested before now unencrypted; "
                "acknowledge both to proceed"
            )
        dataset = attribute.partition(".")[0]
        layout = self.layout(dataset)
        policy = previous = self.policy()
        if dataset not in policy.datasets:
            policy = policy.with_dataset(layout.spec)
        policy = policy.with_enabled(
            attribute,
            mask,
            enabled_by=self.audit.actor,
            blind_index=blind_index,
            pad_to=pad_to,
            normalize=normalize,
        )
        entry = policy.attributes[attribute]
        partitions = layout.partitions(self.store)
        if partitions:  # the attribute must exist, with a protectable type, in the data landed so far
            for rel in partitions[list(partitions)[-1]]:
                with open_parquet(self.store, rel) as parquet:
                    check_schema(parquet.schema_arrow, policy.datasets[dataset], [entry], self.store.display(rel))
        self.policies.load().check_successor(policy)  # refuse before creating an index key
        if blind_index:  # the key exists before any run can need it (one left by an interrupted enable is kept)
            cache = self.key_cache()
            self.index_keys.update(
                lambda keys: (
                    None if entry.name in keys else {**keys, entry.name: cache.new_index_key(dataset, entry.path)}
                )
            )
        self.policies.save(policy, previous=previous)
        self.audit.record("enable", dataset=dataset, attribute=entry.path, detail=f"mask={mask}")
        return entry

    def encrypt_history(self, attribute: str, *, acknowledge_irreversible: bool) -> AttributePolicy:
        """From now on, rows of `attribute` ingested before its enablement are encrypted too. Irreversible.

        Nothing is rewritten here: each protection run (`protect`, the Dagster protection assets,
        a backfill over a chosen range of partitions) then encrypts the historical rows of the
        partitions it covers, verified and replaced atomically per file like any protection, and a
        re-run is a no-op. It cannot reach copies of the plaintext outside the lake, nor older
        versions of the files kept by S3 versioning, snapshots or backups (docs/OPERATIONS.md).
        """
        if not acknowledge_irreversible:
            raise PolicyError(
                f"encrypting the history of {attribute} is irreversible and does not reach copies outside the "
                "lake (old S3 object versions, snapshots, backups); acknowledge to proceed"
            )
        previous = self.policy()
        policy = previous.with_history_encrypted(attribute)
        entry = policy.attributes[attribute]
        self.layout(entry.dataset)  # still declared
        self.policies.save(policy, previous=previous)
        self.audit.record("encrypt_history", dataset=entry.dataset, attribute=entry.path)
        return entry

    # -- datasets and partitions ---------------------------------------------------------

    @property
    def datasets(self) -> list[str]:
        """The declared datasets, by name."""
        return sorted(self.config.datasets)

    def layout(self, dataset: str) -> DatasetLayout:
        """A declared dataset; a named error for one the catalog does not declare."""
        layout = self.config.datasets.get(dataset)
        if layout is None:
            declared = ", ".join(self.datasets) or "none"
            raise InputError(f"dataset {dataset!r} is not declared in workspace {self.name!r} (declared: {declared})")
        return layout

    def partitions(self, dataset: str) -> list[str | None]:
        """The partitions of `dataset` that hold data files, oldest first (None: unpartitioned)."""
        return list(self.layout(dataset).partitions(self.store))

    def files(self, dataset: str, partition: str | None) -> list[str]:
        """The data files of one partition, relative to the lake; empty for an empty partition."""
        return self.layout(dataset).files(self.store, partition)

    def partition_display(self, dataset: str, partition: str | None) -> str:
        return self.store.display(self.layout(dataset).partition_dir(partition))

    def _dataset(self, dataset: str) -> tuple[DatasetSpec, list[AttributePolicy]]:
        """How to read `dataset` and its enabled attributes; the catalog must agree with the policy."""
        layout = self.layout(dataset)
        policy = self.policy()
        spec = policy.datasets.get(dataset)
        attributes = policy.for_dataset(dataset)
        if spec is not None and attributes and spec != layout.spec:
            raise ConfigError(
                f"catalog declares {dataset} with ingestion column {layout.spec.ingested_at!r} and primary key "
                f"{layout.spec.primary_key!r}, but its enabled attributes were enabled with {spec.ingested_at!r} "
                f"and {spec.primary_key!r}; enabling is irreversible, restore the declaration"
            )
        dropped = [a.path for a in attributes if layout.attributes and a.path not in layout.attributes]
        if dropped:
            raise ConfigError(
                f"catalog lists the attributes of {dataset} without {', '.join(dropped)}, which "
                "are enabled; enabling is irreversible, add them back"
            )
        return spec or layout.spec, attributes

    def _each_file(self, dataset: str, partition: str | None, work: Callable[[str], Result]) -> list[Result]:
        """`work(rel)` for each file of a partition, a few at a time; every file is tried.

        Files are independent (each verified and replaced on its own), so one failing file
        does not stop the others; the first failure is raised afterwards, naming how many failed.
        """
        files = self.files(dataset, partition)
        if len(files) <= 1:
            return [work(rel) for rel in files]
        results: list[Result] = []
        failures: list[FieldcryptError] = []
        with ThreadPoolExecutor(max_workers=self.config.file_workers, thread_name_prefix="fieldcrypt-file") as pool:
            for future in [pool.submit(work, rel) for rel in files]:
                try:
                    results.append(future.result())
                except FieldcryptError as exc:
                    failures.append(exc)
        if failures:
            first = failures[0]
            raise type(first)(
                f"{len(failures)} of {len(files)} files of {self.partition_display(dataset, partition)} failed "
                f"(the others are done); first: {first}"
            ) from first
        return results

    # -- protection ----------------------------------------------------------------------

    def protect(self, dataset: str, partition: str | None) -> ProtectReport:
        """Encrypt every pending cell of every file of a partition; a report summed over its files."""
        spec, attributes = self._dataset(dataset)
        where = self.partition_display(dataset, partition)
        if not attributes:
            # a file protected under a lost policy is refused, not scanned as "nothing enabled"
            return ProtectReport.total(
                where, self._each_file(dataset, partition, lambda rel: self._checked_scan(rel, spec, attributes))
            )
        cache = self.key_cache()
        index_keys = self._index_keys(attributes)
        reports = self._each_file(
            dataset,
            partition,
            lambda rel: protect_file(
                self.store, rel, spec, attributes, cache, partition=partition, index_keys=index_keys
            ),
        )
        return ProtectReport.total(where, reports, master_key=cache.master_key.ref)

    def _index_keys(self, attributes: list[AttributePolicy]) -> dict[str, BlindIndexKey]:
        """The unwrapped blind-index keys of the attributes that have one."""
        wanted = [a for a in attributes if a.blind_index]
        if not wanted:
            return {}
        stored = self.index_keys.load()
        missing = [a.name for a in wanted if a.name not in stored]
        if missing:
            raise PolicyError(f"blind-index key of {', '.join(missing)} is missing from {INDEX_KEYS_PATH}")
        cache = self.key_cache()
        return {a.name: cache.index_key_for(stored[a.name], a.dataset, a.path).normalized(a.normalize) for a in wanted}

    def status(self, dataset: str, partition: str | None) -> ProtectReport:
        """Per-attribute counts of a partition, summed over its files, without changing anything."""
        spec, attributes = self._dataset(dataset)
        reports = self._each_file(dataset, partition, lambda rel: scan_file(self.store, rel, spec, attributes))
        return ProtectReport.total(self.partition_display(dataset, partition), reports)

    def verify(self, dataset: str, partition: str | None) -> dict[str, int]:
        """Decrypt every protected cell of a partition in memory and check its mask; counts per attribute.

        Raises IntegrityError on a cell that does not authenticate, VerificationError on a
        protected row whose stored mask is not the mask of its decrypted value.
        """
        counts: dict[str, int] = {}
        for rel, attribute, batch, plaintext, protected in self._revealed(dataset, partition):
            counts[attribute.name] = counts.get(attribute.name, 0) + protected.true_count
            stored = pc.filter(read_path(batch, attribute.path), protected)
            if not stored.equals(mask_values(pc.filter(plaintext, protected), attribute.mask)):
                raise VerificationError(
                    f"{self.store.display(rel)}: a protected {attribute.name} "
                    "value does not hold the mask of its decrypted value"
                )
        return counts

    def reveal(
        self,
        dataset: str,
        partition: str | None,
        attributes: list[str],
        *,
        row_keys: Sequence[str] | None = None,
        reason: str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Dispatch and support: batches of (primary key, real values of `attributes`), plaintext in memory only.

        With `row_keys` (primary-key values as text) only those rows are decrypted. The audit log
        records, per file and attribute, the cells revealed, with the workspace's actor and `reason`.
        """
        spec, enabled = self._dataset(dataset)
        chosen = [a for a in enabled if a.name in attributes or a.path in attributes]
        unknown = set(attributes) - {a.name for a in chosen} - {a.path for a in chosen}
        if unknown:
            raise InputError(f"{', '.join(sorted(unknown))} not enabled for {dataset}")
        if row_keys is not None and len(spec.primary_key) != 1:
            raise InputError(f"{dataset} has no single-column primary key: rows cannot be chosen by key")
        wanted = None if row_keys is None else pa.array([key.encode() for key in row_keys], pa.binary())
        cache = self.key_cache()
        for rel in self.files(dataset, partition):
            where = self.store.display(rel)
            with open_parquet(self.store, rel) as parquet:
                for index, batch in enumerate(row_groups(parquet, where)):
                    at = f"{where} row group {index}"
                    if wanted is not None:  # decrypt the chosen rows only
                        keys = row_key_bytes(batch, spec.primary_key, at).cast(pa.binary())
                        batch = batch.filter(pc.is_in(keys, value_set=wanted))
                        if batch.num_rows == 0:
                            continue
                    self._audit_decryption("reveal", batch, chosen, partition, reason=reason)
                    columns = {a.name: reveal(batch, spec, a, cache, at, partition) for a in chosen}
                    columns = {key: batch.column(key) for key in spec.primary_key} | columns
                    yield pa.RecordBatch.from_pydict(columns)

    def dispatch(
        self,
        dataset: str,
        segment: pa.Array | Iterable[object],
        attributes: Sequence[str],
        *,
        reason: str,
        partition: str | None = None,
        report: DispatchReport | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Campaign sends: batches of (primary key, real values of `attributes`) for the rows of `segment`.

        `segment` holds primary-key values (one key column; millions are fine). `partition`
        defaults to the dataset's latest. Row groups whose key statistics hold no segment key
        are not read; the others are read for the key and the chosen attributes only, and
        only the segment's rows are decrypted. Each row group's decryption is audited
        (`dispatch`, actor, reason, attribute, cells) before its plaintext exists; the
        plaintext lives only in the yielded batches. `report`, if given, is filled with counts.
        """
        if not reason or not reason.strip():
            raise InputError("a dispatch needs a reason (campaign or ticket id): it is written to the audit log")
        spec, enabled = self._dataset(dataset)
        chosen = [a for a in enabled if a.name in attributes or a.path in attributes]
        unknown = set(attributes) - {a.name for a in chosen} - {a.path for a in chosen}
        if unknown or not chosen:
            raise InputError(f"{', '.join(sorted(unknown)) or 'no attribute'} not enabled for {dataset}")
        if len(spec.primary_key) != 1:
            raise InputError(f"{dataset} has no single-column primary key: a segment cannot name its rows")
        (key_column,) = spec.primary_key
        if partition is None:
            landed = self.partitions(dataset)
            if not landed:
                raise InputError(f"{dataset} has no partition with data to dispatch from")
            partition = landed[-1]
        report = report if report is not None else DispatchReport(dataset, partition)
        report.partition = partition
        cache = self.key_cache()
        chosen_segment: Segment | None = None
        for rel in self.files(dataset, partition):
            where = self.store.display(rel)
            with open_parquet(self.store, rel) as parquet:
                check_file_protection(parquet, enabled, where)
                schema = parquet.schema_arrow
                if schema.get_field_index(key_column) < 0:
                    raise InputError(f"{where}: primary-key column {key_column!r} is missing")
                if chosen_segment is None:
                    chosen_segment = Segment(segment, schema.field(key_column).type, dataset)
                    report.segment_keys = len(chosen_segment)
                wanted = {key_column} | {a.path.split(".")[0].split("[")[0] for a in chosen}
                wanted |= {c for a in chosen for c in (a.ciphertext_column, a.wrapped_key_column)}
                columns = [name for name in schema.names if name in wanted]
                report.files += 1
                # The next matching row group is read and filtered on a helper thread while this one decrypts.
                matching = segment_row_groups(parquet, where, columns, key_column, chosen_segment, report)
                with read_ahead(matching) as batches:
                    for index, batch in batches:
                        at = f"{where} row group {index}"
                        self._audit_decryption("dispatch", batch, chosen, partition, reason=reason)
                        values = {a.name: reveal(batch, spec, a, cache, at, partition) for a in chosen}
                        for a in chosen:
                            cells = pc.is_valid(existing_ciphertext(batch, a)).true_count
                            report.cells[a.name] = report.cells.get(a.name, 0) + cells
                        report.rows += batch.num_rows
                        yield pa.RecordBatch.from_pydict({key_column: batch.column(key_column)} | values)

    def _revealed(
        self, dataset: str, partition: str | None
    ) -> Iterator[tuple[str, AttributePolicy, pa.RecordBatch, pa.Array, pa.BooleanArray]]:
        """Per file, row group and attribute: the batch, the real values, and which rows are protected."""
        spec, attributes = self._dataset(dataset)
        cache = self.key_cache()
        for rel in self.files(dataset, partition):
            where = self.store.display(rel)
            with open_parquet(self.store, rel) as parquet:
                check_file_protection(parquet, attributes, where)  # verify checks what the file says it protects
                for index, batch in enumerate(row_groups(parquet, where)):
                    self._audit_decryption("verify_decrypt", batch, attributes, partition)
                    for attribute in attributes:
                        ciphertext = existing_ciphertext(batch, attribute)
                        plaintext = reveal(batch, spec, attribute, cache, f"{where} row group {index}", partition)
                        yield rel, attribute, batch, plaintext, pc.is_valid(ciphertext)

    def _audit_decryption(
        self,
        operation: str,
        batch: pa.RecordBatch,
        attributes: list[AttributePolicy],
        partition: str | None,
        reason: str | None = None,
    ) -> None:
        """One event per attribute and row group, written before any of its plaintext exists."""
        for attribute in attributes:
            cells = pc.is_valid(existing_ciphertext(batch, attribute)).true_count
            if cells:
                self.audit.record(
                    operation,
                    dataset=attribute.dataset,
                    attribute=attribute.path,
                    partition=partition,
                    cells=cells,
                    reason=reason,
                )

    def _checked_scan(self, rel: str, spec: DatasetSpec, attributes: list[AttributePolicy]) -> ProtectReport:
        check_stored_file(self.store, rel, attributes)
        return scan_file(self.store, rel, spec, attributes)

    # -- rotation ------------------------------------------------------------------------

    def start_rotation(self, to: str | None = None, *, to_kms_key: str | None = None) -> Campaign:
        """Start moving every wrapped data key to a new master key (local: a new key version).

        `to`: aws-kms, the new key's ARN; `pkcs11:<label>`, a key in the configured token (from
        local or pkcs11; the workspace must be configured with the pkcs11 provider).

        Everything is validated before the first write (the keystore's new version), and
        the binding is written last; a crash between them is resumed by running it again.
        """
        to = to or to_kms_key
        binding = self.bindings.load()
        if binding is None:
            raise PolicyError(f"lake {self.store.uri} has no bound master key yet; nothing to rotate")
        reindexing = self._reindexing()
        if reindexing:
            raise PolicyError(
                f"a blind-index re-index of {', '.join(reindexing)} is under way; complete it before a rotation"
            )
        if to is not None and to.startswith(f"{PKCS11}:"):
            updated = self._start_pkcs11_rotation(binding, to.removeprefix(f"{PKCS11}:"))
            new = updated.current
        elif binding.current.provider == LOCAL:
            if to_kms_key:
                raise PolicyError("rotation from the local provider to aws-kms is not supported")
            keystore = self._keystore()
            binding = self._checked_values(binding, keystore)  # a wrong master key is refused here
            bound_version = parse_key_version(binding.current.key_version)
            # Resume: a start interrupted after the keystore gained its version reuses that version.
            resuming = keystore.current > bound_version
            version = keystore.current if resuming else keystore.next_version()
            new = KeyRef(LOCAL, keystore.key_id, str(version))
            binding.start(new, self.audit.actor)  # validation only: refuses a second campaign before any write
            if not resuming:
                keystore.add_version()
            updated = binding.start(new, self.audit.actor, keystore.check_value(version))
        elif binding.current.provider == PKCS11:
            raise PolicyError("rotation on pkcs11 needs the new key's label (--to pkcs11:<label>)")
        else:
            if not to:
                raise PolicyError("rotation on aws-kms needs the new key's ARN (--to)")
            self.key_cache()  # the configured key is the bound one
            new = KeyRef(KMS, validate_kms_key(self._kms_client(), to))
            updated = binding.start(new, self.audit.actor)
        self.bindings.save(updated, previous=binding)
        campaign = updated.active_campaign
        assert campaign is not None
        self._drop_cache()
        self.audit.record(
            "rotation_start", master_key=campaign.old.ref, to_master_key=new.ref, detail=campaign.campaign_id
        )
        self._rotate_index_keys()
        return campaign

    def _start_pkcs11_rotation(self, binding: KeyBinding, label: str) -> KeyBinding:
        """Validate the new pkcs11 key (and the bound key) before writing the binding that starts the campaign."""
        key = self.config.key
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
            keystore = self._keystore()
            binding = self._checked_values(binding, keystore)  # a wrong local master key is refused here
            if binding.current != KeyRef(LOCAL, keystore.key_id, str(keystore.current)):
                raise KeyProviderError(
                    f"lake {self.store.uri} is bound to {binding.current.ref}, keystore {keystore.path} holds "
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
        return binding.start(new, self.audit.actor, target.check_value(label))

    def rotate(self, dataset: str, partition: str | None) -> RotateReport:
        """Rewrap the data keys of every file of a partition under the current master key."""
        spec, attributes = self._dataset(dataset)
        cache = self.key_cache()
        reports = self._each_file(
            dataset, partition, lambda rel: rotate_file(self.store, rel, spec, attributes, cache, partition=partition)
        )
        return RotateReport.total(self.partition_display(dataset, partition), reports)

    def old_key_refs(self, dataset: str, partition: str | None) -> list[str]:
        """Master keys (refs) other than the current one that still wrap data keys of a partition (no KMS call)."""
        binding = self.bindings.load()
        _, attributes = self._dataset(dataset)
        return self._old_key_refs(attributes, self.files(dataset, partition), binding.current.ref if binding else None)

    def _old_key_refs(self, attributes: list[AttributePolicy], files: list[str], current: str | None) -> list[str]:
        refs: set[str] = set()
        for rel in files:
            refs.update(wrapped_key_refs(self.store, rel, attributes).values())
        return sorted(ref for ref in refs if ref != current)

    def rotation_status(
        self,
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
        binding = self.bindings.load()
        current = binding.current.ref if binding else None
        known = known_clean or {}
        fingerprints: dict[str, str] = {}
        to_read: list[tuple[str, list[AttributePolicy], list[str]]] = []
        for dataset in sorted(self.policy().datasets):
            _, attributes = self._dataset(dataset)  # a protected dataset the catalog dropped is an error
            layout = self.layout(dataset)
            versions = self.store.list_file_versions(layout.path)
            for partition, files in layout.partitions(self.store, versions).items():
                label = dataset if partition is None else f"{dataset}/{partition}"
                fingerprints[label] = _fingerprint({rel: versions[rel] for rel in files})
                if known.get(label) != fingerprints[label]:
                    to_read.append((label, attributes, files))

        unread = [label for label, _, _ in to_read[max_reads:]] if max_reads is not None else []
        to_read = to_read[:max_reads] if max_reads is not None else to_read

        def old_refs(item: tuple[str, list[AttributePolicy], list[str]]) -> tuple[str, list[str]]:
            label, attributes, files = item
            return label, self._old_key_refs(attributes, files, current)

        if threads == 1 or len(to_read) <= 1:
            found = [old_refs(item) for item in to_read]
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                found = list(pool.map(old_refs, to_read))
        remaining = {label: stale for label, stale in found if stale}
        index_refs = {WrappedKey.from_bytes(value).master_key_ref for value in self.index_keys.load().values()}
        if index_refs - {current}:
            remaining[INDEX_KEYS_PATH] = sorted(index_refs - {current})
        mac_key = self.policies.mac_key_value()
        if mac_key is not None and WrappedKey.from_bytes(mac_key).master_key_ref != current:
            remaining[POLICY_PATH] = [WrappedKey.from_bytes(mac_key).master_key_ref]
        return RotationStatus(
            binding.active_campaign if binding else None,
            remaining,
            len(fingerprints),
            fingerprints,
            len(to_read),
            unread,
        )

    def _rotate_index_keys(self) -> int:
        """Rewrap every blind-index key and the policy MAC key not yet under the current master key."""
        cache = self.key_cache()
        rewrapped = 0

        def rewrap_stale(stored: dict[str, bytes]) -> dict[str, bytes] | None:
            nonlocal rewrapped
            stale = {name: value for name, value in stored.items() if not cache.is_current(value)}
            rewrapped = len(stale)
            for name, value in stale.items():
                dataset, _, path = name.partition(".")
                stored = {**stored, name: cache.rewrap(value, dataset, index_context_attribute(path))}
            return stored if stale else None

        self.index_keys.update(rewrap_stale)
        return rewrapped + int(self.policies.rewrap_key())

    def complete_rotation(self) -> Campaign:
        """Prove no wrapped key under the old master key remains, then retire it.

        The binding is marked complete first, then the old local version retired; run
        again after a crash between the two, it finishes the retirement.
        """
        binding = self.bindings.load()
        if binding is None:
            raise PolicyError("no rotation is in progress")
        if binding.active_campaign is None:
            done = binding.last_completed
            if done is not None and self._retire_old_version(done):
                self.audit.record(
                    "rotation_complete",
                    master_key=done.old.ref,
                    to_master_key=done.new.ref,
                    detail=f"{done.campaign_id}; retirement of the old key version resumed",
                )
                return done
            raise PolicyError("no rotation is in progress")
        self.key_cache()  # the configured key matches the binding (and its check value)
        self._rotate_index_keys()  # a handful of keys: done here (and at start), not per partition
        status = self.rotation_status()
        if not status.complete:
            listed = ", ".join(sorted(status.remaining)[:20])
            raise PolicyError(
                f"rotation incomplete: {len(status.remaining)} partitions still hold old wrapped keys: {listed}"
            )
        updated, campaign = binding.complete()
        self.bindings.save(updated, previous=binding)
        self._retire_old_version(campaign)
        self.audit.record(
            "rotation_complete",
            master_key=campaign.old.ref,
            to_master_key=campaign.new.ref,
            detail=f"{campaign.campaign_id}; {status.scanned} partitions scanned",
        )
        return campaign

    def _retire_old_version(self, campaign: Campaign) -> bool:
        """Retire a completed campaign's old local key version if still enabled; True if it was."""
        if campaign.old.provider != LOCAL or campaign.new.provider != LOCAL:
            return False  # moved off the keystore (to pkcs11): nothing left to retire in it; the operator destroys it
        keystore = self._keystore()
        version = parse_key_version(campaign.old.key_version)
        entry = keystore.versions.get(version)
        if keystore.key_id != campaign.old.key_id or entry is None or entry.state != "enabled":
            return False
        keystore.retire(version)
        if self._cache is not None and isinstance(self._cache.provider, LocalKeyProvider):
            self._cache.provider.forget(version)
        self._drop_cache()
        return True

    def _drop_cache(self) -> None:
        """Forget every cached key and the provider (and with it any retired key material)."""
        if self._cache is not None:
            self._cache.clear()
        self._cache = None
        self._bound = None
        self._binding_seen = None

    # -- blind-index re-index ------------------------------------------------------------

    def _reindexing(self) -> list[str]:
        """Attributes whose re-index campaign is under way (an old key kept that differs from the current one)."""
        current = self.index_keys.load()
        return sorted(name for name, old in self.retiring_index_keys.load().items() if current.get(name) != old)

    def start_reindex(self, attribute: str) -> None:
        """Give a blind-indexed attribute a new index key; new rows are indexed under it from now on.

        The old key is kept (`_fieldcrypt/blind_index_retiring.json`, written first) until
        `complete_reindex`. Run `reindex` on every partition of the dataset in between.
        """
        entry = self.policy().attributes.get(attribute)
        if entry is None or not entry.blind_index:
            raise PolicyError(f"{attribute} is not an enabled attribute with a blind index; nothing to re-index")
        binding = self.bindings.load()
        if binding is not None and binding.active_campaign is not None:
            raise PolicyError("a master-key rotation is under way; complete it before a blind-index re-index")
        if attribute in self._reindexing():
            raise PolicyError(f"a re-index of {attribute} is already under way: run it, then complete it")
        current = self.index_keys.load()
        if attribute not in current:
            raise PolicyError(f"blind-index key of {attribute} is missing from {INDEX_KEYS_PATH}")
        retiring = self.retiring_index_keys.load()
        retiring[attribute] = current[attribute]
        self.retiring_index_keys.save(retiring)  # first: a crash after it leaves no campaign (old == current)
        old_key, new_key = current[attribute], self.key_cache().new_index_key(entry.dataset, entry.path)

        def switch(stored: dict[str, bytes]) -> dict[str, bytes]:
            if stored.get(attribute) != old_key:  # another worker re-indexed or rotated it meanwhile
                raise ConcurrentUpdateError(
                    f"{INDEX_KEYS_PATH} changed while starting a re-index of {attribute}; run again"
                )
            return {**stored, attribute: new_key}

        self.index_keys.update(switch)
        self.audit.record("reindex_start", dataset=entry.dataset, attribute=entry.path)

    def reindex(self, dataset: str, partition: str | None) -> ReindexReport:
        """Recompute, in every file of a partition, the blind indexes of the attributes being re-indexed."""
        return self._reindex(dataset, partition, dry_run=False)

    def _reindex(self, dataset: str, partition: str | None, *, dry_run: bool) -> ReindexReport:
        spec, attributes = self._dataset(dataset)
        names = set(self._reindexing())
        targets = [a for a in attributes if a.name in names]
        where = self.partition_display(dataset, partition)
        if not targets:
            raise PolicyError(f"no blind-index re-index of {dataset} is under way (start one first)")
        cache = self.key_cache()
        current, retiring = self.index_keys.load(), self.retiring_index_keys.load()
        keys = IndexKeys(
            new={
                a.name: cache.index_key_for(current[a.name], a.dataset, a.path).normalized(a.normalize) for a in targets
            },
            old={
                a.name: cache.index_key_for(retiring[a.name], a.dataset, a.path).normalized(a.normalize)
                for a in targets
            },
        )
        reports = self._each_file(
            dataset,
            partition,
            lambda rel: reindex_file(
                self.store, rel, spec, attributes, targets, keys, cache, partition=partition, dry_run=dry_run
            ),
        )
        return ReindexReport.total(where, reports)

    def complete_reindex(self, attribute: str) -> int:
        """Prove every blind index of `attribute` is under the new key (decrypting each protected value), then
        forget the old key. Returns the partitions checked."""
        if attribute not in self._reindexing():
            raise PolicyError(f"no re-index of {attribute} is under way")
        dataset = attribute.partition(".")[0]
        left = []
        partitions = self.partitions(dataset)
        for partition in partitions:
            report = self._reindex(dataset, partition, dry_run=True)
            if report.reindexed.get(attribute):
                left.append(self.partition_display(dataset, partition))
        if left:
            raise PolicyError(
                f"re-index of {attribute} incomplete: {len(left)} partitions still hold indexes under the old key: "
                + ", ".join(left[:20])
            )
        retiring = self.retiring_index_keys.load()
        retiring.pop(attribute, None)
        self.retiring_index_keys.save(retiring)
        self.audit.record(
            "reindex_complete",
            dataset=dataset,
            attribute=attribute.partition(".")[2],
            detail=f"{len(partitions)} partitions checked",
        )
        return len(partitions)

    # -- policy adoption -----------------------------------------------------------------

    def adopt_policy(self) -> Policy:
        """Authenticate a legacy (unauthenticated) policy after checking it against every stored file.

        The operator reviews the policy first (`fieldcrypt policy adopt` prints it). A policy
        that lacks an attribute some file says is protected is refused. Audited.
        """
        legacy = self.policies.unauthenticated()
        policy = legacy if legacy is not None else Policy(self.name)
        checked = 0
        for dataset in self.datasets:  # every declared dataset's files, whatever the policy names
            for files in self.layout(dataset).partitions(self.store).values():
                for rel in files:
                    check_stored_file(self.store, rel, policy.for_dataset(dataset))
                    checked += 1
        self.key_cache()
        self.policies.write_authenticated(policy)
        self.audit.record(
            "policy_adopt",
            detail=f"{len(policy.attributes)} attributes; {checked} files checked; "
            + ("legacy policy authenticated" if legacy is not None else "missing policy replaced by an empty one"),
        )
        return policy
