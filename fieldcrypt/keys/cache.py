"""Data-key cache: plaintext data keys in process memory only, for a bounded time and use.

Encryption keys are kept per (dataset, attribute) and retired after `ttl_seconds` or
`max_cells_per_key` cells, whichever comes first; unwrapped keys are kept per wrapped
value for `ttl_seconds`. The TTL can be set lower than 30 minutes, never higher, so
revoking access to the master key stops all work within that time. Keys are held (DataKey) as bytes and
AESGCM objects, never written anywhere. Every provider call is counted and audited.

Expired entries are evicted (not only skipped) whenever the cache is used, and each map
holds at most `max_entries` keys: entries are kept in creation order, so the oldest go
first. `guard`, when set, is called before every provider call and before every replace
(`check_current`): the workspace uses it to stop a process whose master key was moved
by another process's rotation.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fieldcrypt.errors import InputError
from fieldcrypt.format.cell import DataKey
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys.blind_index import BlindIndexKey, index_context_attribute
from fieldcrypt.keys.policy_auth import MAC_KEY_ATTRIBUTE, MAC_KEY_DATASET, MacKey
from fieldcrypt.keys.providers.base import EncryptionContext, KeyProvider, MasterKeyInfo
from fieldcrypt.keys.rate_limit import CallRateLimit
from fieldcrypt.lake.audit import AUDIT_KEY_ATTRIBUTE, AUDIT_KEY_DATASET, AuditLog
from fieldcrypt.lake.audit_chain import AuditKey

MAX_TTL_SECONDS = 30 * 60
# 2^32 random 96-bit nonces is NIST SP 800-38D's bound; stay 64x under it.
MAX_CELLS_PER_KEY = 2**26
MAX_CACHED_KEYS = 4096  # per map; far above the distinct keys one run touches within a TTL

_K = TypeVar("_K")


@dataclass
class KeyCallCounts:
    """Provider (KMS) calls made through one cache."""

    generate: int = 0
    unwrap: int = 0
    rewrap: int = 0

    @property
    def total(self) -> int:
        return self.generate + self.unwrap + self.rewrap


@dataclass
class _EncryptionKey:
    cipher: DataKey
    wrapped: bytes
    created: float
    cells_left: int


@dataclass
class _DecryptionKey:
    cipher: DataKey
    created: float


@dataclass
class DataKeyCache:
    provider: KeyProvider
    workspace: str
    audit: AuditLog | None = None
    ttl_seconds: float = MAX_TTL_SECONDS
    max_cells_per_key: int = MAX_CELLS_PER_KEY
    clock: Callable[[], float] = time.monotonic
    calls: KeyCallCounts = field(default_factory=KeyCallCounts)
    guard: Callable[[], None] | None = None
    rate_limit: CallRateLimit | None = None  # the workspace's client-side KMS call budget (fieldcrypt.keys.rate_limit)
    max_entries: int = MAX_CACHED_KEYS
    _encrypting: OrderedDict[tuple[str, str], _EncryptionKey] = field(default_factory=OrderedDict, repr=False)
    _decrypting: OrderedDict[tuple[bytes, str, str], _DecryptionKey] = field(default_factory=OrderedDict, repr=False)
    _index_keys: OrderedDict[tuple[bytes, str, str], tuple[Any, float]] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.ttl_seconds <= MAX_TTL_SECONDS:
            raise InputError(f"data key TTL must be between 0 and {MAX_TTL_SECONDS} seconds, got {self.ttl_seconds}")
        if self.max_entries < 1:
            raise InputError(f"cache size must be at least 1, got {self.max_entries}")
        if not 0 < self.max_cells_per_key <= MAX_CELLS_PER_KEY:
            raise InputError(
                f"cells per data key must be between 1 and {MAX_CELLS_PER_KEY}, got {self.max_cells_per_key}"
            )

    @property
    def master_key(self) -> MasterKeyInfo:
        return self.provider.describe()

    def context(self, dataset: str, attribute: str) -> EncryptionContext:
        return EncryptionContext(self.workspace, dataset, attribute)

    def reserve(
        self, dataset: str, attribute: str, cells: int, partition: str | None = None
    ) -> tuple[DataKey, bytes, int]:
        """A data key for up to `cells` new cells: (data key, stored wrapped-key value, cells granted).

        Granted may be fewer than asked when the key's cell budget runs out; ask again
        for the rest and a new key is generated.
        """
        with self._lock:
            self._evict_expired()
            key = self._encrypting.get((dataset, attribute))
            if key is None or key.cells_left <= 0:
                self._before_provider_call()
                context = self.context(dataset, attribute)
                dek, wrapped = self.provider.generate_data_key(context)
                self.calls.generate += 1
                self._audit("generate_data_key", context, partition, wrapped)
                key = _EncryptionKey(DataKey(dek), wrapped.to_bytes(), self.clock(), self.max_cells_per_key)
                del dek
                self._put(self._encrypting, (dataset, attribute), key)
            granted = min(cells, key.cells_left)
            key.cells_left -= granted
            return key.cipher, key.wrapped, granted

    def cipher_for(self, wrapped_value: bytes, dataset: str, attribute: str, partition: str | None = None) -> DataKey:
        """The data key of a stored wrapped key, unwrapping (one provider call) on a miss."""
        cache_key = (wrapped_value, dataset, attribute)
        with self._lock:
            self._evict_expired()
            hit = self._decrypting.get(cache_key)
            if hit is not None:
                return hit.cipher
            self._before_provider_call()
            context = self.context(dataset, attribute)
            wrapped = WrappedKey.from_bytes(wrapped_value)
            dek = self.provider.unwrap(wrapped, context)
            self.calls.unwrap += 1
            self._audit("unwrap", context, partition, wrapped)
            cipher = DataKey(dek)
            del dek
            self._put(self._decrypting, cache_key, _DecryptionKey(cipher, self.clock()))
            return cipher

    def new_index_key(self, dataset: str, attribute: str) -> bytes:
        """A new blind-index key for an attribute, as its stored wrapped value (the plaintext is dropped)."""
        context = self.context(dataset, index_context_attribute(attribute))
        self._before_provider_call()
        key, wrapped = self.provider.generate_data_key(context)
        del key
        self.calls.generate += 1
        self._audit("generate_index_key", context, None, wrapped)
        return wrapped.to_bytes()

    def index_key_for(self, wrapped_value: bytes, dataset: str, attribute: str) -> BlindIndexKey:
        """The unwrapped blind-index key of an attribute, cached like data keys (TTL)."""
        return self._secret_key(wrapped_value, dataset, index_context_attribute(attribute), BlindIndexKey)

    def new_policy_key(self) -> tuple[MacKey, bytes]:
        """A new policy MAC key and its stored wrapped value (fieldcrypt.keys.policy_auth)."""
        context = self.context(MAC_KEY_DATASET, MAC_KEY_ATTRIBUTE)
        self._before_provider_call()
        key, wrapped = self.provider.generate_data_key(context)
        self.calls.generate += 1
        self._audit("generate_policy_key", context, None, wrapped)
        mac_key, value = MacKey(key), wrapped.to_bytes()
        with self._lock:
            self._put(self._index_keys, (value, MAC_KEY_DATASET, MAC_KEY_ATTRIBUTE), (mac_key, self.clock()))
        return mac_key, value

    def policy_key_for(self, wrapped_value: bytes) -> MacKey:
        """The unwrapped policy MAC key, cached like data keys (TTL)."""
        return self._secret_key(wrapped_value, MAC_KEY_DATASET, MAC_KEY_ATTRIBUTE, MacKey)

    def new_audit_key(self) -> tuple[AuditKey, bytes]:
        """A new audit MAC key and its stored wrapped value (fieldcrypt.lake.audit).

        Not cached here and called outside the cache's lock: the audit log holds the key
        itself (for at most the TTL), because every call of this cache writes to that log.
        """
        context = self.context(AUDIT_KEY_DATASET, AUDIT_KEY_ATTRIBUTE)
        self._before_provider_call()
        key, wrapped = self.provider.generate_data_key(context)
        self.calls.generate += 1
        self._audit("generate_audit_key", context, None, wrapped)
        return AuditKey(key), wrapped.to_bytes()

    def audit_key_for(self, wrapped_value: bytes) -> AuditKey:
        """The unwrapped audit MAC key (one provider call; held by the audit log, see new_audit_key)."""
        context = self.context(AUDIT_KEY_DATASET, AUDIT_KEY_ATTRIBUTE)
        wrapped = WrappedKey.from_bytes(wrapped_value)
        self._before_provider_call()
        key = AuditKey(self.provider.unwrap(wrapped, context))
        self.calls.unwrap += 1
        self._audit("unwrap_audit_key", context, None, wrapped)
        return key

    def _secret_key(self, wrapped_value: bytes, dataset: str, attribute: str, kind: Callable[[bytes], _K]) -> _K:
        cache_key = (wrapped_value, dataset, attribute)
        with self._lock:
            self._evict_expired()
            hit = self._index_keys.get(cache_key)
            if hit is not None and isinstance(hit[0], kind):  # type: ignore[arg-type]
                found: _K = hit[0]
                return found
            self._before_provider_call()
            context = self.context(dataset, attribute)
            wrapped = WrappedKey.from_bytes(wrapped_value)
            key = kind(self.provider.unwrap(wrapped, context))
            self.calls.unwrap += 1
            self._audit("unwrap_index_key" if kind is BlindIndexKey else "unwrap_policy_key", context, None, wrapped)
            self._put(self._index_keys, cache_key, (key, self.clock()))
            return key

    def rewrap(self, wrapped_value: bytes, dataset: str, attribute: str, partition: str | None = None) -> bytes:
        """The same data key under the current master key (never cached: rotation runs once)."""
        context = self.context(dataset, attribute)
        old = WrappedKey.from_bytes(wrapped_value)
        self._before_provider_call()
        new = self.provider.rewrap(old, context)
        self.calls.rewrap += 1
        if self.audit is not None:
            self.audit.record(
                "rewrap",
                dataset=dataset,
                attribute=attribute,
                partition=partition,
                master_key=old.master_key_ref,
                to_master_key=new.master_key_ref,
            )
        return new.to_bytes()

    def is_current(self, wrapped_value: bytes) -> bool:
        return self.provider.is_current(WrappedKey.from_bytes(wrapped_value))

    def _before_provider_call(self) -> None:
        """The binding still names our key, and the workspace's KMS call budget has room (may wait)."""
        self.check_current()
        if self.rate_limit is not None:
            self.rate_limit.acquire()

    def check_current(self) -> None:
        """Raise if the master key this cache wraps under is no longer the lake's current one."""
        if self.guard is not None:
            self.guard()

    def size(self) -> int:
        """Cached keys of every kind (after evicting the expired ones)."""
        with self._lock:
            self._evict_expired()
            return len(self._encrypting) + len(self._decrypting) + len(self._index_keys)

    def _evict_expired(self) -> None:
        """Drop every entry past its TTL; entries are in creation order, so only the front is looked at."""
        now = self.clock()
        for entries in (self._encrypting, self._decrypting, self._index_keys):
            while entries:
                first: Any = next(iter(entries.values()))
                created = first[1] if isinstance(first, tuple) else first.created
                if now - created < self.ttl_seconds:
                    break
                entries.popitem(last=False)

    def _put(self, entries: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        entries.pop(key, None)  # re-inserted at the end: creation order is kept
        entries[key] = value
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every cached data key (end of a dispatch, or on request)."""
        with self._lock:
            self._encrypting.clear()
            self._decrypting.clear()
            self._index_keys.clear()

    def _audit(self, operation: str, context: EncryptionContext, partition: str | None, wrapped: WrappedKey) -> None:
        if self.audit is not None:
            self.audit.record(
                operation,
                dataset=context.dataset,
                attribute=context.attribute,
                partition=partition,
                master_key=wrapped.master_key_ref,
            )
