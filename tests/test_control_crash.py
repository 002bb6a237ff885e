"""Crash windows of control-state changes: killed at every write, the next command resumes or refuses cleanly.

Each change (enable, rotate start, rotate complete, key init, key import) runs in a child
process (tests/control_crash_child.py) that exits with os._exit right before its Nth
durable write, for N = 1, 2, ... until the change completes. After each crash the same
command runs again in a fresh process-like Workspace: it must finish the change or refuse
with a fieldcrypt error, and afterwards the workspace must be fully usable (protect,
rotate, complete, verify) - never bricked, never holding a key it cannot retire.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from demo.sample_data import land_sample_lake
from fieldcrypt import FieldcryptError, KeyConfig, Workspace, WorkspaceConfig
from fieldcrypt.keys.keystore import Keystore, key_check_value, parse_base64_key
from tests.catalogs import TEST_DATASETS
from tests.conftest import SAMPLE_DAY, WORKSPACE
from tests.control_crash_child import CRASHED, IMPORTED_KEY
from tests.policy_support import backdate_policy

ROOT = Path(__file__).resolve().parent.parent
DAY = SAMPLE_DAY.isoformat()
MAX_WRITES = 40


def _workspace(lake: Path, keystore: Path) -> Workspace:
    key = KeyConfig(provider="local", keystore_path=str(keystore))
    config = WorkspaceConfig(WORKSPACE, str(lake), key, datasets=TEST_DATASETS)
    return Workspace(config, actor="resume")


def _template(root: Path, operation: str) -> None:
    lake, keystore = root / "lake", root / "keys" / "keystore.json"
    lake.mkdir(parents=True)
    if operation in ("key_init", "key_import"):
        return
    Keystore.create(keystore, WORKSPACE)
    workspace = _workspace(lake, keystore)
    land_sample_lake(workspace.store, SAMPLE_DAY, 1, users=20, events=20)
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    backdate_policy(workspace)
    workspace.protect("users", DAY)
    if operation == "rotate_complete":
        workspace.start_rotation()
        workspace.rotate("users", DAY)


def _crash_at(root: Path, operation: str, n: int) -> int:
    lake, keystore = root / "lake", root / "keys" / "keystore.json"
    child = [sys.executable, "-m", "tests.control_crash_child", str(lake), str(keystore), operation, str(n)]
    done = subprocess.run(child, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, CRASHED), done.stderr[-2000:]
    return done.returncode


def _again_or_refused(action: Callable[[], object]) -> None:
    """The next command either finishes the change or refuses with a fieldcrypt error (never a crash)."""
    with contextlib.suppress(FieldcryptError):
        action()


def _resume(root: Path, operation: str) -> None:
    lake, keystore = root / "lake", root / "keys" / "keystore.json"
    if operation in ("key_init", "key_import"):
        key = parse_base64_key(IMPORTED_KEY) if operation == "key_import" else None
        _again_or_refused(lambda: Keystore.create(keystore, WORKSPACE, key))
        store = Keystore.load(keystore)
        assert store.current == 1
        if key is not None:
            assert store.check_value(1) == key_check_value(key)
        return
    workspace = _workspace(lake, keystore)
    if operation == "enable":
        _again_or_refused(
            lambda: workspace.enable("users.phone", "last4", acknowledge_irreversible=True, blind_index=True)
        )
        assert "users.phone" in _workspace(lake, keystore).policy().attributes
    elif operation == "rotate_start":
        _again_or_refused(workspace.start_rotation)
        workspace = _workspace(lake, keystore)
        workspace.rotate("users", DAY)
        workspace.complete_rotation()
    else:
        _again_or_refused(workspace.complete_rotation)
    workspace = _workspace(lake, keystore)
    workspace.protect("users", DAY)
    assert workspace.verify("users", DAY)["users.email"] > 0
    binding = workspace.bindings.load()
    assert binding is not None and binding.active_campaign is None
    store = Keystore.load(keystore)
    assert [v.version for v in store.versions.values() if v.state == "enabled"] == [store.current]


@pytest.mark.parametrize("operation", ["enable", "rotate_start", "rotate_complete", "key_init", "key_import"])
def test_control_change_killed_at_any_write_is_resumed_or_refused_cleanly_by_the_next_command(
    tmp_path: Path, operation: str
) -> None:
    template = tmp_path / "template"
    _template(template, operation)
    crashes = 0
    for n in range(1, MAX_WRITES):
        root = tmp_path / f"crash-{n}"
        shutil.copytree(template, root)
        if _crash_at(root, operation, n) == 0:
            break
        crashes += 1
        _resume(root, operation)
    else:
        pytest.fail(f"{operation} did not finish within {MAX_WRITES} writes")
    assert crashes >= 1  # every change was killed at least once before it finished
