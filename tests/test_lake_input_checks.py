"""Input the lake can hold that must be refused by name before anything is written (issue 17 item 6):
a file whose leading magic is not PAR1, and a primary key repeated across the files of one partition."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from demo.sample_data import land_sample_lake, snapshot_path
from fieldcrypt.cli import ACK_FLAG, main, run
from fieldcrypt.lake.store import LakeStore
from tests.catalogs import write_catalog

PARTITION = "2030-01-01"


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One day of users with users.email enabled before it was ingested (every row is to be protected)."""
    catalog = write_catalog(tmp_path / "fieldcrypt.yaml", "acme", "lake", {"provider": "local", "keystore": "ks.json"})
    monkeypatch.setenv("FIELDCRYPT_CATALOG", str(catalog))
    assert run(["key", "init"]) == 0
    assert run(["enable", "users.email", "--mask", "email", ACK_FLAG]) == 0
    land_sample_lake(LakeStore.from_uri(str(tmp_path / "lake")), date.fromisoformat(PARTITION), 1, 60, 20)
    return tmp_path / "lake"


def users_file(lake: Path) -> Path:
    return lake / snapshot_path("users", date.fromisoformat(PARTITION))


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err, err
    return err


def test_file_whose_leading_magic_is_not_par1_is_refused_naming_it_and_left_unchanged(
    lake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = users_file(lake)
    path.write_bytes(b"XXXX" + path.read_bytes()[4:])  # the footer (and its trailing PAR1) intact
    before = path.read_bytes()
    err = refused(["protect", "users", "--partition", PARTITION], capsys)
    assert f"{path} is not a readable Parquet file (it does not start with PAR1)" in err
    assert path.read_bytes() == before


def test_primary_key_repeated_across_two_files_of_a_partition_is_refused_and_nothing_is_written(
    lake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = users_file(lake)
    second = first.with_name("part-1.parquet")
    table = pq.read_table(first)
    pq.write_table(table.slice(0, 40), first)
    pq.write_table(table.slice(30), second)  # rows 30..39 in both files
    before = {first: first.read_bytes(), second: second.read_bytes()}
    err = refused(["protect", "users", "--partition", PARTITION], capsys)
    assert "primary key (user_id) of users repeats across files" in err
    assert str(first) in err and str(second) in err
    assert {path: path.read_bytes() for path in before} == before


def test_primary_keys_unique_across_the_files_of_a_partition_are_protected(
    lake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = users_file(lake)
    table = pq.read_table(first)
    pq.write_table(table.slice(0, 30), first)
    pq.write_table(table.slice(30), first.with_name("part-1.parquet"))
    assert run(["protect", "users", "--partition", PARTITION]) == 0
    assert run(["verify", "users", "--partition", PARTITION]) == 0
