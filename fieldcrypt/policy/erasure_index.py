"""The index of a dataset's active erasure requests: what a protection run reads instead of every request.

One small file per dataset, `_fieldcrypt/erasure-index/<dataset>.json` (docs/FORMAT.md section
6e): a version, each active (not expired) request's id, expiry and MAC, and how many requests
have expired out of it; MAC'd under the erasure key. A protection run reads it and then only
the requests it names (a process keeps those it already read, keyed by their MAC), so its
cost follows the active requests, not every request ever recorded.

Nothing is dropped silently: a request the index names must be on file with that MAC (a
request removed or replaced is refused by name), an index edited without the key fails its
MAC, and an index missing while requests are on file is refused by name until
`fieldcrypt erase-reindex` rebuilds it (audited). The index is replaced by compare-and-swap
(LakeStore.update), so two requests recorded at once are both kept. Each version written is
pinned in the binding's record of what the lake has seen (fieldcrypt.policy.rollback), so an
older authentic copy put back is refused by name (`fieldcrypt restore-accept` is the way out).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from fieldcrypt.errors import IntegrityError

INDEX_DIR = "_fieldcrypt/erasure-index"
INDEX_FORMAT = "fieldcrypt-erasure-index-v1"
INDEX_MAC_LABEL = b"fieldcrypt-erasure-index-v1\n"


class Sealer(Protocol):
    def seal(self, body: dict[str, Any], label: bytes = ...) -> str: ...

    def opens(self, body: dict[str, Any], mac: str, label: bytes = ...) -> bool: ...


@dataclass(frozen=True)
class IndexEntry:
    """One active request: its id, expiry (ISO 8601, UTC) and the MAC of its file (which covers its tags)."""

    request_id: str
    expires_at: str
    mac: str

    def to_doc(self) -> dict[str, str]:
        return {"id": self.request_id, "expires_at": self.expires_at, "mac": self.mac}


@dataclass(frozen=True)
class ActiveIndex:
    workspace: str
    dataset: str
    version: int = 0  # 0: no index stored yet
    active: tuple[IndexEntry, ...] = ()
    expired: int = 0  # requests moved out of `active` once expired (their files are kept)
    mac: str = field(default="", compare=False)

    def body(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "workspace": self.workspace,
            "dataset": self.dataset,
            "version": self.version,
            "active": [entry.to_doc() for entry in sorted(self.active, key=lambda e: e.request_id)],
            "expired": self.expired,
        }

    def sealed(self, key: Sealer) -> bytes:
        body = self.body()
        return (json.dumps({**body, "mac": key.seal(body, INDEX_MAC_LABEL)}, indent=1, sort_keys=True) + "\n").encode()

    def ids(self) -> set[str]:
        return {entry.request_id for entry in self.active}


def index_path(dataset: str) -> str:
    return f"{INDEX_DIR}/{quote(dataset, safe='')}.json"


def open_index(raw: bytes, key: Sealer, workspace: str, dataset: str, where: str) -> ActiveIndex:
    """The index in stored bytes, after its format, MAC, workspace and dataset are checked."""
    bad = IntegrityError(
        f"{where} is not a valid erasure index, or failed authentication (edited outside fieldcrypt); refused. "
        "Restore it, or rebuild it from the requests on file: `fieldcrypt erase-reindex` (docs/OPERATIONS.md, Erasure)"
    )
    try:
        doc = json.loads(raw)
        body = {k: v for k, v in doc.items() if k != "mac"}
        index = ActiveIndex(
            workspace=str(body["workspace"]),
            dataset=str(body["dataset"]),
            version=int(body["version"]),
            active=tuple(IndexEntry(str(e["id"]), str(e["expires_at"]), str(e["mac"])) for e in body["active"]),
            expired=int(body["expired"]),
            mac=str(doc["mac"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise bad from None
    if body.get("format") != INDEX_FORMAT or index.body() != body or not key.opens(body, index.mac, INDEX_MAC_LABEL):
        raise bad
    if (index.workspace, index.dataset) != (workspace, dataset):
        raise IntegrityError(
            f"{where} is the erasure index of {index.dataset} in workspace {index.workspace!r} (moved or copied); "
            "refused"
        )
    return index
