"""What the code location is built from: the catalog (fieldcrypt.yaml), read once at import.

The file is $FIELDCRYPT_CATALOG, else the project's `fieldcrypt.yaml`; FIELDCRYPT_WORKSPACE
picks the workspace and the environment overrides its settings (fieldcrypt.catalog).
Loading validates every setting (a bad TTL, an unknown key, a wrong partitioning fail the
load with a message naming them) and makes no network call. FIELDCRYPT_DAGSTER_EXECUTOR
(in_process or multiprocess, the default) picks the executor.
"""

from __future__ import annotations

import os
from pathlib import Path

from fieldcrypt.catalog import CATALOG_ENV, Catalog
from fieldcrypt.workspace import WorkspaceConfig
from resources.fieldcrypt_resource import FieldcryptResource

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CATALOG_PATH = Path(os.environ.get(CATALOG_ENV) or PROJECT_ROOT / "fieldcrypt.yaml").resolve()
CATALOG = Catalog.load(CATALOG_PATH)
WORKSPACE: WorkspaceConfig = CATALOG.workspace_config()


def resources_from_catalog() -> dict[str, FieldcryptResource]:
    """The resources of the code location, keyed as the assets and ops ask for them."""
    return {"fieldcrypt": FieldcryptResource(catalog_path=str(CATALOG_PATH), workspace_name=WORKSPACE.name)}
