"""Summary files (`_metadata`, `_common_metadata`) are never left stale: removed before the first file below
them is replaced, by every operation that replaces files, named in reports, Dagster metadata and the audit
log, and announced by `status`. fastparquet and dask lakes then read back in fastparquet and dask.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster_support import catalog_fieldcrypt, node
from written_lakes import (
    DATASETS,
    DAYS,
    PATH,
    ROWS_PER_DAY,
    read_dask,
    read_fastparquet,
    users,
    write_dask,
    write_fastparquet,
    write_pyarrow,
)

from assets import build_assets
from fieldcrypt import Workspace
from fieldcrypt.cli import run as cli_run
from tests.catalogs import declared

SUMMARY = ["_common_metadata", "_metadata"]
UNTOUCHED = ["user_id", "score", "city", "note", "ingested_at", "date"]


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """A pyarrow lake of two days of users with `_metadata` and `_common_metadata` at the dataset's root."""
    root = tmp_path / "lake" / PATH
    root.mkdir(parents=True)
    write_pyarrow(users(), root)
    return root


@pytest.fixture
def workspace(tmp_path: Path, make_local_workspace: Callable[..., Workspace]) -> Workspace:
    return make_local_workspace(
        str(tmp_path / "lake"), datasets={"users": declared("users", primary_key="user_id", path=PATH)}
    )


def summary_files(workspace: Workspace, directory: str = PATH) -> list[str]:
    return [workspace.store.display(f"{directory}/{name}") for name in SUMMARY]


def test_status_names_the_summary_files_a_protect_run_will_remove(lake: Path, workspace: Workspace) -> None:
    workspace.enable("users.email", "email", acknowledge_irreversible=True)

    report = workspace.status("users", DAYS[0])

    assert report.summary_files_present == summary_files(workspace)


def test_protect_removes_the_summary_files_above_the_files_it_replaces_and_names_them(
    lake: Path, workspace: Workspace
) -> None:
    workspace.enable("users.email", "email", acknowledge_irreversible=True)

    report = workspace.protect("users", DAYS[0])

    assert report.files_rewritten > 0
    assert report.summary_files_removed == summary_files(workspace)
    assert not any((lake / name).exists() for name in SUMMARY)


def test_each_removed_summary_file_is_in_the_audit_log(lake: Path, workspace: Workspace) -> None:
    workspace.enable("users.email", "email", acknowledge_irreversible=True)

    workspace.protect("users", DAYS[0])

    removed = [e for e in workspace.audit.events() if e["operation"] == "summary_file_removed"]
    assert sorted(e["detail"] for e in removed) == summary_files(workspace)
    assert {e["partition"] for e in removed} == {DAYS[0]}


def test_partitions_protected_in_parallel_remove_each_summary_file_once(
    lake: Path, tmp_path: Path, make_local_workspace: Callable[..., Workspace]
) -> None:
    """Two runs (their own workspaces, as two Dagster runs) race for the same dataset-level files."""
    runs = [
        make_local_workspace(
            str(tmp_path / "lake"),
            actor=f"run-{day}",
            datasets={"users": declared("users", primary_key="user_id", path=PATH)},
        )
        for day in DAYS
    ]
    runs[0].enable("users.email", "email", acknowledge_irreversible=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(lambda run, day: run.protect("users", day), runs, DAYS))

    assert all(report.files_rewritten > 0 for report in reports)
    removed = [e["detail"] for e in runs[0].audit.events() if e["operation"] == "summary_file_removed"]
    assert sorted(removed) == summary_files(runs[0])  # each once, by whichever run came first
    assert sorted(name for report in reports for name in report.summary_files_removed) == sorted(removed)
    assert not any((lake / name).exists() for name in SUMMARY)


