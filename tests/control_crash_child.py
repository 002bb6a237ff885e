"""Child process of tests/test_control_crash.py: run one control-state change and die at its Nth write.

Usage: python -m tests.control_crash_child <lake> <keystore> <operation> <n>

Every durable write of a control-state change goes through one of three calls:
`os.replace` (lake files written whole, the keystore), `os.link` (a new keystore) and
`LakeStore.append_text` (the audit log). They are wrapped here (fault injection: a
real kill cannot be aimed at the Nth write) so that the Nth call exits the process
with os._exit before it happens - no cleanup, no finally blocks, like kill -9. An `n`
past the last write lets the change finish; the exit code then is 0.
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path
from typing import Any

from fieldcrypt import KeyConfig, Workspace, WorkspaceConfig
from fieldcrypt.keys.keystore import Keystore
from fieldcrypt.lake.store import LakeStore
from tests.catalogs import TEST_DATASETS

CRASHED = 17
WORKSPACE = "acme"
IMPORTED_KEY = base64.b64encode(bytes(range(40, 72))).decode()


def _arm(n: int) -> None:
    count = {"writes": 0}

    def counted(real: Any) -> Any:
        def write(*args: Any, **kwargs: Any) -> Any:
            count["writes"] += 1
            if count["writes"] == n:
                os._exit(CRASHED)
            return real(*args, **kwargs)

        return write

    os.replace = counted(os.replace)
    os.link = counted(os.link)
    LakeStore.append_text = counted(LakeStore.append_text)  # type: ignore[method-assign]


def run(lake: str, keystore: str, operation: str) -> None:
    if operation == "key_init":
        Keystore.create(Path(keystore), WORKSPACE)
        return
    if operation == "key_import":
        from fieldcrypt.keys.keystore import parse_base64_key

        Keystore.create(Path(keystore), WORKSPACE, parse_base64_key(IMPORTED_KEY), origin="imported")
        return
    workspace = Workspace(
        WorkspaceConfig(WORKSPACE, lake, KeyConfig(provider="local", keystore_path=keystore), datasets=TEST_DATASETS),
        actor="crash-test",
    )
    if operation == "enable":
        workspace.enable("users.phone", "last4", acknowledge_irreversible=True, blind_index=True)
    elif operation == "rotate_start":
        workspace.start_rotation()
    elif operation == "rotate_complete":
        workspace.complete_rotation()
    else:
        raise SystemExit(f"unknown operation {operation}")


if __name__ == "__main__":
    lake_arg, keystore_arg, operation_arg, n_arg = sys.argv[1:5]
    _arm(int(n_arg))
    run(lake_arg, keystore_arg, operation_arg)
