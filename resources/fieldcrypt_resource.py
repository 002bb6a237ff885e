"""The Dagster resource of a fieldcrypt workspace: which catalog file, which workspace in it.

`FieldcryptResource.workspace(actor)` builds the core's `Workspace` for one run from the
catalog (and the environment's overrides, read in the run's process). Nothing here
contacts S3 or a KMS when it is constructed or when the code location is imported; the
first KMS call happens when a run first needs a data key (the core's `Workspace.key_cache`).
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from fieldcrypt import Workspace
from fieldcrypt.catalog import Catalog, workspace_ident
from fieldcrypt.log_safety import silence_key_material_loggers
from fieldcrypt.workspace import WorkspaceConfig


def resource_key(workspace: str) -> str:
    """The resource key of a workspace's `FieldcryptResource`: `fieldcrypt_<workspace>`."""
    return f"fieldcrypt_{workspace_ident(workspace)}"


class FieldcryptResource(dg.ConfigurableResource["FieldcryptResource"]):
    """One workspace (customer) of the catalog: its lake, master key and datasets.

    The code location has one per workspace, under `resource_key(workspace)`; only that
    workspace's assets, ops, schedules and sensors require it."""

    catalog_path: str = Field(description="the catalog file (fieldcrypt.yaml)")
    workspace_name: str = Field(description="the workspace of the catalog this resource opens")

    def as_resources(self) -> dict[str, FieldcryptResource]:
        """{its resource key: it}: what `materialize(..., resources=...)` takes for this workspace's assets."""
        return {resource_key(self.workspace_name): self}

    def config(self) -> WorkspaceConfig:
        """The workspace's configuration, validated (named errors), environment overrides applied."""
        # Another workspace's broken entry (even the catalog's default one) must not stop this one's runs.
        catalog = Catalog.load(self.catalog_path, fail_on_selected=False)
        return catalog.workspace_config(self.workspace_name)

    def workspace(self, actor: str) -> Workspace:
        """A `Workspace` whose audit events name `actor` (the Dagster run id); no KMS call yet."""
        silence_key_material_loggers()
        return Workspace(self.config(), actor=actor)
