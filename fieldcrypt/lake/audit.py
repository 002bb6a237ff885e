"""Audit log: one record per key use or policy change, appended next to the data, chained and MAC'd.

Records are written under `<lake>/_fieldcrypt/audit/`: one file per UTC day on a local lake
(appended with O_APPEND, one write per line, under a lock of the audit directory so each
record names the one before it), one object per record on S3 (`audit/chain/<seq>.jsonl`,
created with `If-None-Match: *`, so two writers never claim one sequence number). Fields
are ids and counts only, never plaintext and never key bytes.

Each record carries its sequence number, the hash of the record before it and an HMAC
under the workspace's audit key (fieldcrypt.lake.audit_chain, docs/FORMAT.md section 6b). The
audit key is a random key wrapped under the master key like the policy MAC key: the first
record of the chain (`audit_chain_start`) carries its wrapped value, and
`_fieldcrypt/audit_key.json` a copy that rotation rewraps. That file is also the marker that
a chain exists: with it and no chained record, the log was deleted.

Every open (the first record a process writes, and again whenever the unwrapped key
expires like a data key) checks the newest record: it must be complete, chained and
authentic. `verify` checks every record.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from fieldcrypt.errors import ConcurrentUpdateError, IntegrityError, KeyProviderError
from fieldcrypt.lake.audit_chain import (
    CHAIN_START,
    AuditHead,
    AuditKey,
    ChainCheck,
    check_record,
    is_chained,
    legacy_digest,
    line_digest,
    parse,
    seal,
)
from fieldcrypt.lake.store import FileVersion, LakeStore

AUDIT_DIR = "_fieldcrypt/audit"
CHAIN_DIR = f"{AUDIT_DIR}/chain"  # S3: one object per record, named by sequence number
AUDIT_KEY_PATH = "_fieldcrypt/audit_key.json"
AUDIT_KEY_FORMAT = "fieldcrypt-audit-key-v1"
# Encryption context of the audit key: '#' never appears in a dataset or attribute name.
AUDIT_KEY_DATASET = "#audit"
AUDIT_KEY_ATTRIBUTE = "#mac"
_LOCK = f"{AUDIT_DIR}/lock"  # LakeStore.exclusive locks the directory of this path: the audit directory
_TAIL_BYTES = 64 * 1024  # far more than one record
_S3_ATTEMPTS = 100  # sequence numbers lost to other writers before giving up
# S3: every HINT_EVERY records the writer names its record here, so a process's first look at the head
# lists the chain from near its end (one request), not from its start (one request per 1,000 records).
HINT_PATH = "_fieldcrypt/audit_head_hint"
HINT_EVERY = 256
_ALLOWED_FIELDS = {
    "dataset",
    "attribute",
    "partition",
    "master_key",
    "cells",
    "data_keys",
    "detail",
    "to_master_key",
    "reason",  # why plaintext was revealed (a ticket id), given by the operator
    "intent",
}
INTENT_SUFFIX = "_intent"


class AuditKeys(Protocol):
    """What the audit log needs from the data-key cache (fieldcrypt.keys.cache.DataKeyCache)."""

    ttl_seconds: float

    def new_audit_key(self) -> tuple[AuditKey, bytes]: ...

    def audit_key_for(self, wrapped_value: bytes) -> AuditKey: ...

    def is_current(self, wrapped_value: bytes) -> bool: ...

    def rewrap(self, wrapped_value: bytes, dataset: str, attribute: str, partition: str | None = None) -> bytes: ...


@dataclass(frozen=True)
class AuditReport:
    """What `AuditLog.verify` found: chained records, legacy records before the chain, and the head."""

    records: int
    legacy_records: int
    head: AuditHead | None


@dataclass
class AuditLog:
    """Appends audit events for one workspace; `actor` is the run id or CLI user.

    `key_source` gives the data-key cache the audit key is wrapped and unwrapped through
    (the workspace's, built on first use).
    """

    store: LakeStore
    workspace: str
    actor: str
    key_source: Callable[[], AuditKeys] | None = None
    _host: str = field(default_factory=lambda: os.uname().nodename)
    _key: AuditKey | None = field(default=None, repr=False)
    _key_expires: float = 0.0
    _lock: Any = field(default_factory=threading.RLock, repr=False)
    _thread: threading.local = field(default_factory=threading.local, repr=False)
    _seen: tuple[str, int, AuditHead] | None = field(default=None, repr=False)  # (file or object, size, head)

    def record(self, operation: str, **fields: Any) -> None:
        unknown = set(fields) - _ALLOWED_FIELDS
        if unknown:  # a closed set of fields keeps values (and secrets) out of the log by construction
            raise ValueError(f"unknown audit fields: {sorted(unknown)}")
        event = self._event(operation, fields)
        if getattr(self._thread, "depth", 0):  # this thread is obtaining the audit key: written once it has it
            self._thread.pending.append(event)
            return
        self._append(event)

    def intent(self, operation: str, **fields: Any) -> str:
        """Record that `operation` is about to change stored data; returns the intent id.

        The events that record the change carry `intent=<id>`; an intent without any such
        event (a crash between the intent and the change's record) is listed by `unconfirmed`.
        """
        intent_id = f"int-{secrets.token_hex(8)}"
        self.record(operation + INTENT_SUFFIX, intent=intent_id, **fields)
        return intent_id

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Records made by this thread inside are written when it leaves (with the audit key in hand).

        Key uses made while the audit key itself is obtained (describing the master key,
        binding a new lake, unwrapping the audit key) cannot be MAC'd yet. If the block
        fails they are not written (the run stops with the error; a KMS logs its own calls).
        """
        thread = self._thread
        if not getattr(thread, "depth", 0):
            thread.pending = []
        thread.depth = getattr(thread, "depth", 0) + 1
        done = False
        try:
            yield
            done = True
        finally:
            thread.depth -= 1
            if thread.depth == 0:
                pending, thread.pending = thread.pending, []
                if done and pending:
                    self._key_in_hand()  # may itself queue (and then write) the unwrap of the audit key
                    for event in pending:
                        self._append(event)

    def unconfirmed(self) -> list[dict[str, Any]]:
        """Intent events no later event confirmed: the change may or may not have happened."""
        intents: dict[str, dict[str, Any]] = {}
        confirmed: set[str] = set()
        for event in self.events():
            intent_id = event.get("intent")
            if intent_id is None:
                continue
            if str(event.get("operation", "")).endswith(INTENT_SUFFIX):
                intents[intent_id] = event
            else:
                confirmed.add(intent_id)
        return [event for intent_id, event in intents.items() if intent_id not in confirmed]

    def events(self) -> Iterator[dict[str, Any]]:
        """Every event in the log, oldest first (by time: a key use made while the audit key was obtained is
        written after it, so its sequence number is later than its time says).

        A line that is not a complete JSON record is an IntegrityError naming it; `verify`
        also checks the chain and the MACs.
        """
        events = [parse(line, where) for line, where in self._stored_lines()]
        events.sort(key=lambda e: str(e.get("time", "")))
        yield from events

    def verify(self, pinned: AuditHead | None = None) -> AuditReport:
        """Check every record: complete, in sequence, chained, authentic. IntegrityError names the first bad one.

        `pinned`: a head recorded earlier (the binding's, fieldcrypt.policy.rollback): the log must still hold
        that record, with that digest; a log that ends before it lost its newest records.
        """
        key = self._key_in_hand()
        check = ChainCheck(key)
        for line, where in self._stored_lines():
            check.add(line, where)
            at_pin = pinned is not None and check.head is not None and check.head.seq == pinned.seq
            if at_pin and check.head is not None and pinned is not None and check.head.digest != pinned.digest:
                raise IntegrityError(
                    f"{where} (seq {pinned.seq}) is not the record this lake pinned at that position "
                    "(`audit --verify` recorded its digest): the log was replaced or rewritten from there"
                )
        if check.head is None and self.stored_key() is not None:
            raise self._deleted()
        if pinned is not None and (check.head is None or check.head.seq < pinned.seq):
            ends = f"ends at seq {check.head.seq}" if check.head is not None else "holds no chained record"
            raise IntegrityError(
                f"the audit log {ends}, but this lake pinned seq {pinned.seq} when it was last verified: "
                "its newest records were cut off (or an older copy of the log was restored)"
            )
        return AuditReport(check.records, len(check.legacy), check.head)

    def head(self) -> AuditHead | None:
        """The newest record's (seq, digest), its MAC checked; None before the chain starts. Cheap: one tail read."""
        key = self._key_in_hand()
        with self._lock, self.store.exclusive(_LOCK):
            return self._head(key)

    def rewrap_key(self, keys: AuditKeys) -> bool:
        """Rewrap the stored audit key under the current master key (rotation); True if it was rewritten."""
        self._key_in_hand()  # the chain is checked, and the key file exists, before it is rewritten
        with self._lock, self.store.exclusive(_LOCK):
            stored = self.store.read_versioned(AUDIT_KEY_PATH)
            if stored is None:
                raise self._key_missing()
            wrapped = self._parse_key_file(stored[0])
            if keys.is_current(wrapped):
                return False
            new = keys.rewrap(wrapped, AUDIT_KEY_DATASET, AUDIT_KEY_ATTRIBUTE)
            self._write_key_file(new, stored[1])
            return True

    # -- writing -------------------------------------------------------------------------

    def _event(self, operation: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {
            "time": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "workspace": self.workspace,
            "actor": self.actor,
            "host": self._host,
            "operation": operation,
            **{k: v for k, v in fields.items() if v is not None},
        }

    def _append(self, event: dict[str, Any]) -> None:
        key = self._key_in_hand()
        with self._lock:
            if self.store.supports_append:
                with self.store.exclusive(_LOCK):
                    head = self._head(key)
                    if head is None:
                        raise self._deleted()
                    self._append_local(event, key, head)
                return
            for _ in range(_S3_ATTEMPTS):
                head = self._head(key)
                if head is None:
                    raise self._deleted()
                try:
                    self._create_s3(seal(event, head.seq + 1, head.digest, key))
                    return
                except ConcurrentUpdateError:
                    continue  # another writer took seq + 1: chain after theirs
            raise ConcurrentUpdateError(
                f"{self.store.display(CHAIN_DIR)}: {_S3_ATTEMPTS} sequence numbers in a row were taken by other "
                "writers; the audit record was not written, run again"
            )

    def _append_local(self, event: dict[str, Any], key: AuditKey, head: AuditHead) -> None:
        line = seal(event, head.seq + 1, head.digest, key)
        # The day of the append, not of the event (a record queued or kept waiting for the lock across
        # midnight), and never a file before the head's: records stay in sequence across files.
        today = f"{AUDIT_DIR}/{datetime.now(UTC).strftime('%Y-%m-%d')}.jsonl"
        rel = max(today, self._seen[0]) if self._seen is not None and head.seq else today
        self.store.append_text(rel, line.decode() + "\n")
        size = os.stat(self.store.full_path(rel)).st_size
        self._seen = (rel, size, AuditHead(head.seq + 1, line_digest(line)))

    def _create_s3(self, line: bytes) -> None:
        seq = json.loads(line)["seq"]
        rel = f"{CHAIN_DIR}/{seq:012d}.jsonl"
        self.store.write_if(rel, line + b"\n", None, "this run was appending to the audit log")
        self._seen = (rel, len(line) + 1, AuditHead(seq, line_digest(line)))
        if seq % HINT_EVERY == 0:
            self.store.write_bytes(HINT_PATH, rel.encode())

    def _hint(self) -> str | None:
        """S3: a chain record near the end, named by HINT_PATH (unauthenticated: only where listing starts)."""
        stored = self.store.read_versioned(HINT_PATH)
        hint = stored[0].decode(errors="replace") if stored else ""
        return hint if hint.startswith(f"{CHAIN_DIR}/") and hint.endswith(".jsonl") else None

    # -- the key and the head ------------------------------------------------------------

    def _key_in_hand(self) -> AuditKey:
        """The unwrapped audit key; obtaining it (first use, or after its TTL) checks the chain's head."""
        key = self._key
        if key is not None and time.monotonic() < self._key_expires:
            return key
        if self.key_source is None:
            raise KeyProviderError(f"the audit log of {self.workspace!r} has no key: open it through a Workspace")
        with self.deferred():
            keys = self.key_source()
            key = self._opened(keys)
            self._key, self._key_expires = key, time.monotonic() + keys.ttl_seconds
        return key

    def _opened(self, keys: AuditKeys) -> AuditKey:
        """The audit key, after the chain's head is checked; the chain is started when there is none."""
        stored = self.stored_key()
        key = None if stored is None else keys.audit_key_for(stored)
        new = keys.new_audit_key() if stored is None else None  # before the lock: it may call a KMS
        with self._lock, self.store.exclusive(_LOCK):
            if key is not None:
                if self._head(key) is None:
                    raise self._deleted()
                return key
            assert new is not None
            return self._start_or_join(keys, *new)

    def _start_or_join(self, keys: AuditKeys, key: AuditKey, wrapped: bytes) -> AuditKey:
        """No key file: start the chain under `key`, or (a crash or another writer) take the chain's own key."""
        stored = self.stored_key()
        if stored is not None:  # another process started the chain since we looked
            key = keys.audit_key_for(stored)
            if self._head(key) is None:
                raise self._deleted()
            return key
        genesis = self._genesis()
        if genesis is None:
            legacy = self._legacy_lines()
            event = self._event(CHAIN_START, {"detail": f"{len(legacy)} earlier records without chain fields"})
            event["audit_key"] = base64.b64encode(wrapped).decode()
            line = seal(event, 1, legacy_digest(legacy), key)
            try:
                if self.store.supports_append:
                    self._append_local(event, key, AuditHead(0, legacy_digest(legacy)))
                else:
                    self._create_s3(line)
            except ConcurrentUpdateError:  # S3: another writer's record 1 won
                genesis = self._genesis()
        if genesis is not None:  # the chain exists without its key file (crash after record 1, or a lost race)
            record, line, where = genesis
            wrapped = _wrapped_in(record, where)
            key = keys.audit_key_for(wrapped)
            check_record(record, line, key, where)
            self._head(key)  # the newest record too, as at every open
        with contextlib.suppress(ConcurrentUpdateError):  # a concurrent writer stored the same key's copy
            self._write_key_file(wrapped, None)
        return key

    def _head(self, key: AuditKey) -> AuditHead | None:
        """The newest record, checked (complete, chained, MAC); None when no chained record exists."""
        found = self._stored_head()
        if found is None:
            return None
        line, where, seen = found
        if self._seen is not None and self._seen[:2] == seen:
            return self._seen[2]
        record = parse(line, where)
        if not is_chained(record):
            if self.stored_key() is None:
                return None  # only legacy records: the chain has not started
            raise IntegrityError(
                f"{where} has no chain fields but is the newest record of a chained audit log: appended by an "
                "older fieldcrypt or by hand (docs/OPERATIONS.md, 'Audit log')"
            )
        head = check_record(record, line, key, where)
        self._seen = (seen[0], seen[1], head)
        return head

    def _stored_head(self) -> tuple[bytes, str, tuple[str, int]] | None:
        """The newest stored line, where it is, and (file, size) to recognise it again without reading."""
        if self.store.supports_append:
            for rel in reversed(self.store.list_files(AUDIT_DIR, suffix=".jsonl")):
                tail = self._local_tail(rel)
                if tail is not None:
                    return tail
            return None
        if self._seen is not None:
            chain = self.store.list_keys_after(CHAIN_DIR, self._seen[0])
            if not chain:
                rel = self._seen[0]
                if not self.store.exists(rel):
                    raise IntegrityError(f"{self.store.display(rel)}, the newest audit record seen here, is gone")
                return b"", "", (rel, self._seen[1])  # unchanged since our last look (recognised by the caller)
        else:  # first look: list from the hint (a record near the end), or from the start without one
            hint = self._hint()
            chain = self.store.list_keys_after(CHAIN_DIR, hint) if hint else []
            if not chain:
                chain = [hint] if hint and self.store.exists(hint) else self.store.list_keys_after(CHAIN_DIR, None)
            if not chain:
                return None
        rel = chain[-1]
        data = self.store.read_bytes(rel)
        return self._one_line(data, rel), self.store.display(rel), (rel, len(data))

    def _local_tail(self, rel: str) -> tuple[bytes, str, tuple[str, int]] | None:
        """The last line of a local audit file, read from its end (one small read); None for an empty file."""
        full = self.store.full_path(rel)
        with open(full, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if self._seen is not None and self._seen[:2] == (rel, size):
                return b"", "", (rel, size)
            handle.seek(max(0, size - _TAIL_BYTES))
            data = handle.read()
        if not data.strip():
            return None
        if not data.endswith(b"\n"):
            raise self._truncated(rel)
        start = data.rstrip(b"\n").rfind(b"\n")
        if start < 0 and size > len(data):  # a record longer than the window: read it all (never in practice)
            data = self.store.read_bytes(rel)
            start = data.rstrip(b"\n").rfind(b"\n")
        line = data[start + 1 :].rstrip(b"\n")
        return line, f"{self.store.display(rel)} (last line)", (rel, size)

    def _truncated(self, rel: str) -> IntegrityError:
        lines = self.store.read_bytes(rel).count(b"\n") + 1  # counted only on damage
        return IntegrityError(
            f"{self.store.display(rel)} line {lines} is truncated (no end of line): a writer died "
            "mid-record or the file was cut; run `fieldcrypt audit --verify` (docs/OPERATIONS.md, 'Audit log')"
        )

    def _one_line(self, data: bytes, rel: str) -> bytes:
        if not data.endswith(b"\n") or data.count(b"\n") != 1:
            raise IntegrityError(f"{self.store.display(rel)} is not one complete audit record (truncated or edited)")
        return data[:-1]

    # -- reading -------------------------------------------------------------------------

    def _stored_lines(self) -> Iterator[tuple[bytes, str]]:
        """Every non-blank stored line in log order, with where it is ("<file> line <n>")."""
        for rel in self.store.list_files(AUDIT_DIR, suffix=".jsonl"):
            data = self.store.read_bytes(rel)
            if data.strip() and not data.endswith(b"\n"):
                lines = data.split(b"\n")
                for number, line in enumerate(lines[:-1], start=1):
                    if line.strip():
                        yield line, f"{self.store.display(rel)} line {number}"
                raise self._truncated(rel)
            for number, line in enumerate(data.split(b"\n"), start=1):
                if line.strip():
                    yield line, f"{self.store.display(rel)} line {number}"

    def _legacy_lines(self) -> list[bytes]:
        """The records written before the chain (without chain fields), checked to be JSON records."""
        lines = []
        for line, where in self._stored_lines():
            if is_chained(parse(line, where)):
                raise self._key_missing()
            lines.append(line)
        return lines

    def _genesis(self) -> tuple[dict[str, Any], bytes, str] | None:
        """Record 1 of the chain, where it is stored; None when the chain has not started."""
        if not self.store.supports_append:
            rel = f"{CHAIN_DIR}/{1:012d}.jsonl"
            stored = self.store.read_versioned(rel)
            if stored is None:
                if self.store.list_keys_after(CHAIN_DIR, None):  # later records without their first: not a new chain
                    raise self._key_missing()
                return None
            line = self._one_line(stored[0], rel)
            return parse(line, self.store.display(rel)), line, self.store.display(rel)
        for line, where in self._stored_lines():
            record = parse(line, where)
            if is_chained(record):
                if record.get("seq") != 1 or record.get("operation") != CHAIN_START:
                    raise self._key_missing()
                return record, line, where
        return None

    # -- the key file --------------------------------------------------------------------

    def stored_key(self) -> bytes | None:
        """The stored wrapped audit key (the key file), None before the chain starts; no KMS call."""
        stored = self.store.read_versioned(AUDIT_KEY_PATH)
        return None if stored is None else self._parse_key_file(stored[0])

    def _parse_key_file(self, data: bytes) -> bytes:
        where = self.store.display(AUDIT_KEY_PATH)
        try:
            doc = json.loads(data)
            if doc.get("format") != AUDIT_KEY_FORMAT:
                raise IntegrityError(f"{where}: unknown format {doc.get('format')!r}")
            if doc.get("workspace") != self.workspace:
                raise IntegrityError(f"{where} belongs to workspace {doc.get('workspace')!r}, not {self.workspace!r}")
            return base64.b64decode(doc["mac_key"], validate=True)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise IntegrityError(f"{where} is not a valid audit key file") from None

    def _write_key_file(self, wrapped: bytes, expected: FileVersion | None) -> None:
        """Write the key file (caller holds the audit lock on a local lake: no other lock is taken)."""
        doc = {"format": AUDIT_KEY_FORMAT, "workspace": self.workspace, "mac_key": base64.b64encode(wrapped).decode()}
        data = (json.dumps(doc, indent=2) + "\n").encode()
        if self.store.supports_append:
            if self.store.version_or_none(AUDIT_KEY_PATH) != expected:
                raise ConcurrentUpdateError(f"{self.store.display(AUDIT_KEY_PATH)} changed while it was written")
            self.store.write_bytes(AUDIT_KEY_PATH, data)
        else:
            self.store.write_if(AUDIT_KEY_PATH, data, expected, "the audit key was written")

    def _deleted(self) -> IntegrityError:
        return IntegrityError(
            f"{self.store.display(AUDIT_KEY_PATH)} says this lake's audit log is chained, but "
            f"{self.store.display(AUDIT_DIR)} holds no chained record: the audit log was deleted "
            "(docs/OPERATIONS.md, 'Audit log')"
        )

    def _key_missing(self) -> IntegrityError:
        return IntegrityError(
            f"{self.store.display(AUDIT_DIR)} holds chained records, but their first record is gone and "
            f"{self.store.display(AUDIT_KEY_PATH)} is missing: the audit log cannot be authenticated "
            "(docs/OPERATIONS.md, 'Audit log')"
        )


def _wrapped_in(record: dict[str, Any], where: str) -> bytes:
    try:
        return base64.b64decode(str(record["audit_key"]), validate=True)
    except (KeyError, binascii.Error, ValueError):
        raise IntegrityError(f"{where}: the first audit record carries no valid audit key (edited)") from None
