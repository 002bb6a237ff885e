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

And it pins each dataset's erasure index (fieldcrypt.policy.erasure_index): the newest version
and MAC written, so an older, validly MAC'd index put back (dropping a request recorded since)
is refused by name by every reader of the index, as an older policy is.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
    # dataset -> (version, MAC) of the newest erasure index written (docs/FORMAT.md 6c, 6e); absent: none yet
    erasure: Mapping[str, tuple[int, str]] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "format": SEEN_FORMAT,
            "policy": {"version": self.policy_version, "mac": base64.b64encode(self.policy_mac).decode()},
        }
        if self.audit_seq:
            body["audit"] = {"seq": self.audit_seq, "digest": self.audit_digest}
        if self.erasure:
            body["erasure"] = {d: {"version": v, "mac": m} for d, (v, m) in sorted(self.erasure.items())}
        return body

    def with_erasure_index(self, dataset: str, version: int, mac: str) -> SeenVersions | None:
        """This record with `dataset`'s erasure index pinned at `version`; None when it is there already
        (never moving back)."""
        pinned = self.erasure.get(dataset)
        if pinned is not None and pinned[0] >= version:
            return None
        return replace(self, erasure={**self.erasure, dataset: (version, mac)})

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
            erasure = body.get("erasure") or {}
            seen = cls(
                int(policy["version"]),
                base64.b64decode(str(policy["mac"]), validate=True),
                int(audit["seq"]),
                str(audit["digest"]),
                {str(d): (int(e["version"]), str(e["mac"])) for d, e in erasure.items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
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


def check_erasure_index(seen: SeenVersions | None, dataset: str, version: int, mac: str, where: str) -> None:
    """Refuse an erasure index older than, or another than, the newest version of it the lake has seen
    (0: missing while one was written)."""
    pinned = None if seen is None else seen.erasure.get(dataset)
    if pinned is None:
        return
    if version < pinned[0]:
        state = "missing" if version == 0 else f"at version {version}"
        raise RollbackError(
            f"erasure index of {dataset} ({where}) is {state} but version {pinned[0]} was seen: a request recorded "
            f"since may be dropped; {RESTORE_HINT}"
        )
    if version == pinned[0] and not hmac.compare_digest(mac.encode(), pinned[1].encode()):
        raise RollbackError(
            f"erasure index of {dataset} ({where}) is version {version}, but not the version {version} this lake "
            f"has seen (another copy): {RESTORE_HINT}"
        )
