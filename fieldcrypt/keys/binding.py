"""Which master key a workspace's lake is bound to, and the rotation campaign under way.

Stored at `_fieldcrypt/master_key.json`. The first protection binds the lake to the
configured key; afterwards a run configured with another key is refused (it could
not read what is stored). A rotation campaign moves the binding to a new key; while
it runs, both keys decrypt and new data keys are wrapped under the new one.

`check_values` maps a local master-key ref (`key_id#version`), or a pkcs11 key label, to
its key check value (docs/FORMAT.md section 5a), so a key whose bytes differ from the ones
the lake was bound to is refused as a wrong master key before anything is written.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from fieldcrypt.errors import ConcurrentUpdateError, KeyProviderError, PolicyError
from fieldcrypt.keys.providers.base import MasterKeyInfo as KeyRef
from fieldcrypt.lake.store import FileVersion, LakeStore

BINDING_PATH = "_fieldcrypt/master_key.json"
BINDING_FORMAT = "fieldcrypt-master-key-v1"


@dataclass(frozen=True)
class Campaign:
    """One master-key rotation: every wrapped data key moves from `old` to `new`."""

    campaign_id: str
    old: KeyRef
    new: KeyRef
    started_at: str
    started_by: str
    status: str = "in_progress"  # "in_progress" or "complete"
    finished_at: str | None = None


@dataclass(frozen=True)
class KeyBinding:
    current: KeyRef
    campaigns: tuple[Campaign, ...] = field(default_factory=tuple)
    check_values: dict[str, str] = field(default_factory=dict)
    # The newest policy version the lake has seen, MAC'd (fieldcrypt.policy.rollback); kept as stored, checked by
    # the policy store. Not part of equality: a rotation's compare-and-swap is about keys, not versions.
    seen: dict[str, Any] | None = field(default=None, compare=False)

    def with_check_value(self, ref: KeyRef, kcv: str) -> KeyBinding:
        return replace(self, check_values={**self.check_values, ref.ref: kcv}) if kcv else self

    @property
    def active_campaign(self) -> Campaign | None:
        active = [c for c in self.campaigns if c.status == "in_progress"]
        return active[-1] if active else None

    def start(self, new: KeyRef, actor: str, new_kcv: str = "") -> KeyBinding:
        if self.active_campaign is not None:
            raise PolicyError(f"rotation {self.active_campaign.campaign_id} is still in progress; complete it first")
        if new == self.current:
            raise PolicyError(f"master key {new.ref} is already the current key")
        campaign = Campaign(f"rot-{_now_compact()}-{secrets.token_hex(3)}", self.current, new, _now(), actor)
        return KeyBinding(new, (*self.campaigns, campaign), self.check_values).with_check_value(new, new_kcv)

    def complete(self) -> tuple[KeyBinding, Campaign]:
        campaign = self.active_campaign
        if campaign is None:
            raise PolicyError("no rotation is in progress")
        done = replace(campaign, status="complete", finished_at=_now())
        campaigns = tuple(done if c == campaign else c for c in self.campaigns)
        return KeyBinding(self.current, campaigns, self.check_values), done

    @property
    def last_completed(self) -> Campaign | None:
        done = [c for c in self.campaigns if c.status == "complete"]
        return done[-1] if done else None

    def to_json(self) -> str:
        doc = {
            "format": BINDING_FORMAT,
            "current": asdict(self.current),
            "campaigns": [asdict(c) for c in self.campaigns],
        }
        if self.check_values:
            doc["check_values"] = dict(sorted(self.check_values.items()))
        if self.seen is not None:
            doc["seen"] = self.seen
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> KeyBinding:
        try:
            doc = json.loads(text)
            if doc.get("format") != BINDING_FORMAT:
                raise KeyProviderError(f"{where}: unknown master-key binding format {doc.get('format')!r}")
            campaigns = tuple(
                Campaign(**{**c, "old": KeyRef(**c["old"]), "new": KeyRef(**c["new"])}) for c in doc["campaigns"]
            )
            check_values = doc.get("check_values", {})
            if not isinstance(check_values, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in check_values.items()
            ):
                raise TypeError("check_values")
            seen = doc.get("seen")
            if seen is not None and not isinstance(seen, dict):
                raise TypeError("seen")
            return cls(KeyRef(**doc["current"]), campaigns, dict(check_values), seen)
        except (ValueError, KeyError, TypeError):
            raise KeyProviderError(f"{where} is not a valid master-key binding") from None


class BindingStore:
    def __init__(self, store: LakeStore) -> None:
        self.store = store

    def load(self) -> KeyBinding | None:
        if not self.store.exists(BINDING_PATH):
            return None
        return KeyBinding.from_json(self.store.read_bytes(BINDING_PATH).decode(), self.store.display(BINDING_PATH))

    def version(self) -> FileVersion | None:
        """What identifies the stored binding without reading it (one stat / HEAD)."""
        return self.store.version(BINDING_PATH) if self.store.exists(BINDING_PATH) else None

    def save(self, binding: KeyBinding, previous: KeyBinding | None) -> None:
        """Replace `previous` (None: no binding yet) by `binding`, never another worker's update.

        If the stored binding is no longer `previous` (another worker bound the lake, or
        started or completed a rotation, since this one read it), ConcurrentUpdateError and
        nothing is written; if it already is `binding` (two workers binding a new lake to
        the same key), there is nothing to write.
        """
        where = self.store.display(BINDING_PATH)

        def change(stored: bytes | None) -> bytes | None:
            now = None if stored is None else KeyBinding.from_json(stored.decode(), where)
            if now == binding:
                return None
            if now != previous:
                raise ConcurrentUpdateError(
                    f"{where} changed while this run was updating it (another worker bound the lake or moved "
                    "its rotation); nothing was written, run again"
                )
            # The stored version record is kept whatever `binding` carries: it only ever moves forward.
            return replace(binding, seen=now.seen if now is not None else binding.seen).to_json().encode()

        self.store.update(BINDING_PATH, change, "this run was updating it")

    def update_seen(self, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> bool:
        """Compare-and-swap of the binding's `seen` record only; `change` returns None to leave it.

        No binding yet (a lake being bound): nothing to record, False.
        """
        where = self.store.display(BINDING_PATH)

        def rewrite(stored: bytes | None) -> bytes | None:
            if stored is None:
                return None
            now = KeyBinding.from_json(stored.decode(), where)
            seen = change(now.seen)
            return None if seen is None else replace(now, seen=seen).to_json().encode()

        return self.store.update(BINDING_PATH, rewrite, "its version record was being updated")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _now_compact() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
