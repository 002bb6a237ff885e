"""Every entry under a dataset is classified; what may hold data is never skipped; dead runs' temps are swept.

The sample lake holds users/date=2026-11-01/part-0.parquet (300 users). Each test adds what an
engine, an operator or a killed run leaves beside it.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path
from fieldcrypt import ConfigError, InputError, Workspace
from fieldcrypt.catalog import Catalog
from fieldcrypt.cli import run
from fieldcrypt.lake.inventory import CHECKSUM, DATA, MARKER, SUMMARY, TEMP
from fieldcrypt.lake.store import TEMP_MARKER
from fieldcrypt.policy.layout import HIVE_DEFAULT_PARTITION
from tests.catalogs import write_catalog
from tests.conftest import SAMPLE_DAY
from tests.temp_holder import held_by_live_process
from tests.test_crash import protect_in_child_killed_at

DAY = SAMPLE_DAY.isoformat()
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)  # every sample row is ingested after it


def users_dir(workspace: Workspace) -> Path:
    return Path(workspace.store.full_path("users"))


def sample_file(workspace: Workspace) -> Path:
    return Path(workspace.store.full_path(snapshot_path("users", DAY)))


@pytest.fixture
def cli(local_workspace: Workspace, keystore_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The CLI's global flags for the sample lake, declared in a catalog as a customer would."""
    for name in [n for n in os.environ if n.startswith("FIELDCRYPT_")]:
        monkeypatch.delenv(name)
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml",
        "acme",
        local_workspace.store.uri,
        {"provider": "local", "keystore": str(keystore_path)},
    )
    return ["--catalog", str(catalog), "--workspace", "acme"]


@pytest.mark.parametrize("command", ["status", "protect", "verify"])
def test_a_directory_starting_with_underscore_below_a_partition_is_refused_by_name_not_skipped(
    local_workspace: Workspace, enable_at: Callable[..., Any], command: str
) -> None:
    batch = users_dir(local_workspace) / f"date={DAY}" / "_batch=1"
    batch.mkdir()
    shutil.copy(sample_file(local_workspace), batch / "part.parquet")  # rows landed after enablement, say
    before = (batch / "part.parquet").read_bytes()
    enable_at(local_workspace, "users.email", "email")

    with pytest.raises(InputError, match=rf"users/date={DAY}/_batch=1/part.parquet is inside .*/_batch=1, a directory"):
        getattr(local_workspace, command)("users", DAY)
    assert (batch / "part.parquet").read_bytes() == before


@pytest.mark.parametrize("name", [".part-1.parquet", ".copy"])
def test_a_hidden_file_holding_parquet_is_refused_by_name(
    local_workspace: Workspace, enable_at: Callable[..., Any], name: str
) -> None:
    shutil.copy(sample_file(local_workspace), users_dir(local_workspace) / f"date={DAY}" / name)
    enable_at(local_workspace, "users.email", "email")

    with pytest.raises(InputError, match=rf"date={DAY}/{name} is a hidden file holding Parquet"):
        local_workspace.protect("users", DAY)


def test_engine_markers_checksums_summaries_and_temps_are_classified_and_only_data_files_are_data(
    local_workspace: Workspace,
) -> None:
    root = users_dir(local_workspace)
    part = root / f"date={DAY}"
    written = {
        "_SUCCESS": b"",
        f"date={DAY}/_committed_5521": b"{}",
        f"date={DAY}/_started_5521": b"",
        f"date={DAY}/.part-0.parquet.crc": b"crc",
        f"date={DAY}/._SUCCESS.crc": b"crc",
        f"date={DAY}/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "_temporary/0/_temporary/attempt_1/part-9.parquet": (part / "part-0.parquet").read_bytes(),
        "_metadata": b"PAR1 summary",
        f"date={DAY}/_common_metadata": b"PAR1 summary",
        f"date={DAY}/.part-0.parquet{TEMP_MARKER}0a1b2c": b"left by a run",
    }
    for rel, data in written.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)

    inventory = local_workspace.layout("users").inventory(local_workspace.store)

    kinds = {entry.rel.removeprefix("users/"): entry.kind for entry in inventory.entries}
    assert kinds == {
        f"date={DAY}/part-0.parquet": DATA,
        "_SUCCESS": MARKER,
        f"date={DAY}/_committed_5521": MARKER,
        f"date={DAY}/_started_5521": MARKER,
        f"date={DAY}/.part-0.parquet.crc": CHECKSUM,
        f"date={DAY}/._SUCCESS.crc": MARKER,
        f"date={DAY}/.DS_Store": MARKER,
        "_temporary/0/_temporary/attempt_1/part-9.parquet": MARKER,
        "_metadata": SUMMARY,
        f"date={DAY}/_common_metadata": SUMMARY,
        f"date={DAY}/.part-0.parquet{TEMP_MARKER}0a1b2c": TEMP,
    }
    assert inventory.data == {DAY: [snapshot_path("users", DAY)]}
    assert inventory.checksum_of(snapshot_path("users", DAY)) == f"users/date={DAY}/.part-0.parquet.crc"
    assert local_workspace.partitions("users") == [DAY]


