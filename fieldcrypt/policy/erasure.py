"""Erasure requests: which primary keys of a dataset must be forgotten, kept as keyed hashes, and how far along.

A request (GDPR article 17, CCPA deletion) is recorded before any file is rewritten, as one
file per request, `_fieldcrypt/erasure/<dataset>/<id>.json` (docs/FORMAT.md section 6e): its
id, reason, dataset, creation and expiry times, the primary-key columns, and the keys as
HMAC-SHA256 tags, never in clear. It is written once (absent-only) and MAC'd, so a key removed
from it is noticed. Progress is one small file per partition beside it,
`_fieldcrypt/erasure/<dataset>/<id>/<partition>.json` (files rewritten, files skipped by their
statistics, cells erased), MAC'd too: runs of different partitions never write the same file,
and a protection run reads the requests without their progress.

Why keyed: the keys an erasure names are phone numbers, e-mail addresses, integer ids. An
unkeyed hash of any of these is inverted by enumerating the key space (10^10 phone numbers
in minutes); a salted hash only slows that per request. The tag key is derived from the
policy MAC key (HMAC-SHA256(policy MAC key, label), like the protection ledger's), which is
wrapped by the master key: without the master key the tags say nothing, and a rotation,
which rewraps the policy MAC key, leaves them valid. A request also stores a check value of
its tag key, so a request whose tags were made under another key (a policy adopted or
restored with a new MAC key) is refused by name, never silently matching nothing.

Until a request expires, every protection run of its dataset erases the request's keys from
the files it is about to protect (a snapshot landed later that holds an erased key). It finds
them through the dataset's index of active requests (fieldcrypt.policy.erasure_index), not by
reading every request ever recorded; an expired request leaves the index (its file is kept).
Each index written is pinned (version and MAC) in the binding's record of what the lake has
seen (fieldcrypt.policy.rollback), so an older index put back is refused by name.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import secrets
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote

from fieldcrypt.errors import ConcurrentUpdateError, InputError, IntegrityError
from fieldcrypt.keys.binding import BINDING_PATH, BindingStore
from fieldcrypt.keys.policy_auth import MacKey
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.erasure_index import ActiveIndex, IndexEntry, index_path, open_index
from fieldcrypt.policy.rollback import RollbackError, SeenVersions, canonical, check_erasure_index

ERASURE_DIR = "_fieldcrypt/erasure"
ERASURE_FORMAT = "fieldcrypt-erasure-request-v1"
PROGRESS_FORMAT = "fieldcrypt-erasure-progress-v1"
ERASURE_KEY_LABEL = b"fieldcrypt-erasure-key-v1"
TAG_LABEL = b"fieldcrypt-erasure-row-key-v1\n"
CHECK_LABEL = b"fieldcrypt-erasure-key-check-v1\n"
MAC_LABEL = b"fieldcrypt-erasure-request-v1\n"
PROGRESS_MAC_LABEL = b"fieldcrypt-erasure-progress-v1\n"
DEFAULT_EXPIRY_DAYS = 90


class ErasureKey:
    """The key erasure tags are made under; its bytes never show in a repr."""

    __slots__ = ("_key",)

    def __init__(self, policy_key: MacKey) -> None:
        self._key = policy_key.derived(ERASURE_KEY_LABEL)

    def __repr__(self) -> str:
        return "ErasureKey(<hidden>)"

    def tag(self, row_key: bytes) -> bytes:
        """The tag of one canonical row key (docs/FORMAT.md section 3): HMAC-SHA256, 32 bytes."""
        return self._key.mac_bytes(TAG_LABEL, row_key)

    def tags(self, row_keys: Iterable[bytes]) -> set[bytes]:
        return {self.tag(key) for key in row_keys}

    def check_value(self) -> str:
        """What a request stores to recognise its tag key (a MAC of a fixed label, not the key)."""
        return base64.b64encode(self._key.mac_bytes(CHECK_LABEL, b"")[:16]).decode()

    def seal(self, body: dict[str, Any], label: bytes = MAC_LABEL) -> str:
        return base64.b64encode(self._key.mac_bytes(label, canonical(body))).decode()

    def opens(self, body: dict[str, Any], mac: str, label: bytes = MAC_LABEL) -> bool:
        try:
            expected = base64.b64decode(mac, validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(self._key.mac_bytes(label, canonical(body)), expected)


@dataclass(frozen=True)
class PartitionProgress:
    """What erasing one request's keys from one partition did (the latest run that touched it)."""

    files: int
    files_rewritten: int
    files_skipped_by_statistics: int
    cells_erased: int
    at: str  # UTC, ISO 8601

    def to_doc(self) -> dict[str, Any]:
        return {
            "format": PROGRESS_FORMAT,
            "files": self.files,
            "files_rewritten": self.files_rewritten,
            "files_skipped_by_statistics": self.files_skipped_by_statistics,
            "cells_erased": self.cells_erased,
            "at": self.at,
        }

    @classmethod
    def from_doc(cls, doc: Any) -> PartitionProgress:
        return cls(
            int(doc["files"]),
            int(doc["files_rewritten"]),
            int(doc["files_skipped_by_statistics"]),
            int(doc["cells_erased"]),
            str(doc["at"]),
        )


