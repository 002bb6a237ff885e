"""No rollback: the newest policy version a lake has seen, kept in its master-key binding.

Every authenticated policy carries a version (docs/FORMAT.md section 6a) that each save
raises by one. After a save, the binding (`_fieldcrypt/master_key.json`, written with
compare-and-swap) records that version and the policy's MAC in its `seen` member, MAC'd
under a key derived from the policy MAC key (docs/FORMAT.md section 6c). Loading a policy older than the
record, or another policy of the same version, is refused by name: an older authenticated
policy.json copied back (a restored backup) would silently turn protection off for
attributes enabled since. `fieldcrypt restore-accept` is the audited way out.

The record also pins the audit log's head (`AuditLog.head()`: seq and digest) as
`fieldcrypt audit --verify` last found it: a later `audit --verify` refuses a log that no
longer holds that record (its newest records cut off, or an older copy restored).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from dataclasses import dataclass
from typing import Any

from fieldcrypt.errors import PolicyError
from fieldcrypt.keys.policy_auth import MacKey

SEEN_FORMAT = "fieldcrypt-seen-v1"
SEEN_KEY_LABEL = b"fieldcrypt-seen-key-v1"
SEEN_MAC_LABEL = b"fieldcrypt-seen-v1\n"
RESTORE_HINT = "restored from a backup? If the restore is deliberate, run `fieldcrypt restore-accept --reason ...`"


class RollbackError(PolicyError):
    """A stored policy (or ledger) older than the newest one this lake has seen: refused, nothing written."""


def canonical(doc: dict[str, Any]) -> bytes:
    """The exact bytes a record's MAC covers: sorted keys, no whitespace, ASCII (docs/FORMAT.md 6c)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class SeenVersions:
    """The newest policy version (and its MAC) the lake has seen."""

    policy_version: int
    policy_mac: bytes
    audit_seq: int = 0  # the audit head `fieldcrypt audit --verify` last pinned (0: none)
    audit_digest: str = ""

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "format": SEEN_FORMAT,
            "policy": {"version": self.policy_version, "mac": base64.b64encode(self.policy_mac).decode()},
        }
        if self.audit_seq:
            body["audit"] = {"seq": self.audit_seq, "digest": self.audit_digest}
        return body

    def sealed(self, key: MacKey) -> dict[str, Any]:
        """The binding's `seen` member: the body and its MAC."""
        body = self.body()
        mac = key.derived(SEEN_KEY_LABEL).mac_bytes(SEEN_MAC_LABEL, canonical(body))
        return {**body, "mac": base64.b64encode(mac).decode()}

    @classmethod
    def opened(cls, doc: object, key: MacKey, where: str) -> SeenVersions:
        """The record in a binding's `seen` member, after its MAC is checked."""
        bad = PolicyError(
            f"{where}: its record of the newest policy version is malformed or failed authentication "
            "(edited by hand); refused"
        )
        if not isinstance(doc, dict):
            raise bad
        body = {k: v for k, v in doc.items() if k != "mac"}
        try:
            mac = base64.b64decode(str(doc["mac"]), validate=True)
            policy = body["policy"]
            audit = body.get("audit") or {"seq": 0, "digest": ""}
            seen = cls(
                int(policy["version"]),
                base64.b64decode(str(policy["mac"]), validate=True),
                int(audit["seq"]),
                str(audit["digest"]),
            )
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise bad from None
        if body.get("format") != SEEN_FORMAT or seen.body() != body:
            raise bad
        if not key.derived(SEEN_KEY_LABEL).verify_bytes(SEEN_MAC_LABEL, canonical(body), mac):
            raise bad
        return seen


def check_policy(seen: SeenVersions | None, version: int, mac: bytes, where: str) -> None:
    """Refuse a policy older than, or another than, the newest version the lake has seen."""
    if seen is None:
        return
    if version < seen.policy_version:
        raise RollbackError(
            f"{where} is version {version}, this lake has seen version {seen.policy_version}: {RESTORE_HINT}"
        )
    if version == seen.policy_version and not hmac.compare_digest(mac, seen.policy_mac):
        raise RollbackError(
            f"{where} is version {version}, but not the version {version} this lake has seen (another copy): "
            f"{RESTORE_HINT}"
        )
