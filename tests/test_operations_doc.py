"""docs/OPERATIONS.md's commands, run as printed: the customer's openssl wrapping of a key, imported by the CLI.

The "customer key" is 32 random bytes made for the test in its temporary folder (the customer's
side of the procedure), never printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "OPERATIONS.md"
CATALOG = "workspaces:\n  shop:\n    lake: lake\n    key: {provider: local, keystore: keys/keystore.json}\n"


def documented(prefix: str) -> str:
    found = [line.strip() for line in OPERATIONS.read_text().splitlines() if line.strip().startswith(prefix)]
    assert len(found) == 1, f"expected one `{prefix}` line in OPERATIONS.md, found {len(found)}"
    return found[0]


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDCRYPT_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def customer_key(tmp_path: Path) -> Path:
    """A platform folder with an exported wrapping key, and the customer's raw key beside it."""
    (tmp_path / "fieldcrypt.yaml").write_text(CATALOG)
    exported = shell(documented("fieldcrypt key wrapping-key"), tmp_path)
    assert exported.returncode == 0, exported.stderr
    (tmp_path / "key.bin").write_bytes(os.urandom(32))
    return tmp_path


def test_documented_openssl_wrapping_imports(customer_key: Path) -> None:
    wrapped = shell(documented("openssl pkeyutl"), customer_key)
    imported = shell(documented("fieldcrypt key import --wrapped"), customer_key)
    assert wrapped.returncode == 0, wrapped.stderr
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["versions"][0]["origin"] == "imported-wrapped"


def test_key_wrapped_without_the_oaep_options_is_refused(customer_key: Path) -> None:
    pkcs1 = re.sub(r" -pkeyopt \S+", "", documented("openssl pkeyutl"))  # OpenSSL's default: PKCS#1 v1.5
    wrapped = shell(pkcs1, customer_key)
    imported = shell(documented("fieldcrypt key import --wrapped"), customer_key)
    assert wrapped.returncode == 0, wrapped.stderr
    assert imported.returncode == 2
    assert "RSA-OAEP with SHA-256" in imported.stderr


def test_backfills_are_found_under_runs() -> None:
    text = OPERATIONS.read_text()
    assert "Runs → Backfills" in text and "Overview → Backfills" not in text
