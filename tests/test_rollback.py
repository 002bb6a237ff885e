"""No rollback: an older authenticated policy, or a restored `_fieldcrypt/`, is refused by name; nothing is written.

Through the command line, as an operator restoring a backup would meet it. Sample snapshots
are landed in 2030 so every row is ingested after an enablement made now.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import date
from pathlib import Path

import pytest

from demo.sample_data import land_sample_lake
from fieldcrypt.cli import ACK_FLAG, main, run
from fieldcrypt.keys.binding import BINDING_PATH
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.policy import POLICY_PATH
from tests.catalogs import write_catalog

DAY1, DAY2 = "2030-01-01", "2030-01-02"


@pytest.fixture(autouse=True)
def acme_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith("FIELDCRYPT_")]:
        monkeypatch.delenv(name)
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", "lake", {"provider": "local", "keystore": "keystore.json"}
    )
    monkeypatch.setenv("FIELDCRYPT_CATALOG", str(catalog))
    return catalog


@pytest.fixture
def cli(tmp_path: Path) -> list[str]:
    """A workspace with users.email enabled and day 1 protected."""
    flags = ["--workspace", "acme", "--lake", str(tmp_path / "lake"), "--keystore", str(tmp_path / "keystore.json")]
    assert run([*flags, "key", "init"]) == 0
    land_sample_lake(LakeStore.from_uri(str(tmp_path / "lake")), date.fromisoformat(DAY1), 2, 60, 120)
    assert run([*flags, "enable", "users.email", "--mask", "email", ACK_FLAG]) == 0
    assert run([*flags, "protect", "users", "--partition", DAY1]) == 0
    return flags


def lake_files(lake: Path) -> dict[str, object]:
    """Every file of the lake and its bytes; of the audit log, the events other than key uses.

    Opening the master key and checking a policy's MAC are key uses, audited even in a refused run.
    """
    audit = lake / "_fieldcrypt" / "audit"
    files: dict[str, object] = {
        str(p.relative_to(lake)): p.read_bytes()
        for p in sorted(lake.rglob("*"))
        if p.is_file() and audit not in p.parents
    }
    key_uses = ("unwrap_", "describe_key")
    files["audit"] = [e for e in _audit(lake) if not str(e["operation"]).startswith(key_uses)]
    return files


def refused(cli: list[str], capsys: pytest.CaptureFixture[str], *command: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([*cli, *command])
    assert exited.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def restored_policy(cli: list[str], tmp_path: Path) -> Path:
    """policy.json copied back from before users.phone was enabled (a restored backup)."""
    policy = tmp_path / "lake" / POLICY_PATH
    backup = policy.read_bytes()
    assert run([*cli, "enable", "users.phone", "--mask", "last4", ACK_FLAG]) == 0
    policy.write_bytes(backup)
    return tmp_path / "lake"


@pytest.mark.parametrize("command", [["protect", "users"], ["status", "users"], ["verify", "users"]])
def test_restored_older_policy_is_refused_by_name_and_nothing_is_written(
    cli: list[str], restored_policy: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    before = lake_files(restored_policy)
    message = refused(cli, capsys, *command, "--partition", DAY2)
    assert "_fieldcrypt/policy.json is version 2, this lake has seen version 3: restored from a backup?" in message
    assert "fieldcrypt restore-accept" in message
    assert lake_files(restored_policy) == before


def test_restored_older_policy_is_refused_by_enable_and_nothing_is_written(
    cli: list[str], restored_policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = lake_files(restored_policy)
    message = refused(cli, capsys, "enable", "users.name", "--mask", "full", ACK_FLAG)
    assert "policy.json is version 2, this lake has seen version 3" in message
    assert lake_files(restored_policy) == before


def test_version_record_of_the_binding_edited_by_hand_is_refused(
    cli: list[str], restored_policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binding = restored_policy / BINDING_PATH
    doc = json.loads(binding.read_text())
    doc["seen"]["policy"]["version"] = 2  # make the restored copy look current
    binding.write_text(json.dumps(doc))
    message = refused(cli, capsys, "status", "users")
    assert "master_key.json: its record of the newest policy version is malformed or failed authentication" in message


def test_restored_fieldcrypt_directory_as_a_whole_is_refused_naming_the_file(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    backup = tmp_path / "backup"
    shutil.copytree(lake / "_fieldcrypt", backup)
    assert run([*cli, "protect", "users", "--partition", DAY2]) == 0
    shutil.rmtree(lake / "_fieldcrypt")
    shutil.copytree(backup, lake / "_fieldcrypt")
    before = lake_files(lake)
    for command in (["status", "users"], ["verify", "users"], ["protect", "users"]):
        message = refused(cli, capsys, *command, "--partition", DAY2)
        assert "users/date=2030-01-02/part-0.parquet was written by fieldcrypt" in message
        assert "not in the protection ledger" in message and "restored from a backup?" in message
    assert lake_files(lake) == before


def test_deliberate_restore_is_accepted_by_restore_accept_and_audited(
    cli: list[str], restored_policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*cli, "restore-accept", "--reason", "INC-1234 restored from Tuesday's backup"]) == 0
    assert "policy.json version 2 is now version 4" in capsys.readouterr().out
    assert run([*cli, "status", "users"]) == 0
    assert run([*cli, "verify", "users"]) == 0
    events = _audit(restored_policy)
    accepted = [e for e in events if e["operation"] == "restore_accepted"]
    assert len(accepted) == 1 and accepted[0]["reason"] == "INC-1234 restored from Tuesday's backup"
    assert any(e["operation"] == "restore_accept_intent" and e["intent"] == accepted[0]["intent"] for e in events)


def test_copy_older_than_an_accepted_restore_stays_refused(
    cli: list[str], tmp_path: Path, restored_policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = restored_policy / POLICY_PATH
    newest = tmp_path / "newest.json"
    assert run([*cli, "restore-accept", "--reason", "INC-1"]) == 0
    newest.write_bytes(policy.read_bytes())
    assert run([*cli, "enable", "users.phone", "--mask", "last4", ACK_FLAG]) == 0
    policy.write_bytes(newest.read_bytes())
    assert "policy.json is version 4, this lake has seen version 5" in refused(cli, capsys, "status", "users")


def _audit(lake: Path) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for path in sorted((lake / "_fieldcrypt" / "audit").rglob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
