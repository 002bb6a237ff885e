"""Audit log: one JSON object per key use or policy change, appended next to the data.

Events are written under `<lake>/_fieldcrypt/audit/`: one file per UTC day on a local
lake (appended with O_APPEND, one write per line), one object per event on S3 (which
has no append). Fields are ids and counts only, never plaintext and never key bytes.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fieldcrypt.store import LakeStore

AUDIT_DIR = "_fieldcrypt/audit"
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


@dataclass
class AuditLog:
    """Appends audit events for one workspace; `actor` is the run id or CLI user."""

    store: LakeStore
    workspace: str
    actor: str
    _host: str = field(default_factory=lambda: os.uname().nodename)

    def record(self, operation: str, **fields: Any) -> None:
        unknown = set(fields) - _ALLOWED_FIELDS
        if unknown:  # a closed set of fields keeps values (and secrets) out of the log by construction
            raise ValueError(f"unknown audit fields: {sorted(unknown)}")
        now = datetime.now(UTC)
        event = {
            "time": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "workspace": self.workspace,
            "actor": self.actor,
            "host": self._host,
            "operation": operation,
            **{k: v for k, v in fields.items() if v is not None},
        }
        line = json.dumps(event, sort_keys=True) + "\n"
        day = now.strftime("%Y-%m-%d")
        if self.store.supports_append:
            self.store.append_text(f"{AUDIT_DIR}/{day}.jsonl", line)
        else:
            stamp = now.strftime("%H%M%S%f")
            self.store.write_bytes(f"{AUDIT_DIR}/{day}/{stamp}-{secrets.token_hex(4)}.jsonl", line.encode())

    def intent(self, operation: str, **fields: Any) -> str:
        """Record that `operation` is about to change stored data; returns the intent id.

        The events that record the change carry `intent=<id>`; an intent without any such
        event (a crash between the intent and the change's record) is listed by `unconfirmed`.
        """
        intent_id = f"int-{secrets.token_hex(8)}"
        self.record(operation + INTENT_SUFFIX, intent=intent_id, **fields)
        return intent_id

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
        """Every event in the log, oldest first."""
        rows: list[dict[str, Any]] = []
        for path in self.store.list_files(AUDIT_DIR, suffix=".jsonl"):
            for line in self.store.read_bytes(path).decode().splitlines():
                if line.strip():
                    rows.append(json.loads(line))
        rows.sort(key=lambda e: e["time"])
        yield from rows
