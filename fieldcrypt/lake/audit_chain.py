"""The audit chain: each audit record carries its sequence number, the hash of the record
before it, and an HMAC under the workspace's audit key (docs/FORMAT.md section 6b).

A stored record is one line, its canonical JSON (fieldcrypt.format.canonical_json) and a newline::

    {..event fields.., "seq": n, "prev": hex(SHA-256(line of record n-1)), "mac": base64(HMAC)}

    mac = HMAC-SHA256(audit key, "fieldcrypt-audit-v1\\n" || canonical JSON of the record without "mac")

Record 1 (`audit_chain_start`) has as `prev` the digest of the legacy prefix: the lines an
older fieldcrypt wrote, without chain fields, before the chain started (`legacy_digest`).
`ChainCheck` walks a log in order and names the first record that is not what the chain says.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from fieldcrypt.errors import IntegrityError
from fieldcrypt.format.canonical_json import canonical_json

MAC_LABEL = b"fieldcrypt-audit-v1\n"
LEGACY_LABEL = b"fieldcrypt-audit-v1 legacy\n"
CHAIN_START = "audit_chain_start"
CHAIN_FIELDS = ("seq", "prev", "mac")
MAC_SIZE = 32


class AuditKey:
    """An unwrapped audit MAC key; its bytes never show in a repr or a traceback's locals."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "AuditKey(<hidden>)"

    def mac(self, body: bytes) -> bytes:
        return hmac.digest(self._key, MAC_LABEL + body, hashlib.sha256)


@dataclass(frozen=True)
class AuditHead:
    """The newest record of a chain: its sequence number and the SHA-256 (hex) of its stored line.

    Cheap to read (docs/OPERATIONS.md): what a binding records to refuse an older audit log.
    """

    seq: int
    digest: str


def line_digest(line: bytes) -> str:
    """SHA-256 (hex) of a stored line without its newline: what the next record's `prev` holds."""
    return hashlib.sha256(line).hexdigest()


def legacy_digest(lines: list[bytes]) -> str:
    """The digest of the legacy prefix (the lines, without newlines, in log order): record 1's `prev`."""
    digest = hashlib.sha256(LEGACY_LABEL)
    for line in lines:
        digest.update(line + b"\n")
    return digest.hexdigest()


def seal(event: dict[str, Any], seq: int, prev: str, key: AuditKey) -> bytes:
    """The stored line (without newline) of `event` as record `seq` after the record of digest `prev`."""
    body = {**event, "seq": seq, "prev": prev}
    mac = key.mac(canonical_json(body))
    return canonical_json({**body, "mac": base64.b64encode(mac).decode()})


def parse(line: bytes, where: str) -> dict[str, Any]:
    """A stored line as a JSON object; IntegrityError naming `where` for anything else."""
    try:
        record = json.loads(line)
    except ValueError:
        raise IntegrityError(f"{where} is not a complete JSON record (truncated or edited)") from None
    if not isinstance(record, dict):
        raise IntegrityError(f"{where} is not a JSON object (edited)")
    return record


def is_chained(record: dict[str, Any]) -> bool:
    return "seq" in record


def check_record(record: dict[str, Any], line: bytes, key: AuditKey, where: str) -> AuditHead:
    """The record's own authenticity (form and MAC); its head (seq, digest). IntegrityError naming it."""
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1 or not isinstance(record.get("prev"), str):
        raise IntegrityError(f"{where}: malformed chain fields (edited)")
    try:
        mac = base64.b64decode(str(record.get("mac", "")), validate=True)
    except (binascii.Error, ValueError):
        mac = b""
    body = {k: v for k, v in record.items() if k != "mac"}
    try:
        canonical = canonical_json(record) == line
    except Exception:  # a float or other value fieldcrypt never writes
        canonical = False
    if not canonical or len(mac) != MAC_SIZE or not hmac.compare_digest(key.mac(canonical_json(body)), mac):
        raise IntegrityError(f"{where} (seq {seq}) fails authentication: the record was edited")
    return AuditHead(seq, line_digest(line))


@dataclass
class ChainCheck:
    """Feed every stored line in log order (`add`), then `finish`; the first damage is raised, named."""

    key: AuditKey
    legacy: list[bytes] = field(default_factory=list)
    head: AuditHead | None = None
    records: int = 0

    def add(self, line: bytes, where: str) -> None:
        record = parse(line, where)
        if not is_chained(record):
            if self.head is not None:
                raise IntegrityError(
                    f"{where} has no chain fields but follows chained record {self.head.seq}: inserted, or written "
                    "by an older fieldcrypt after the chain started"
                )
            self.legacy.append(line)
            return
        head = check_record(record, line, self.key, where)
        expected = 1 if self.head is None else self.head.seq + 1
        if head.seq != expected:
            if head.seq < expected:
                raise IntegrityError(f"{where} repeats seq {head.seq}: a record was duplicated or inserted")
            missing = f"{expected}" if head.seq == expected + 1 else f"{expected} to {head.seq - 1}"
            raise IntegrityError(f"records {missing} are missing before {where} (seq {head.seq}): deleted")
        prev = legacy_digest(self.legacy) if self.head is None else self.head.digest
        if record["prev"] != prev:
            what = (
                "the legacy records before the chain were edited"
                if self.head is None
                else (f"record {self.head.seq} before it was edited or replaced")
            )
            raise IntegrityError(f"{where} (seq {head.seq}) does not chain to what precedes it: {what}")
        self.head = head
        self.records += 1
