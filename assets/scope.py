"""One workspace of the code location, and the Dagster names its definitions carry.

One code location serves every workspace of the catalog (or those FIELDCRYPT_SERVE_WORKSPACES
lists). A workspace's definitions are generated from its catalog entry and carry its name:

- asset keys under the workspace: `acme/protected_users`, `acme/rotated_users_keys`;
- jobs, schedules and sensors prefixed: `acme__protect_snapshots`, `acme__key_rotation_driver`;
- its own resource (`fieldcrypt_acme`: the catalog file and the workspace's name), required by
  its assets, ops, schedules and sensors only, so a run of acme's assets builds acme's workspace
  and nothing else: it cannot load another workspace's keystore or call its KMS key;
- its own `kms_acme` pool (a customer's KMS quota is its own account's) and rotation-campaign
  partitions (`acme__rotation_campaign`);
- the run tag `fieldcrypt/workspace: acme` on every run of its jobs, schedules and sensors,
  which the deployment's run queue limits per workspace (deploy/dagster.yaml).

Dagster names take letters, digits and underscores; a workspace's `-` becomes `_` there (the
catalog refuses two names that differ only so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg

from fieldcrypt.catalog import workspace_ident
from fieldcrypt.policy.layout import DatasetLayout
from fieldcrypt.workspace import WorkspaceConfig
from resources import FieldcryptResource, resource_key

WORKSPACE_TAG = "fieldcrypt/workspace"
OPERATION_TAG = "fieldcrypt/operation"


@dataclass(frozen=True)
class WorkspaceScope:
    """A workspace's name and datasets, and the Dagster names derived from them."""

    name: str
    datasets: Mapping[str, DatasetLayout]

    @classmethod
    def of(cls, config: WorkspaceConfig) -> WorkspaceScope:
        return cls(config.name, config.datasets)

    @property
    def ident(self) -> str:
        return workspace_ident(self.name)

    @property
    def resource_key(self) -> str:
        return resource_key(self.name)

    @property
    def pool(self) -> str:
        """The pool of the workspace's KMS-calling steps: its limit bounds this customer's KMS concurrency."""
        return f"kms_{self.ident}"

    @property
    def key_prefix(self) -> list[str]:
        return [self.ident]

    def asset_key(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([self.ident, name])

    def job_name(self, name: str) -> str:
        return f"{self.ident}__{name}"

    def tags(self, operation: str | None = None) -> dict[str, str]:
        return {WORKSPACE_TAG: self.name, **({OPERATION_TAG: operation} if operation else {})}

    def resource(self, context: Any) -> FieldcryptResource:
        """The workspace's resource from an asset, op, schedule or sensor context that requires it."""
        resource: FieldcryptResource = getattr(context.resources, self.resource_key)
        return resource