@dataclass(frozen=True)
class ErasureRequest:
    """One erasure request: ids, counts and keyed tags only (never a key in clear)."""

    request_id: str
    workspace: str
    dataset: str
    reason: str
    created_at: datetime
    created_by: str
    expires_at: datetime
    key_columns: tuple[str, ...]
    tags: frozenset[bytes] = field(repr=False)
    key_check: str
    partitions: tuple[str, ...]  # the partitions (labels) the dataset had when the request was made
    progress: dict[str, PartitionProgress] = field(default_factory=dict)  # loaded with the request when asked
    indexed: bool = True  # False: not expired, yet not in the index (its recording stopped before the index)

    @property
    def keys(self) -> int:
        return len(self.tags)

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires_at

    @property
    def partitions_done(self) -> int:
        return sum(1 for label in self.partitions if label in self.progress)

    @property
    def done(self) -> bool:
        """Every partition the dataset had when the request was made has been erased."""
        return self.partitions_done == len(self.partitions)

    def state(self, now: datetime | None = None) -> str:
        if self.expired(now):
            return "expired" if not self.done else "done, expired"
        if not self.indexed:
            return "not indexed (protection runs do not apply it: run `fieldcrypt erase-reindex`)"
        return "done" if self.done else "open"

    @property
    def cells_erased(self) -> int:
        return sum(p.cells_erased for p in self.progress.values())

    @property
    def files_rewritten(self) -> int:
        return sum(p.files_rewritten for p in self.progress.values())

    @property
    def files_skipped_by_statistics(self) -> int:
        return sum(p.files_skipped_by_statistics for p in self.progress.values())

    def body(self) -> dict[str, Any]:
        return {
            "format": ERASURE_FORMAT,
            "id": self.request_id,
            "workspace": self.workspace,
            "dataset": self.dataset,
            "reason": self.reason,
            "created_at": _iso(self.created_at),
            "created_by": self.created_by,
            "expires_at": _iso(self.expires_at),
            "key_columns": list(self.key_columns),
            "key_hash": "hmac-sha256 under HMAC-SHA256(policy MAC key, 'fieldcrypt-erasure-key-v1')",
            "key_check": self.key_check,
            "keys": sorted(base64.b64encode(tag).decode() for tag in self.tags),
            "partitions": list(self.partitions),
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ErasureRequest:
        return cls(
            request_id=str(body["id"]),
            workspace=str(body["workspace"]),
            dataset=str(body["dataset"]),
            reason=str(body["reason"]),
            created_at=_parse_time(body["created_at"]),
            created_by=str(body["created_by"]),
            expires_at=_parse_time(body["expires_at"]),
            key_columns=tuple(str(c) for c in body["key_columns"]),
            tags=frozenset(base64.b64decode(str(tag), validate=True) for tag in body["keys"]),
            key_check=str(body["key_check"]),
            partitions=tuple(str(p) for p in body["partitions"]),
        )


def request_path(dataset: str, request_id: str) -> str:
    return f"{ERASURE_DIR}/{quote(dataset, safe='')}/{request_id}.json"


def progress_path(dataset: str, request_id: str, partition: str) -> str:
    return f"{ERASURE_DIR}/{quote(dataset, safe='')}/{request_id}/{quote(partition, safe='')}.json"


def done_path(dataset: str, request_id: str) -> str:
    """Written once when a request is first seen done (so its end is audited once)."""
    return f"{ERASURE_DIR}/{quote(dataset, safe='')}/{request_id}/done"


class ErasureRequests:
    """The erasure requests of one workspace's lake."""

    def __init__(self, store: LakeStore, workspace: str, policy_key: Callable[[], MacKey]) -> None:
        self.store = store
        self.workspace = workspace
        self._policy_key = policy_key
        self._key: ErasureKey | None = None
        self._lock = threading.Lock()
        self._known: dict[str, set[str]] = {}  # request id -> partitions with progress (record_progress)
        self._read: dict[tuple[str, str], tuple[str, ErasureRequest]] = {}  # (dataset, id) -> (its MAC, request)
        self._moved: list[tuple[str, str]] = []  # requests this process moved out of an index (expired_out)

    def key(self) -> ErasureKey:
        if self._key is None:
            self._key = ErasureKey(self._policy_key())
        return self._key

    def create(
        self,
        dataset: str,
        key_columns: Sequence[str],
        row_keys: Iterable[bytes],
        reason: str,
        actor: str,
        partitions: Sequence[str],
        *,
        expires_in: timedelta = timedelta(days=DEFAULT_EXPIRY_DAYS),
        now: datetime | None = None,
    ) -> ErasureRequest:
        """Record a new request (tags of the canonical `row_keys`); nothing is erased here."""
        if not reason.strip():
            raise InputError("an erasure request needs a reason (a ticket id): it is recorded with the request")
        if expires_in <= timedelta(0):
            raise InputError("an erasure request must expire after it is made (a positive number of days)")
        created = (now or datetime.now(UTC)).replace(microsecond=0)
        key = self.key()
        tags = frozenset(key.tags(row_keys))
        if not tags:
            raise InputError(f"an erasure request for {dataset} names no key")
        request = ErasureRequest(
            request_id=f"er-{created:%Y%m%d}-{secrets.token_hex(4)}",
            workspace=self.workspace,
            dataset=dataset,
            reason=reason.strip(),
            created_at=created,
            created_by=actor,
            expires_at=created + expires_in,
            key_columns=tuple(key_columns),
            tags=tags,
            key_check=key.check_value(),
            partitions=tuple(partitions),
        )
        self._index_ready(dataset)
        rel = request_path(dataset, request.request_id)
        sealed, mac = self._sealed_with_mac(request)
        self.store.write_if(rel, sealed, None, "the erasure request was being recorded")
        entry = IndexEntry(request.request_id, _iso(request.expires_at), mac)
        self._change_index(dataset, lambda index: replace(index, active=(*index.active, entry)))
        return request

    def load(self, dataset: str, request_id: str) -> ErasureRequest:
        """One request, with its progress."""
        rel = request_path(dataset, request_id)
        found = self.store.read_versioned(rel)
        if found is None:
            raise InputError(f"no erasure request {request_id} of {dataset} under {self.store.display(rel)}")
        request = self._opened(found[0], rel, dataset)
        return replace(request, progress=self._progress(dataset, request_id))

    def of_dataset(self, dataset: str, *, progress: bool = True) -> list[ErasureRequest]:
        """Every request of `dataset`, oldest first; with their progress unless asked not to (one listing)."""
        folder = f"{ERASURE_DIR}/{quote(dataset, safe='')}"
        listed = self.store.list_files(folder, ".json")
        requests = []
        for rel in listed:
            if "/" in rel[len(folder) + 1 :]:
                continue  # a partition's progress
            request = self._opened(self.store.read_bytes(rel), rel, dataset)
            if progress:
                request = replace(request, progress=self._progress(dataset, request.request_id, listed))
            requests.append(request)
        return sorted(requests, key=lambda r: (r.created_at, r.request_id))

    def of_dataset_indexed(self, dataset: str) -> list[ErasureRequest]:
        """`of_dataset`, each request marked when it is not expired yet not in the index (status)."""
        requests = self.of_dataset(dataset)
        index = self.index(dataset)
        return [r if r.expired() or r.request_id in index.ids() else replace(r, indexed=False) for r in requests]

    def active(self, dataset: str, now: datetime | None = None) -> list[ErasureRequest]:
        """The requests of `dataset` not expired, without their progress: what protection runs still erase.

        One read of the index, then each request it names that this process has not read yet (by its MAC).
        A named request missing or changed is refused by name. Requests found expired are moved out of
        the index (compare-and-swap; `expired_out` names them for the one caller that moved them).
        """
        moment = now or datetime.now(UTC)
        index = self.index(dataset)
        live = [e for e in index.active if _parse_time(e.expires_at) > moment]
        if len(live) < len(index.active):
            self._expire(dataset, moment)
        return [self._named(dataset, entry) for entry in live]

    def index(self, dataset: str) -> ActiveIndex:
        """The dataset's index of active requests, authenticated; an empty one when none is stored and no request
        is on file. An index missing while requests are on file is refused by name (removed, or a lake from
        before the index: `fieldcrypt erase-reindex`), and so is one older than (or another than) the version the
        binding pinned (a restored backup: `fieldcrypt restore-accept`)."""
        rel = index_path(dataset)
        for attempt in range(3):  # another writer's index and pin between the two reads: a race, not a restore
            found = self.store.read_versioned(rel)
            index = self._stored_index(dataset, None if found is None else found[0])
            try:
                check_erasure_index(self._seen(), dataset, index.version, index.mac, self.store.display(rel))
            except RollbackError:
                now = self.store.read_versioned(rel)
                if attempt < 2 and (None if now is None else now[0]) != (None if found is None else found[0]):
                    continue
                raise
            return index
        raise AssertionError("unreachable")

    def _stored_index(self, dataset: str, raw: bytes | None) -> ActiveIndex:
        rel = index_path(dataset)
        if raw is None:
            if self._request_files(dataset):
                raise IntegrityError(
                    f"{self.store.display(rel)} is missing while erasure requests of {dataset} are on file (removed "
                    "outside fieldcrypt, or a lake from before the index): protection cannot tell which are active; "
                    f"refused. Rebuild it from the requests on file: `fieldcrypt erase-reindex {dataset} --reason ...`"
                )
            return ActiveIndex(self.workspace, dataset)
        return open_index(raw, self.key(), self.workspace, dataset, self.store.display(rel))

    def _seen(self) -> SeenVersions | None:
        """The binding's record of what the lake has seen, MAC checked (None: none recorded yet)."""
        binding = BindingStore(self.store).load()
        if binding is None or binding.seen is None:
            return None
        return SeenVersions.opened(binding.seen, self._policy_key(), self.store.display(BINDING_PATH))

    def _pin(self, dataset: str) -> None:
        """Pin the stored index's version and MAC in the binding's record (compare-and-swap, never moving back).
        After the index write: a crash in between leaves an index newer than the pin, which is accepted."""
        found = self.store.read_versioned(index_path(dataset))
        if found is None:
            return
        index = open_index(found[0], self.key(), self.workspace, dataset, self.store.display(index_path(dataset)))
        key, where = self._policy_key(), self.store.display(BINDING_PATH)

        def change(now: dict[str, Any] | None) -> dict[str, Any] | None:
            if now is None:
                return None  # no record yet (a lake before rollback protection): the next policy save makes one
            pinned = SeenVersions.opened(now, key, where).with_erasure_index(dataset, index.version, index.mac)
            return None if pinned is None else pinned.sealed(key)

        BindingStore(self.store).update_seen(change)

    def rolled_back(self) -> list[str]:
        """The datasets whose erasure index is older than, or another than, the version the binding pinned."""
        seen = self._seen()
        found = []
        for dataset in sorted(seen.erasure if seen is not None else {}):
            try:
                self.index(dataset)
            except RollbackError:
                found.append(dataset)
        return found

    def rebuild_index(self, dataset: str, now: datetime | None = None) -> ActiveIndex:
        """Replace the index by one built from every request on file (each read and authenticated): the not
        expired ones active. Never drops a request on file; the caller audits it."""
        moment = now or datetime.now(UTC)
        entries, expired = [], 0
        for rel in self._request_files(dataset):
            raw = self.store.read_bytes(rel)
            request, mac = self._parsed(raw, rel, dataset)
            if request.expired(moment):
                expired += 1
            else:
                entries.append(IndexEntry(request.request_id, _iso(request.expires_at), mac))
        built = ActiveIndex(self.workspace, dataset, active=tuple(entries), expired=expired)
        seen = self._seen()
        pinned = seen.erasure.get(dataset, (0, ""))[0] if seen is not None else 0  # above a restored older index

        def change(stored: bytes | None) -> bytes:
            version = pinned
            if stored is not None:
                with contextlib.suppress(ValueError, KeyError, TypeError):  # an unreadable index is what it replaces
                    version = max(pinned, int(json.loads(stored)["version"]))
            return replace(built, version=version + 1).sealed(self.key())

        self.store.update(index_path(dataset), change, "the erasure index was being rebuilt")
        self._pin(dataset)
        return self.index(dataset)

    def expired_out(self) -> list[tuple[str, str]]:
        """(dataset, request id) of the requests this process moved out of an index since last asked."""
        with self._lock:
            moved, self._moved = self._moved, []
        return moved

    def _expire(self, dataset: str, moment: datetime) -> None:
        moved: list[str] = []

        def change(index: ActiveIndex) -> ActiveIndex | None:
            moved.clear()
            keep = tuple(e for e in index.active if _parse_time(e.expires_at) > moment)
            moved.extend(e.request_id for e in index.active if e not in keep)
            if not moved:
                return None
            return replace(index, active=keep, expired=index.expired + len(moved))

        self._change_index(dataset, change)
        with self._lock:
            self._moved.extend((dataset, request_id) for request_id in moved)

    def _named(self, dataset: str, entry: IndexEntry) -> ErasureRequest:
        """The request an index entry names, read once per process (while its MAC is the same)."""
        with self._lock:
            cached = self._read.get((dataset, entry.request_id))
        if cached is not None and cached[0] == entry.mac:
            return cached[1]
        rel = request_path(dataset, entry.request_id)
        found = self.store.read_versioned(rel)
        where = self.store.display(index_path(dataset))
        if found is None:
            raise IntegrityError(
                f"erasure request {entry.request_id} of {dataset}, active in {where}, is missing "
                f"({self.store.display(rel)}): removed outside fieldcrypt; refused. Restore it from a backup"
            )
        request, mac = self._parsed(found[0], rel, dataset)
        if mac != entry.mac:
            raise IntegrityError(
                f"erasure request {entry.request_id} of {dataset} ({self.store.display(rel)}) is not the request "
                f"{where} recorded (replaced outside fieldcrypt); refused"
            )
        with self._lock:
            self._read[(dataset, entry.request_id)] = (mac, request)
        return request

    def _index_ready(self, dataset: str) -> None:
        """Before a request is written: an index to add it to (an empty one when the dataset has no request;
        refused by name when requests are on file without one)."""
        if self.index(dataset).version == 0:
            try:
                empty = ActiveIndex(self.workspace, dataset, version=1).sealed(self.key())
                self.store.write_if(index_path(dataset), empty, None, "the erasure index was being created")
            except ConcurrentUpdateError:
                pass  # another creator made it first: that one is added to

    def _change_index(self, dataset: str, change: Callable[[ActiveIndex], ActiveIndex | None]) -> None:
        rel = index_path(dataset)
        where = self.store.display(rel)

        def apply(stored: bytes | None) -> bytes | None:
            if stored is None:
                raise IntegrityError(f"{where} is missing (removed while a request was being recorded); refused")
            index = open_index(stored, self.key(), self.workspace, dataset, where)
            changed = change(index)
            return None if changed is None else replace(changed, version=index.version + 1).sealed(self.key())

        self.store.update(rel, apply, "the erasure index was being updated")
        self._pin(dataset)

    def _request_files(self, dataset: str) -> list[str]:
        folder = f"{ERASURE_DIR}/{quote(dataset, safe='')}"
        return [rel for rel in self.store.list_files(folder, ".json") if "/" not in rel[len(folder) + 1 :]]

    def has_progress(self, dataset: str, request_id: str, partition: str) -> bool:
        return self.store.exists(progress_path(dataset, request_id, partition))

    def record_progress(self, request: ErasureRequest, partition: str, progress: PartitionProgress) -> bool:
        """Record what a run did to one partition (replacing what an earlier run recorded for it). Returns
        True when every partition the request listed now has progress, as a listing confirms.

        Which partitions have progress is listed once per request and process, then kept up to date
        with this process's own writes; it is listed again only when that says the request may be done.
        """
        rel = progress_path(request.dataset, request.request_id, partition)
        body = {
            **progress.to_doc(),
            "workspace": self.workspace,
            "dataset": request.dataset,
            "request": request.request_id,
            "partition": partition,
        }
        doc = {**body, "mac": self.key().seal(body, PROGRESS_MAC_LABEL)}
        self.store.write_bytes(rel, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
        with self._lock:
            known = self._known.get(request.request_id)
            if known is None:
                known = self._known[request.request_id] = self._listed(request.dataset, request.request_id)
            known.add(partition)
            if not set(request.partitions) <= known:
                return False
            self._known[request.request_id] = self._listed(request.dataset, request.request_id)
            return set(request.partitions) <= self._known[request.request_id]

    def mark_done(self, request: ErasureRequest) -> bool:
        """Mark a done request as such, once: True for the one caller that marked it (it audits the end)."""
        rel = done_path(request.dataset, request.request_id)
        if self.store.exists(rel):
            return False
        try:
            self.store.write_if(rel, f"{request.request_id}\n".encode(), None, "the erasure request was marked done")
        except ConcurrentUpdateError:
            return False
        return True

    def _listed(self, dataset: str, request_id: str) -> set[str]:
        """The partitions with a progress file (names only: nothing read)."""
        folder = f"{ERASURE_DIR}/{quote(dataset, safe='')}/{request_id}"
        return {unquote(rel.rpartition("/")[2][: -len(".json")]) for rel in self.store.list_files(folder, ".json")}

    def _progress(
        self, dataset: str, request_id: str, listed: Sequence[str] | None = None
    ) -> dict[str, PartitionProgress]:
        folder = f"{ERASURE_DIR}/{quote(dataset, safe='')}/{request_id}/"
        files = (
            [rel for rel in listed if rel.startswith(folder)]
            if listed is not None
            else self.store.list_files(folder.rstrip("/"), ".json")
        )
        found = {}
        for rel in files:
            where = self.store.display(rel)
            bad = IntegrityError(f"{where} is not a valid erasure progress record, or failed authentication; refused")
            try:
                doc = json.loads(self.store.read_bytes(rel))
                body = {k: v for k, v in doc.items() if k != "mac"}
                partition = str(body["partition"])
                progress = PartitionProgress.from_doc(body)
                mac = str(doc["mac"])
            except (ValueError, KeyError, TypeError, AttributeError):
                raise bad from None
            expected = (self.workspace, dataset, request_id, progress_path(dataset, request_id, partition))
            if body.get("format") != PROGRESS_FORMAT or not self.key().opens(body, mac, PROGRESS_MAC_LABEL):
                raise bad
            if (body.get("workspace"), body.get("dataset"), body.get("request"), rel) != expected:
                raise IntegrityError(f"{where} is the progress of another request or partition (moved or copied)")
            found[partition] = progress
        return found

    def _sealed_with_mac(self, request: ErasureRequest) -> tuple[bytes, str]:
        body = request.body()
        mac = self.key().seal(body)
        return (json.dumps({**body, "mac": mac}, indent=1, sort_keys=True) + "\n").encode(), mac

    def _opened(self, raw: bytes, rel: str, dataset: str) -> ErasureRequest:
        return self._parsed(raw, rel, dataset)[0]

    def _parsed(self, raw: bytes, rel: str, dataset: str) -> tuple[ErasureRequest, str]:
        """The request in stored bytes and its MAC, after both are checked."""
        where = self.store.display(rel)
        bad = IntegrityError(f"{where} is not a valid erasure request, or failed authentication; refused")
        try:
            doc = json.loads(raw)
            body = {k: v for k, v in doc.items() if k != "mac"}
            request = ErasureRequest.from_body(body)
            mac = str(doc["mac"])
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise bad from None
        if body.get("format") != ERASURE_FORMAT or request.body() != body:
            raise bad
        if request.key_check != self.key().check_value():
            raise IntegrityError(
                f"{where}: erasure request {request.request_id} was hashed under another key (the policy MAC key "
                "changed: a policy adopted or restored since); its keys cannot be matched. Record the request "
                "again from its keys file (docs/OPERATIONS.md, Erasure)"
            )
        if not self.key().opens(body, mac):
            raise bad
        if request.workspace != self.workspace or request.dataset != dataset:
            raise IntegrityError(
                f"{where} is a request of {request.dataset} in workspace {request.workspace!r}, not of this dataset "
                "(moved or copied); refused"
            )
        return request, mac


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: Any) -> datetime:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(UTC)
