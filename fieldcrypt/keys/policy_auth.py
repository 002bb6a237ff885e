"""Policy authentication: an HMAC-SHA256 over the policy under a MAC key wrapped by the master key.

`_fieldcrypt/policy.json` is the policy document (`Policy.to_json`) with one more member,
`authentication` (docs/FORMAT.md section 6a)::

    {"format": "fieldcrypt-policy-mac-v2",
     "mac_key": base64(wrapped data key value, section 4, context ("#policy", "#mac")),
     "mac": base64(HMAC-SHA256(mac_key, "fieldcrypt-policy-mac-v2\\n" || P))}

P is the canonical JSON (fieldcrypt.format.canonical_json: RFC 8785 for these values) of the stored
document without its `authentication` member, so every member - read by the policy or not -
is covered, and the stored text may be indented for people. Policies authenticated before
(`fieldcrypt-policy-mac-v1`: P was the text `Policy.to_json()` writes) are still verified,
and sealed as v2 by their next change. The MAC key is a
random 32-byte key generated and wrapped like a data key, cached like one, and rewrapped
on rotation like a blind-index key. A policy without `authentication` (written by an
older fieldcrypt, or edited by hand) is refused until an operator adopts it
(`fieldcrypt policy adopt`). Irreversibility is also checked against the lake itself:
`check_file_protection` refuses a file whose own metadata says an attribute is protected
when the policy in hand lacks that attribute (or gives it another mask).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow.parquet as pq

from fieldcrypt.errors import InputError, PolicyError
from fieldcrypt.format.canonical_json import canonical_json
from fieldcrypt.format.file_metadata import FILE_METADATA_KEY
from fieldcrypt.lake.parquet_io import open_parquet

AUTH_FORMAT = "fieldcrypt-policy-mac-v2"
AUTH_FORMAT_V1 = "fieldcrypt-policy-mac-v1"  # written before the canonical form: still verified, never written
AUTH_MEMBER = "authentication"
MAC_LABEL = b"fieldcrypt-policy-mac-v2\n"
MAC_LABEL_V1 = b"fieldcrypt-policy-mac-v1\n"
# Encryption context of the MAC key: '#' never appears in a dataset or attribute name.
MAC_KEY_DATASET = "#policy"
MAC_KEY_ATTRIBUTE = "#mac"
MAC_SIZE = 32


class UnauthenticatedPolicyError(PolicyError):
    """policy.json carries no authentication (older fieldcrypt or hand-edited): adopt it explicitly."""


class MacKey:
    """An unwrapped policy MAC key; its bytes never show in a repr or a traceback's locals."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "MacKey(<hidden>)"

    def mac(self, covered: bytes, label: bytes = MAC_LABEL) -> bytes:
        return hmac.digest(self._key, label + covered, hashlib.sha256)

    def verify(self, covered: bytes, mac: bytes, label: bytes = MAC_LABEL) -> bool:
        return hmac.compare_digest(self.mac(covered, label), mac)

    def derived(self, label: bytes) -> MacKey:
        """A key for another record kept with the policy (the protection ledger, the binding's
        version record): HMAC-SHA256(this key, label). Rotation rewraps this key, so the derived
        key needs no wrapping of its own (docs/FORMAT.md section 6c)."""
        return MacKey(hmac.digest(self._key, label, hashlib.sha256))

    def mac_bytes(self, label: bytes, data: bytes) -> bytes:
        return hmac.digest(self._key, label + data, hashlib.sha256)

    def verify_bytes(self, label: bytes, data: bytes, mac: bytes) -> bool:
        return hmac.compare_digest(self.mac_bytes(label, data), mac)


class PolicyKeys(Protocol):
    """What the policy store needs from the data-key cache (fieldcrypt.keys.cache.DataKeyCache)."""

    def new_policy_key(self) -> tuple[MacKey, bytes]: ...

    def policy_key_for(self, wrapped_value: bytes) -> MacKey: ...

    def is_current(self, wrapped_value: bytes) -> bool: ...

    def rewrap(self, wrapped_value: bytes, dataset: str, attribute: str, partition: str | None = None) -> bytes: ...


@dataclass(frozen=True)
class SealedPolicy:
    """A stored policy split into the document it authenticates and its authentication."""

    document: str  # the policy document without `authentication` (parse with Policy.from_json)
    mac_key: bytes  # wrapped MAC key value
    mac: bytes
    canonical: bytes | None  # P of a v2 MAC; None for v1, whose P is the parsed policy's `Policy.to_json()`

    def covered(self, policy_text: str) -> tuple[bytes, bytes]:
        """(P, label) the MAC is over; `policy_text` is `Policy.to_json()` of the parsed document (v1's P)."""
        if self.canonical is None:
            return policy_text.encode(), MAC_LABEL_V1
        return self.canonical, MAC_LABEL


