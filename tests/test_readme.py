"""README.md's reader snippets and CLI commands, run as printed against a lake made like `make demo`'s.

Fenced blocks whose info string carries `readme-test` are collected: `python` blocks are
executed, `sql` blocks run statement by statement in DuckDB, and each line of a `console`
block runs in bash. They run from a folder holding a copy of the project's catalog
(fieldcrypt.yaml) and the demo's lake and keystore where it declares them
(demo-workspace/), with no FIELDCRYPT_* variable set: what a user has after `make demo`.
The lake is built through the core (not Dagster, for speed) with the demo's datasets,
partitions and story (demo/run.py): a week of complete days (and the orders Delta table's
last two), every attribute the catalog lists enabled now, then today's snapshot (and today's
orders appended to the table), half of it ingested after the enablement.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from demo.run import ORDER_DAYS, land_today
from demo.sample_data import land_orders, land_sample_lake
from fieldcrypt import Workspace
from fieldcrypt.catalog import Catalog
from fieldcrypt.keys.keystore import Keystore

PROJECT = Path(__file__).resolve().parents[1]
README = PROJECT / "README.md"
DAYS = 7
USERS = 5_000  # the demo's size: the README's reveal names user 4242, ingested after enablement
EVENTS = 100
ORDERS = 50
FENCE = re.compile(r"^```(\w+) readme-test\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def snippets(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README.read_text()) if lang == language]


def console_commands() -> list[str]:
    return [line.strip() for body in snippets("console") for line in body.splitlines() if line.strip()]


def clean_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDCRYPT_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project-like folder: the catalog, and the demo's keystore and protected lake where it declares them."""
    folder = tmp_path_factory.mktemp("readme")
    shutil.copy(PROJECT / "fieldcrypt.yaml", folder / "fieldcrypt.yaml")
    catalog = Catalog.load(folder / "fieldcrypt.yaml", environ={})
    config = catalog.workspace_config()
    Keystore.create(Path(config.key.keystore_path or ""), config.name)
    workspace = Workspace(config, actor="readme-test")
    today = datetime.now(UTC).date()
    land_sample_lake(workspace.store, today - timedelta(days=DAYS), DAYS, users=USERS, events=EVENTS)
    land_orders(workspace.store, today - timedelta(days=ORDER_DAYS), ORDER_DAYS, ORDERS)
    for dataset, layout in config.datasets.items():
        for path, mask in layout.attributes.items():
            workspace.enable(f"{dataset}.{path}", mask, acknowledge_irreversible=True)
    enabled_at = max(entry.enabled_at for entry in workspace.policy().attributes.values())
    land_today(workspace.store, enabled_at, USERS, EVENTS, ORDERS)
    for dataset in config.datasets:
        for partition in workspace.partitions(dataset):
            workspace.protect(dataset, partition)
    return folder


def test_readme_has_reader_snippets_for_each_engine() -> None:
    assert len(snippets("python")) >= 3 and len(snippets("sql")) >= 1


def test_readme_has_cli_commands() -> None:
    assert len(console_commands()) >= 5


@pytest.mark.parametrize("index", range(len(snippets("python"))))
def test_python_snippet_runs(index: int, demo_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("FIELDCRYPT_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(demo_folder)
    source = snippets("python")[index]
    exec(compile(source, f"README.md python snippet {index}", "exec"), {"__name__": "readme_snippet"})


@pytest.mark.parametrize("index", range(len(snippets("sql"))))
def test_sql_snippet_runs_in_duckdb(index: int, demo_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(demo_folder)
    connection = duckdb.connect()
    results = []
    for statement in re.split(r";\s*$", snippets("sql")[index], flags=re.MULTILINE):
        if statement.strip():
            results.append(connection.sql(statement))
    rows = results[-1].fetchall()
    assert rows and all(row[1] > 0 and row[2] == 0 for row in rows[:-1])  # the complete days hold values
    assert rows[-1][2] > 0  # today's rows ingested after enablement are masks


def test_duckdb_view_counts_masks_apart_from_values(demo_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(demo_folder)
    connection = duckdb.connect()
    macro = re.split(r";\s*$", snippets("sql")[0], flags=re.MULTILINE)[0]
    connection.sql(macro)
    masks = connection.sql(
        "select count(*) from fieldcrypt_view('demo-workspace/lake/users/**/*.parquet') "
        "where email_is_protected and not starts_with(email, '****')"
    ).fetchall()
    columns = connection.sql("select * from fieldcrypt_view('demo-workspace/lake/users/**/*.parquet')").columns
    assert masks == [(0,)]
    assert "email_is_protected" in columns and not [c for c in columns if "__fc_" in c]


@pytest.mark.parametrize("command", console_commands())
def test_cli_command_exits_zero(command: str, demo_folder: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", command], cwd=demo_folder, env=clean_environment(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
