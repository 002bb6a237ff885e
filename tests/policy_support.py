"""Test-only policy edits through the authenticated store.

The stored policy is authenticated, so a test can no longer move an enablement time by
editing `policy.json`; this rewrites it through `PolicyStore.write_authenticated`, which
skips the successor check that refuses such a change in production.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from fieldcrypt import Workspace

BEFORE_SAMPLE = datetime(2026, 10, 31, tzinfo=UTC)


def backdate_policy(workspace: Workspace, to: datetime = BEFORE_SAMPLE) -> None:
    """Move every attribute's enablement time to `to` (the sample data is ingested after it)."""
    policy = workspace.policy()
    attributes = {name: replace(entry, enabled_at=to) for name, entry in policy.attributes.items()}
    workspace.policies.write_authenticated(replace(policy, attributes=attributes))
