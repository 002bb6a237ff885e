"""Opt-in encryption of historical rows: acknowledged, irreversible, done by protection runs over chosen partitions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from demo.sample_data import land_sample_lake, snapshot_path
from fieldcrypt import PolicyError, Workspace
from fieldcrypt.cli import ACK_FLAG, run
from tests.catalogs import write_catalog
from tests.dagster_support import blocking_checks_passed, node

DAYS = [date(2026, 11, 1), date(2026, 11, 2)]
NOON = datetime(2026, 11, 2, 12, tzinfo=UTC)  # enabled in the middle of the second day


@pytest.fixture
def lake(make_local_workspace: Callable[..., Workspace], enable_at: Callable[..., Any]) -> Workspace:
    workspace = make_local_workspace()
    land_sample_lake(workspace.store, DAYS[0], 2, users=200, events=10)
    enable_at(workspace, "users.email", "email", NOON)
    for day in DAYS:
        workspace.protect("users", day.isoformat())
    return workspace


def emails(workspace: Workspace, day: date) -> pa.Table:
    return pq.read_table(workspace.store.full_path(snapshot_path("users", day)), columns=["email", "email__fc_ct"])


def test_history_stays_plaintext_until_opted_in(lake: Workspace) -> None:
    assert lake.status("users", DAYS[0].isoformat()).attributes["users.email"].historical_plaintext > 0


def test_opting_in_needs_the_acknowledgement_and_changes_nothing_by_itself(lake: Workspace) -> None:
    before = emails(lake, DAYS[0])
    with pytest.raises(PolicyError, match="irreversible and does not reach copies outside the lake"):
        lake.encrypt_history("users.email", acknowledge_irreversible=False)
    lake.encrypt_history("users.email", acknowledge_irreversible=True)
    assert emails(lake, DAYS[0]).equals(before)
    assert lake.status("users", DAYS[0].isoformat()).attributes["users.email"].pending > 0


def test_protect_then_encrypts_every_row_of_the_chosen_partitions_and_they_decrypt(lake: Workspace) -> None:
    original = emails(lake, DAYS[0]).column("email")
    lake.encrypt_history("users.email", acknowledge_irreversible=True)

    report = lake.protect("users", DAYS[0].isoformat())

    counts = report.attributes["users.email"]
    assert counts.newly_encrypted == pc.count(original).as_py() and counts.historical_plaintext == 0
    stored = emails(lake, DAYS[0])
    assert stored.column("email__fc_ct").null_count == stored.column("email").null_count
    assert pc.all(pc.starts_with(stored.column("email").drop_null(), "****")).as_py()
    (batch,) = lake.reveal("users", DAYS[0].isoformat(), ["email"])
    assert batch.column("users.email").to_pylist() == original.to_pylist()
    assert lake.verify("users", DAYS[0].isoformat()) == {"users.email": pc.count(original).as_py()}
    # the other partition was not in the chosen range: untouched until a run covers it
    assert lake.status("users", DAYS[1].isoformat()).attributes["users.email"].pending > 0
    assert lake.protect("users", DAYS[0].isoformat()).files_rewritten == 0  # idempotent


def test_history_encryption_cannot_be_undone_through_the_policy(lake: Workspace) -> None:
    lake.encrypt_history("users.email", acknowledge_irreversible=True)
    policy = lake.policy()
    from dataclasses import replace

    undone = replace(
        policy, attributes={"users.email": replace(policy.attributes["users.email"], encrypt_history=False)}
    )
    with pytest.raises(PolicyError, match="stops encrypting the history of users.email"):
        policy.check_successor(undone)
    with pytest.raises(PolicyError, match="already being encrypted"):
        lake.encrypt_history("users.email", acknowledge_irreversible=True)
    assert any(e["operation"] == "encrypt_history" for e in lake.audit.events())


def test_cli_status_reports_the_attribute_fully_protected_once_every_partition_is(
    lake: Workspace, keystore_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = {"provider": "local", "keystore": str(keystore_path)}
    cli = ["--catalog", str(write_catalog(tmp_path / "fieldcrypt.yaml", "acme", lake.config.lake_uri, key))]
    assert run([*cli, "encrypt-history", "users.email", ACK_FLAG]) == 0
    assert run([*cli, "protect", "users", "--partition", DAYS[0].isoformat()]) == 0
    capsys.readouterr()
    assert run([*cli, "status", "users"]) == 0
    assert "users.email: fully protected" not in capsys.readouterr().out  # the second day is not done yet
    assert run([*cli, "protect", "users"]) == 0
    capsys.readouterr()
    assert run([*cli, "status", "users"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "users.email: fully protected, no plaintext left"


def test_the_dagster_job_records_the_opt_in_and_a_protection_run_encrypts_the_history(
    lake: Workspace, keystore_path: Path
) -> None:
    from dagster_support import local_fieldcrypt

    from assets import build_assets
    from pipelines.jobs import encrypt_history_job

    fieldcrypt = local_fieldcrypt(Path(lake.config.lake_uri), keystore_path)
    config = {"dataset": "users", "attribute": "email"}
    job = encrypt_history_job(build_assets(fieldcrypt.config()).scope)
    refused = job.execute_in_process(
        run_config={"ops": {node("record_history_encryption"): {"config": config}}},
        resources=fieldcrypt.as_resources(),
        raise_on_error=False,
    )
    assert not refused.success
    job.execute_in_process(
        run_config={
            "ops": {node("record_history_encryption"): {"config": {**config, "acknowledge_irreversible": True}}}
        },
        resources=fieldcrypt.as_resources(),
    )
    protected = build_assets(fieldcrypt.config()).protected["users"]
    result = dg.materialize([protected], partition_key=DAYS[0].isoformat(), resources=fieldcrypt.as_resources())
    assert result.success and blocking_checks_passed(result)  # users.phone, not enabled, warns (no_undeclared_pii)
    assert fieldcrypt.workspace("t").status("users", DAYS[0].isoformat()).attributes["users.email"].pending == 0
