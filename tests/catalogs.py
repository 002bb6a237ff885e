"""Catalogs for the tests: the shipped demo declarations, and catalog files written for a test's lake."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from fieldcrypt.catalog import Catalog
from fieldcrypt.errors import ConfigError
from fieldcrypt.policy.layout import DatasetLayout, Partitioning
from fieldcrypt.policy.policy import DatasetSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CATALOG = REPO_ROOT / "fieldcrypt.yaml"
# The demo's Hive datasets (users and events), exactly as the shipped fieldcrypt.yaml declares them; its
# `orders` Delta table is left out (a test lake holds no Delta table unless the test writes one).
DEMO_DATASETS: dict[str, DatasetLayout] = {
    name: layout
    for name, layout in Catalog.load(SHIPPED_CATALOG, environ={}).workspace_config("demo").datasets.items()
    if layout.kind == "hive"
}


def declared(
    name: str,
    ingested_at: str = "ingested_at",
    primary_key: str | tuple[str, ...] | None = None,
    *,
    path: str | None = None,
    partitioning: Partitioning | None = None,
) -> DatasetLayout:
    """A dataset declaration as the catalog would make it (daily `date=` partitions by default)."""
    return DatasetLayout(
        spec=DatasetSpec(name, ingested_at, primary_key),
        path=path or name,
        partitioning=partitioning or Partitioning(),
    )


# What the core tests' workspaces declare: the demo's users and events without the catalog's list of
# expected attributes (tests enable others), and orders, things and logs (no primary key).
TEST_DATASETS: dict[str, DatasetLayout] = {
    **{name: replace(layout, attributes={}) for name, layout in DEMO_DATASETS.items()},
    "orders": declared("orders", "ingested_at", "order_id"),
    "things": declared("things", "ingested_at", "id"),
    "logs": declared("logs", "ingested_at", None),
}


def demo_datasets_yaml(*, with_attributes: bool = False) -> dict[str, Any]:
    """The demo's Hive dataset declarations as catalog YAML (to declare them in another workspace); without
    the list of expected attributes unless asked, since tests enable others."""
    doc = yaml.safe_load(SHIPPED_CATALOG.read_text())
    datasets: dict[str, Any] = {
        name: declaration
        for name, declaration in doc["workspaces"]["demo"]["datasets"].items()
        if declaration.get("kind", "hive") == "hive"
    }
    if not with_attributes:
        for declaration in datasets.values():
            declaration.pop("attributes", None)
    return datasets


def write_catalog(
    path: Path,
    workspace: str,
    lake: str,
    key: dict[str, Any],
    datasets: dict[str, Any] | None = None,
    **settings: Any,
) -> Path:
    """A catalog file declaring one workspace (the demo's datasets unless `datasets` is given)."""
    entry = {"lake": lake, "key": key, "datasets": demo_datasets_yaml() if datasets is None else datasets, **settings}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"default_workspace": workspace, "workspaces": {workspace: entry}}))
    return path


def write_workspaces_catalog(path: Path, entries: dict[str, dict[str, Any]], default: str | None = None) -> Path:
    """A catalog file declaring several workspaces, each `name: entry` as written in fieldcrypt.yaml (the
    demo's datasets when an entry has no `datasets`)."""
    workspaces = {name: {"datasets": demo_datasets_yaml(), **entry} for name, entry in entries.items()}
    doc: dict[str, Any] = {"workspaces": workspaces}
    if default is not None:
        doc["default_workspace"] = default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def catalog_error(tmp_path: Path, keystore_path: Path, declaration: dict[str, Any]) -> str:
    """The ConfigError a catalog holding the one dataset `t` declared as `declaration` is refused with."""
    declaration = {"ingested_at": "ingested_at", **declaration}
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml",
        "acme",
        str(tmp_path / "lake"),
        {"provider": "local", "keystore": str(keystore_path)},
        {"t": declaration},
    )
    with pytest.raises(ConfigError) as raised:
        Catalog.load(catalog, environ={}).workspace_config()
    return str(raised.value)