def test_a_protect_run_that_replaces_no_file_leaves_summary_files_alone(lake: Path, workspace: Workspace) -> None:
    """A summary file written after protection (the customer regenerated it) describes the files as they are."""
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    for day in DAYS:
        workspace.protect("users", day)
    pq.write_metadata(pq.read_schema(next(lake.glob(f"date={DAYS[0]}/*.parquet"))), lake / "_common_metadata")

    reports = [workspace.protect("users", day) for day in DAYS]

    assert [r.files_rewritten for r in reports] == [0, 0]
    assert (lake / "_common_metadata").exists()


def test_a_summary_file_of_a_partition_goes_with_the_first_replace_in_that_partition(
    lake: Path, workspace: Workspace
) -> None:
    for day in DAYS:
        shutil.copy(lake / "_common_metadata", lake / f"date={day}" / "_common_metadata")
    workspace.enable("users.email", "email", acknowledge_irreversible=True)

    report = workspace.protect("users", DAYS[0])

    assert f"{workspace.store.display(PATH)}/date={DAYS[0]}/_common_metadata" in report.summary_files_removed
    assert not (lake / f"date={DAYS[0]}" / "_common_metadata").exists()
    assert (lake / f"date={DAYS[1]}" / "_common_metadata").exists()  # its files were not replaced


def test_rotation_removes_the_summary_files_above_the_files_it_replaces(lake: Path, workspace: Workspace) -> None:
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    for day in DAYS:
        workspace.protect("users", day)
    write_pyarrow_summary_files(lake)
    workspace.start_rotation()

    report = workspace.rotate("users", DAYS[0])

    assert report.files_rewritten > 0
    assert report.summary_files_removed == summary_files(workspace)
    assert not any((lake / name).exists() for name in SUMMARY)


def test_a_blind_index_reindex_removes_the_summary_files_above_the_files_it_replaces(
    lake: Path, workspace: Workspace
) -> None:
    workspace.enable("users.email", "email", acknowledge_irreversible=True, blind_index=True)
    for day in DAYS:
        workspace.protect("users", day)
    write_pyarrow_summary_files(lake)
    workspace.start_reindex("users.email")

    report = workspace.reindex("users", DAYS[0])

    assert report.files_rewritten > 0
    assert report.summary_files_removed == summary_files(workspace)
    assert not any((lake / name).exists() for name in SUMMARY)


def write_pyarrow_summary_files(root: Path) -> None:
    """`_metadata` and `_common_metadata` of the files as they are now (as a customer would regenerate them)."""
    collector = []
    for path in sorted(root.glob("date=*/*.parquet")):
        metadata = pq.read_metadata(path)
        metadata.set_file_path(str(path.relative_to(root)))
        collector.append(metadata)
    schema = pq.read_schema(path)
    pq.write_metadata(schema, root / "_common_metadata")
    pq.write_metadata(schema, root / "_metadata", metadata_collector=collector)