def split(raw: bytes, where: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The policy document and its `authentication` member (None when absent)."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError) as exc:
        raise PolicyError(f"{where} is not a valid fieldcrypt policy ({type(exc).__name__})") from None
    auth = doc.pop(AUTH_MEMBER, None)
    if auth is not None and not isinstance(auth, dict):
        raise PolicyError(f"{where}: its authentication is not a JSON object")
    return doc, auth


def sealed(doc: dict[str, Any], auth: dict[str, Any] | None, where: str) -> SealedPolicy:
    if auth is None:
        raise UnauthenticatedPolicyError(
            f"{where} is not authenticated (written by an older fieldcrypt, or edited by hand); it is refused. "
            "Review it, then run `fieldcrypt policy adopt` to authenticate it under the master key "
            "(docs/OPERATIONS.md, 'Control-state failures')"
        )
    try:
        if auth.get("format") not in (AUTH_FORMAT, AUTH_FORMAT_V1):
            raise PolicyError(f"{where}: unknown policy authentication format {auth.get('format')!r}")
        mac_key = base64.b64decode(auth["mac_key"], validate=True)
        mac = base64.b64decode(auth["mac"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise PolicyError(f"{where}: its authentication is malformed; the policy is refused") from None
    if len(mac) != MAC_SIZE:
        raise PolicyError(f"{where}: its MAC is {len(mac)} bytes, expected {MAC_SIZE}; the policy is refused")
    try:
        canonical = canonical_json(doc) if auth.get("format") == AUTH_FORMAT else None
    except InputError:  # a float or other value no policy holds
        raise PolicyError(f"{where} is not a valid fieldcrypt policy (a value outside its JSON form)") from None
    return SealedPolicy(json.dumps(doc), mac_key, mac, canonical)


def seal(policy_text: str, key: MacKey, wrapped_key: bytes) -> bytes:
    """The stored form of a policy text (`Policy.to_json()`): indented, with a v2 MAC over its canonical JSON."""
    doc = json.loads(policy_text)
    mac = key.mac(canonical_json(doc))  # P: the document before `authentication` is added
    doc[AUTH_MEMBER] = {
        "format": AUTH_FORMAT,
        "mac_key": base64.b64encode(wrapped_key).decode(),
        "mac": base64.b64encode(mac).decode(),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def reseal_key(raw: bytes, wrapped_key: bytes) -> bytes:
    """The same stored policy and MAC with the MAC key's wrapping replaced (rotation)."""
    doc = json.loads(raw)
    doc[AUTH_MEMBER]["mac_key"] = base64.b64encode(wrapped_key).decode()
    return (json.dumps(doc, indent=2) + "\n").encode()


def check_file_protection(parquet: pq.ParquetFile, attributes: Sequence[Any], where: str) -> None:
    """Refuse a file whose fieldcrypt metadata names a protected attribute the policy lacks.

    `attributes` are the policy's AttributePolicy entries of the file's dataset. A file is
    never processed under a policy that would leave its protected attributes unchecked.
    """
    metadata = parquet.schema_arrow.metadata or {}
    raw = metadata.get(FILE_METADATA_KEY)
    if raw is None:
        return
    try:
        described = json.loads(raw)["attributes"]
        if not isinstance(described, dict):
            raise TypeError("attributes")
    except (ValueError, KeyError, TypeError):
        raise PolicyError(f"{where}: its fieldcrypt file metadata is malformed; refusing to process it") from None
    enabled = {a.name: a for a in attributes}
    for name, info in sorted(described.items()):
        entry = enabled.get(name)
        if entry is None:
            raise PolicyError(
                f"{where} holds protected attribute {name}, which the policy does not enable; a policy that "
                "drops an enabled attribute is refused (restore the policy from backup)"
            )
        mask = info.get("mask") if isinstance(info, dict) else None
        if mask is not None and mask != entry.mask:
            raise PolicyError(f"{where} protects {name} with mask {mask}, but the policy says {entry.mask}; refusing")


def check_stored_file(store: Any, rel: str, attributes: Sequence[Any]) -> None:
    """`check_file_protection` on a lake file (reads its footer only)."""
    with open_parquet(store, rel) as parquet:
        check_file_protection(parquet, attributes, store.display(rel))
