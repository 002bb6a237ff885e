"""No command prints success for a partition, key or row it did not find (issue: operators' false "OK").

A date typo in a scripted check, a row key that is not in the partition or one of the wrong type must
exit non-zero and say what was not found; nothing is written.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

from demo.sample_data import land_sample_lake
from fieldcrypt.cli import ACK_FLAG, main, run
from fieldcrypt.lake.store import LakeStore
from tests.catalogs import write_catalog

PARTITION = "2030-01-01"
MISSING = "2030-01-05"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A protected one-day users lake (workspace acme, the demo's datasets, first partition 2026-01-01)."""
    for name in [n for n in os.environ if n.startswith("FIELDCRYPT_")]:
        monkeypatch.delenv(name)
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", "lake", {"provider": "local", "keystore": "keystore.json"}
    )
    monkeypatch.setenv("FIELDCRYPT_CATALOG", str(catalog))
    flags = ["--workspace", "acme", "--lake", str(tmp_path / "lake"), "--keystore", str(tmp_path / "keystore.json")]
    assert run([*flags, "key", "init"]) == 0
    land_sample_lake(LakeStore.from_uri(str(tmp_path / "lake")), date.fromisoformat(PARTITION), 1, 40, 80)
    assert run([*flags, "enable", "users.email", "--mask", "email", ACK_FLAG]) == 0
    assert run([*flags, "protect", "users"]) == 0
    return flags


def failure(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.parametrize("command", ["verify", "protect", "status", "rotate-partition", "reindex-partition"])
def test_a_named_partition_with_no_data_exits_non_zero_naming_it(
    cli: list[str], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = failure([*cli, command, "users", "--partition", MISSING], capsys)
    assert f"partition {MISSING} of users has no data files under " in err
    assert "all authentic" not in out and "protected 1 partition" not in out and "rotated 1" not in out


def test_a_partition_before_the_datasets_start_says_so(cli: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _, err = failure([*cli, "status", "users", "--partition", "2025-01-01"], capsys)
    assert "partition 2025-01-01 of users is before the dataset's first partition 2026-01-01" in err


def test_reveal_of_a_missing_partition_exits_non_zero(cli: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["reveal", "users", "--partition", MISSING, "--attribute", "email", "--reason", "T-1", "--row-key", "7"]
    _, err = failure([*cli, *args], capsys)
    assert f"partition {MISSING} of users has no data files" in err


def test_reveal_names_the_row_keys_it_did_not_find(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "revealed.jsonl"
    args = ["reveal", "users", "--partition", PARTITION, "--attribute", "email", "--reason", "T-1"]
    _, err = failure([*cli, *args, "--row-key", "7", "--row-key", "987654", "--out", str(out)], capsys)
    assert "1 of 2 row keys not found in users 2030-01-01: 987654" in err
    assert len(out.read_text().splitlines()) == 1  # the row that exists was still revealed (and audited)


def test_reveal_refuses_a_row_key_of_the_wrong_type(cli: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["reveal", "users", "--partition", PARTITION, "--attribute", "email", "--reason", "T-1"]
    _, err = failure([*cli, *args, "--row-key", "abc"], capsys)
    assert "row key abc is not a int64 value: the primary key 'user_id' of users is int64" in err


def test_reveal_reads_an_integer_key_in_any_decimal_spelling(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "revealed.jsonl"
    args = ["reveal", "users", "--partition", PARTITION, "--attribute", "email", "--reason", "T-1"]
    assert run([*cli, *args, "--row-key", "007", "--out", str(out)]) == 0
    assert '"user_id": 7' in out.read_text()
