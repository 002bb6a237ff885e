"""What the code location is built from: the catalog (fieldcrypt.yaml), read once at import.

The file is $FIELDCRYPT_CATALOG, else the project's `fieldcrypt.yaml`. The code location
serves every workspace the catalog declares, or those FIELDCRYPT_SERVE_WORKSPACES lists
(comma-separated), each with its own resource, assets, jobs, schedules and sensors
(assets/scope.py). FIELDCRYPT_WORKSPACE names the workspace the environment's overrides
(FIELDCRYPT_LAKE, FIELDCRYPT_KMS_KEY, ...) apply to, as for the CLI (fieldcrypt.catalog).

Loading validates every setting and makes no network call. A served workspace whose catalog
entry does not validate is not served and does not stop the others: the code location
loads the rest and that workspace's `<workspace>__catalog_error` sensor fails every tick
naming the problem (pipelines/definitions.py). The load itself fails when nothing could be
served, when the environment's overrides are wrong, or when FIELDCRYPT_SERVE_WORKSPACES names
a workspace the catalog does not declare.
"""

from __future__ import annotations

import os
from pathlib import Path

from fieldcrypt.catalog import CATALOG_ENV, Catalog
from fieldcrypt.errors import ConfigError
from fieldcrypt.workspace import WorkspaceConfig
from resources.fieldcrypt_resource import FieldcryptResource, resource_key

SERVE_ENV = "FIELDCRYPT_SERVE_WORKSPACES"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CATALOG_PATH = Path(os.environ.get(CATALOG_ENV) or PROJECT_ROOT / "fieldcrypt.yaml").resolve()
CATALOG = Catalog.load(CATALOG_PATH, fail_on_selected=False)  # a broken entry stops its own workspace only


def served_names(catalog: Catalog, raw: str | None) -> list[str]:
    """The workspaces this code location serves: FIELDCRYPT_SERVE_WORKSPACES, else every declared one."""
    if not raw or raw.strip() == "*":
        return catalog.workspace_names
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in catalog.workspace_names]
    if unknown:
        raise ConfigError(
            f"{SERVE_ENV} names {', '.join(map(repr, unknown))}, not declared in {catalog.path} "
            f"(declared: {', '.join(catalog.workspace_names)})"
        )
    return names


def _served() -> tuple[list[WorkspaceConfig], dict[str, str]]:
    configs: list[WorkspaceConfig] = []
    broken: dict[str, str] = {}
    for name in served_names(CATALOG, os.environ.get(SERVE_ENV)):
        try:
            configs.append(CATALOG.workspace_config(name))
        except ConfigError as exc:
            if CATALOG.from_environment(name):
                raise  # the deployment's own setting is wrong: fail the load, naming the variable
            broken[name] = str(exc)
    if not configs and broken:
        raise ConfigError("; ".join(broken.values()))
    return configs, broken


SERVED, BROKEN = _served()  # the workspaces' configurations; workspace -> why its entry is not served


def resources_from_catalog() -> dict[str, FieldcryptResource]:
    """The resources of the code location: one per served workspace, under `fieldcrypt_<workspace>`."""
    return {
        resource_key(config.name): FieldcryptResource(catalog_path=str(CATALOG_PATH), workspace_name=config.name)
        for config in SERVED
    }