@pytest.mark.parametrize("command", ["protect", "rotate", "status"])
def test_temp_file_left_by_a_killed_run_is_swept_by_the_next_run_over_its_partition(
    make_local_workspace: Callable[..., Workspace], enable_at: Callable[..., Any], command: str
) -> None:
    from demo.sample_data import users_table, write_snapshot

    workspace = make_local_workspace()
    write_snapshot(workspace.store, "users", SAMPLE_DAY, users_table(SAMPLE_DAY, 300), row_group_size=100)
    enable_at(workspace, "users.email", "email")
    workspace.key_cache()
    child = protect_in_child_killed_at(workspace, "before-replace")  # kill -9 with its verified temp written
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    (leftover,) = [p for p in sample_file(workspace).parent.iterdir() if TEMP_MARKER in p.name]
    assert pq.read_table(leftover).num_rows == 300  # a whole copy of the partition's file, plaintext included

    getattr(workspace, command)("users", DAY)

    assert not leftover.exists()


def test_status_counts_a_temp_held_by_a_live_run_and_does_not_say_no_plaintext_left(
    local_workspace: Workspace, enable_at: Callable[..., Any], cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    enable_at(local_workspace, "users.email", "email", at=LONG_AGO)
    local_workspace.protect("users", DAY)
    assert run([*cli, "status", "users"]) == 0
    assert "users.email: fully protected, no plaintext left" in capsys.readouterr().out
    temp = sample_file(local_workspace).with_name(f".part-0.parquet{TEMP_MARKER}5e5e5e")

    with held_by_live_process(temp):
        assert run([*cli, "status", "users"]) == 0
        printed = capsys.readouterr().out
        assert local_workspace.status("users", DAY).temp_files_left == 1
        assert temp.exists()

    assert "1 temporary files of runs still under way are left" in printed
    assert "no plaintext left" not in printed


def test_null_partition_is_a_partition_of_its_own_that_the_cli_protects_verifies_and_shows(
    local_workspace: Workspace, enable_at: Callable[..., Any], cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    null = users_dir(local_workspace) / f"date={HIVE_DEFAULT_PARTITION}"
    null.mkdir()
    shutil.copy(sample_file(local_workspace), null / "part-00000-c000.snappy.parquet")
    enable_at(local_workspace, "users.email", "email", at=LONG_AGO)
    assert local_workspace.partitions("users") == [HIVE_DEFAULT_PARTITION, DAY]

    assert run([*cli, "--json", "protect", "users", "--partition", HIVE_DEFAULT_PARTITION]) == 0
    assert run([*cli, "--json", "verify", "users", "--partition", HIVE_DEFAULT_PARTITION]) == 0
    assert run([*cli, "status", "users"]) == 0  # every partition, the null one included

    printed = capsys.readouterr().out
    assert f'"partition": "{HIVE_DEFAULT_PARTITION}"' in printed
    assert local_workspace.verify("users", HIVE_DEFAULT_PARTITION)["users.email"] > 0
    assert local_workspace.status("users", DAY).attributes["users.email"].pending > 0  # the dated one untouched


def test_partition_key_starting_with_underscore_is_refused_when_the_catalog_loads(tmp_path: Path) -> None:
    datasets = {"users": {"partitioning": {"granularity": "daily", "key": "_dt"}, "ingested_at": "ingested_at"}}
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", "lake", {"provider": "local", "keystore": "k"}, datasets
    )

    with pytest.raises(ConfigError, match=r"datasets.users.partitioning.key: .*partition key '_dt' starts with '_'"):
        Catalog.load(catalog, environ={})


def test_dagster_protection_of_a_date_is_not_tripped_by_the_null_partition(
    local_workspace: Workspace, enable_at: Callable[..., Any], cli: list[str]
) -> None:
    import dagster as dg

    from assets import build_assets
    from resources import FieldcryptResource

    null = users_dir(local_workspace) / f"date={HIVE_DEFAULT_PARTITION}"
    null.mkdir()
    shutil.copy(sample_file(local_workspace), null / "part-0.parquet")
    enable_at(local_workspace, "users.email", "email", at=LONG_AGO)
    fieldcrypt = FieldcryptResource(catalog_path=cli[1], workspace_name="acme")

    result = dg.materialize(
        [build_assets(fieldcrypt.config()).protected["users"]],
        partition_key=DAY,
        resources=fieldcrypt.as_resources(),
        instance=dg.DagsterInstance.ephemeral(),
    )

    assert result.success
    assert local_workspace.status("users", DAY).attributes["users.email"].pending == 0
    assert local_workspace.status("users", HIVE_DEFAULT_PARTITION).attributes["users.email"].pending > 0
