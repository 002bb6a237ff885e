"""`pip install .` without extras into a fresh venv, then the CLI: an undeclared runtime import fails here.

Marked `packaging` (a fresh venv and a real install: about a minute with pip's cache); left out of the
default run by pyproject's addopts and run by `.ci/run` with `-m packaging`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

PROJECT = Path(__file__).resolve().parents[1]
NOT_SOURCE = (".git", ".venv", "demo-workspace", "build", "*.egg-info", "__pycache__", ".*_cache", "dagster_home")
CATALOG = """\
workspaces:
  shop:
    lake: lake
    key: {provider: local, keystore: keys/keystore.json}
    datasets:
      users:
        partitioning: {granularity: daily, key: date, start: 2026-01-01}
        ingested_at: ingested_at
        primary_key: user_id
        attributes: {email: email}
"""


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIELDCRYPT_", "PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding `pip install <a copy of the project>`, no extras; returns its bin folder."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    shutil.copytree(PROJECT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    bin_dir = root / "venv" / "bin"
    done = run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(source)], cwd=root, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return bin_dir


def test_cli_reports_its_version(installed: Path, tmp_path: Path) -> None:
    done = run([str(installed / "fieldcrypt"), "--version"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("fieldcrypt ")


def test_cli_creates_a_key_and_lists_datasets_from_a_catalog(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "fieldcrypt.yaml").write_text(CATALOG)
    init = run([str(installed / "fieldcrypt"), "key", "init"], cwd=tmp_path)
    listed = run([str(installed / "fieldcrypt"), "datasets"], cwd=tmp_path)
    assert init.returncode == 0, init.stderr[-2000:]
    assert listed.returncode == 0 and "users" in listed.stdout, listed.stderr[-2000:]


def test_every_library_module_imports(installed: Path, tmp_path: Path) -> None:
    code = (
        "import importlib, pkgutil, fieldcrypt\n"
        "for m in pkgutil.walk_packages(fieldcrypt.__path__, 'fieldcrypt.'):\n"
        "    importlib.import_module(m.name)\n"
    )
    done = run([str(installed / "python"), "-c", code], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("folder", ["assets", "resources", "pipelines", "demo"])
def test_code_location_folders_are_not_installed_as_packages(installed: Path, tmp_path: Path, folder: str) -> None:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({folder!r}) is not None)"
    done = run([str(installed / "python"), "-c", code], cwd=tmp_path)
    assert done.returncode == 0, f"{folder} is importable from site-packages"
