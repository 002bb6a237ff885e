"""What the CLI prints for people and scripts: machine-readable output, errors that name what to fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fieldcrypt.cli import main, run
from tests.catalogs import write_catalog


@pytest.fixture
def flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    for name in [n for n in os.environ if n.startswith("FIELDCRYPT_")]:
        monkeypatch.delenv(name)
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", "lake", {"provider": "local", "keystore": "keystore.json"}
    )
    monkeypatch.setenv("FIELDCRYPT_CATALOG", str(catalog))
    return ["--lake", str(tmp_path / "lake"), "--keystore", str(tmp_path / "keystore.json")]


def exit_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_key_describe_with_json_prints_one_json_line(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*flags, "key", "init"]) == 0
    capsys.readouterr()
    assert run([*flags, "--json", "key", "describe"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["current"] == 1


def test_rotate_status_before_any_campaign_says_how_many_partitions_once(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*flags, "key", "init"]) == 0
    capsys.readouterr()
    assert run([*flags, "rotate", "status"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "no rotation campaign yet"
    assert out.count("scanned") == 1


def test_an_unknown_workspace_flag_is_blamed_on_the_flag(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    err = exit_error([*flags, "--workspace", "acmee", "status", "users"], capsys)
    assert "workspace 'acmee' (--workspace) is not declared (declared: acme)" in err
    assert "FIELDCRYPT_WORKSPACE" not in err


def test_a_missing_catalog_is_named_by_its_full_path_and_the_flag_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FIELDCRYPT_CATALOG", raising=False)
    monkeypatch.chdir(tmp_path)
    err = exit_error(["status", "users"], capsys)
    assert f"no catalog at {tmp_path / 'fieldcrypt.yaml'}" in err
    assert "--catalog" in err


def test_the_provider_flag_accepts_pkcs11_and_names_what_it_misses(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = exit_error([*flags, "--provider", "pkcs11", "status", "users"], capsys)
    assert "invalid choice" not in err
    assert "key.module: Field required" in err and "key.key_label: Field required" in err


def test_errors_carry_their_class_name_as_dagster_shows_it(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*flags, "key", "init"]) == 0
    err = exit_error([*flags, "verify", "Users"], capsys)
    assert err.startswith("fieldcrypt: error: InputError: dataset 'Users' is not declared")