def test_status_on_the_command_line_names_the_summary_files_present(
    lake: Path, tmp_path: Path, keystore_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fieldcrypt = catalog_fieldcrypt(
        tmp_path, str(tmp_path / "lake"), {"provider": "local", "keystore": str(keystore_path)}, datasets=DATASETS
    )
    fieldcrypt.workspace("test").enable("users.email", "email", acknowledge_irreversible=True)

    code = cli_run(["--catalog", fieldcrypt.catalog_path, "status", "users"])

    assert code == 0
    assert f"summary files present: {lake}/_common_metadata, {lake}/_metadata" in capsys.readouterr().out


def test_status_does_not_say_no_plaintext_left_while_summary_files_are_present(
    lake: Path, tmp_path: Path, keystore_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Their statistics are not read: status cannot tell whether they hold plaintext."""
    fieldcrypt = catalog_fieldcrypt(
        tmp_path, str(tmp_path / "lake"), {"provider": "local", "keystore": str(keystore_path)}, datasets=DATASETS
    )
    workspace = fieldcrypt.workspace("test")
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users.email", acknowledge_irreversible=True)
    for day in DAYS:
        workspace.protect("users", day)
    write_pyarrow_summary_files(lake)

    code = cli_run(["--catalog", fieldcrypt.catalog_path, "status", "users"])

    out = capsys.readouterr().out
    assert code == 0
    assert "users.email: every data file fully protected" in out
    assert "no plaintext left" not in out


def test_encrypting_history_removes_the_summary_files_above_the_files_it_replaces(
    lake: Path, workspace: Workspace
) -> None:
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    for day in DAYS:
        workspace.protect("users", day)
    write_pyarrow_summary_files(lake)
    workspace.encrypt_history("users.email", acknowledge_irreversible=True)

    report = workspace.protect("users", DAYS[0])

    assert report.files_rewritten > 0
    assert report.summary_files_removed == summary_files(workspace)
    assert not any((lake / name).exists() for name in SUMMARY)


def test_the_dagster_protection_names_the_summary_files_it_removed(
    lake: Path, tmp_path: Path, keystore_path: Path
) -> None:
    fieldcrypt = catalog_fieldcrypt(
        tmp_path, str(tmp_path / "lake"), {"provider": "local", "keystore": str(keystore_path)}, datasets=DATASETS
    )
    fieldcrypt.workspace("test").enable("users.email", "email", acknowledge_irreversible=True)
    generated = build_assets(fieldcrypt.config())

    result = dg.materialize(
        [generated.protected["users"]],
        partition_key=DAYS[0],
        resources=fieldcrypt.as_resources(),
        instance=dg.DagsterInstance.ephemeral(),
    )

    assert result.success
    (materialization,) = result.asset_materializations_for_node(node("protected_users"))
    assert materialization.metadata["summary_files_removed"].value == [f"{lake}/{name}" for name in SUMMARY]


def test_protect_on_s3_removes_the_summary_files(
    tmp_path: Path, moto: str, s3_bucket: str, make_local_workspace: Callable[..., Workspace]
) -> None:
    local = tmp_path / "written"
    write_pyarrow(users(), local)
    s3: Any = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        s3.put_object(Bucket=s3_bucket, Key=f"lake/{PATH}/{path.relative_to(local)}", Body=path.read_bytes())
    workspace = make_local_workspace(
        f"s3://{s3_bucket}/lake",
        s3_endpoint_url=moto,
        s3_region="us-east-1",
        datasets={"users": declared("users", primary_key="user_id", path=PATH)},
    )
    workspace.enable("users.email", "email", acknowledge_irreversible=True)

    report = workspace.protect("users", DAYS[0])

    assert report.summary_files_removed == summary_files(workspace)
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"lake/{PATH}/_").get("Contents", [])
    keys = {o["Key"] for o in listed}
    assert not keys & {f"lake/{PATH}/{name}" for name in SUMMARY}


# -- the engines that read summary files read the protected lake -------------------------------------------


@pytest.mark.parametrize("writer", ["fastparquet", "dask"])
@pytest.mark.parametrize("reader", ["fastparquet", "dask"])
def test_a_protected_lake_with_summary_files_reads_back_with_every_column_and_the_new_ones(
    writer: str, reader: str, tmp_path: Path, workspace: Workspace
) -> None:
    root = tmp_path / "lake" / PATH
    root.mkdir(parents=True)
    table = users().append_column("note", pa.nulls(ROWS_PER_DAY * len(DAYS), pa.string()))  # all null, as it may be
    {"fastparquet": write_fastparquet, "dask": write_dask}[writer](table, root)
    read = {"fastparquet": read_fastparquet, "dask": read_dask}[reader]
    before = read(root)
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    for day in DAYS:
        workspace.protect("users", day)

    after = read(root)

    assert len(after) == len(before)
    for column in UNTOUCHED:
        pd.testing.assert_series_equal(
            after[column].astype(str), before[column].astype(str), check_names=False, check_dtype=False
        )
    assert {"email__fc_ct", "email__fc_dek"} <= set(after.columns)
    protected = after["email__fc_ct"].notna()
    assert protected.any() and set(after.loc[protected, "email"]) <= {f"****@mail{i}.example" for i in range(4)}
