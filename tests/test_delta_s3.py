"""A Delta Lake table in an `s3://` lake (moto server on loopback), protected through delta-rs's own commits.

delta-rs is given the workspace's S3 settings (endpoint, region; AWS_ALLOW_HTTP for the loopback
endpoint; commits as S3 conditional writes) and reads credentials from the environment. Without
them it would go to AWS's own endpoint.

The moto server runs in a process of its own here (tests/moto_process.py), not in the test's
(tests/conftest.py's `moto`): delta-rs holds the GIL through some calls (`alter.set_table_properties`), so a
server thread of the calling process could never answer it.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from fieldcrypt import Workspace
from fieldcrypt.catalog import Catalog
from fieldcrypt.cli import run
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.lake.tables.delta import storage_options
from tests.catalogs import write_catalog
from tests.delta_tables import DATASETS, DAYS, TABLE, UNTOUCHED, between_plan_and_commit, emails, users
from tests.moto_process import BUCKET, download
from tests.moto_process import moto as moto  # the fixtures: a moto server in a process of its own
from tests.moto_process import moto_process as moto_process
from tests.plaintext_scan import scan

PREFIX = "lake"


@pytest.fixture
def lake_uri(moto: str) -> str:
    return f"s3://{BUCKET}/{PREFIX}"


@pytest.fixture
def catalog(moto: str, lake_uri: str, tmp_path: Path, keystore_path: Path) -> Path:
    """A workspace on the moto lake holding a partitioned Delta table written by delta-rs (a real upstream
    writer: it is given the endpoint as any delta-rs user would be)."""
    upstream = {"AWS_ENDPOINT_URL": moto, "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    write_deltalake(f"{lake_uri}/{TABLE}", users(0, 90, DAYS), partition_by=["date"], storage_options=upstream)
    key = {"provider": "local", "keystore": str(keystore_path)}
    return write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", lake_uri, key, DATASETS, s3_endpoint_url=moto, region="us-east-1"
    )


@pytest.fixture
def workspace(catalog: Path) -> Workspace:
    return Workspace(Catalog.load(catalog, environ={}).workspace_config(), actor="test")


def read(workspace: Workspace, lake_uri: str) -> pa.Table:
    """The table as delta-rs reads it with the storage options fieldcrypt gives it."""
    table = DeltaTable(f"{lake_uri}/{TABLE}", storage_options=storage_options(workspace.store))
    return table.to_pyarrow_table().sort_by("user_id")


def test_storage_options_carry_the_workspace_endpoint_and_region_and_never_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-the-environment")
    loopback = LakeStore.from_uri("s3://b/lake", endpoint_url="http://127.0.0.1:9000", region="eu-west-3")
    aws = LakeStore.from_uri("s3://b/lake", region="eu-west-3")

    assert storage_options(loopback) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_REGION": "eu-west-3",
        "AWS_ALLOW_HTTP": "true",
        "conditional_put": "etag",
    }
    assert storage_options(aws) == {"AWS_REGION": "eu-west-3", "conditional_put": "etag"}
    assert storage_options(LakeStore.from_uri("/tmp/lake")) == {}


def test_a_delta_table_on_s3_is_protected_verified_and_purged_with_no_plaintext_left(
    workspace: Workspace,
    catalog: Path,
    lake_uri: str,
    moto: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plaintexts = emails(users(0, 90, DAYS))
    before = read(workspace, lake_uri)
    assert workspace.partitions("users_delta") == [f"date={day}" for day in DAYS]

    workspace.enable("users_delta.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_delta.email", acknowledge_irreversible=True)
    protected = sum(workspace.protect("users_delta", p).newly_encrypted for p in workspace.partitions("users_delta"))

    assert protected == 90
    after = read(workspace, lake_uri)
    assert after.select(UNTOUCHED).equals(before.select(UNTOUCHED))
    assert not set(emails(after)) & set(plaintexts)
    assert sum(sum(workspace.verify("users_delta", p).values()) for p in workspace.partitions("users_delta")) == 90
    cli = ["--catalog", str(catalog)]
    assert run([*cli, "status", "users_delta"]) == 0
    assert "older versions of the delta table still hold plaintext of users_delta.email" in capsys.readouterr().out
    stored = f"{PREFIX}/{TABLE}"
    assert scan(download(moto, BUCKET, stored, tmp_path / "before"), plaintexts)  # the old files still hold it

    assert run([*cli, "purge-history", "users_delta", "--older-than", "0h"]) == 0
    capsys.readouterr()

    assert scan(download(moto, BUCKET, stored, tmp_path / "after"), plaintexts) == []
    purged = read(workspace, lake_uri)
    assert purged.select(UNTOUCHED).equals(before.select(UNTOUCHED))
    assert not workspace.table_history("users_delta").holds_plaintext
    assert run([*cli, "status", "users_delta"]) == 0
    assert "users_delta.email: fully protected, no plaintext left" in capsys.readouterr().out
    assert sum(sum(workspace.verify("users_delta", p).values()) for p in workspace.partitions("users_delta")) == 90


def test_an_append_committed_on_s3_while_fieldcrypt_commits_is_kept(
    workspace: Workspace, lake_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream append on S3 between fieldcrypt's plan and its commit: kept, and protected by the next run."""
    workspace.enable("users_delta.email", "email", acknowledge_irreversible=True)
    workspace.encrypt_history("users_delta.email", acknowledge_irreversible=True)
    appended = users(1000, 6, DAYS[:1])
    options = storage_options(workspace.store)
    between_plan_and_commit(
        monkeypatch,
        lambda: write_deltalake(
            f"{lake_uri}/{TABLE}", appended, mode="append", schema_mode="merge", storage_options=options
        ),
    )

    assert workspace.protect("users_delta", f"date={DAYS[0]}").newly_encrypted == 30

    table = read(workspace, lake_uri)
    assert table.num_rows == 96
    assert set(appended.column("user_id").to_pylist()) <= set(table.column("user_id").to_pylist())
    monkeypatch.undo()
    assert workspace.protect("users_delta", f"date={DAYS[0]}").newly_encrypted == 6
    assert sum(workspace.verify("users_delta", f"date={DAYS[0]}").values()) == 36


def test_two_writers_committing_the_same_version_on_s3_both_keep_their_commit(
    workspace: Workspace, lake_uri: str
) -> None:
    """With fieldcrypt's storage options, the later of two writers that read the same version is refused by S3's
    conditional PUT of the log entry and retried by delta-rs; an unsafe rename would overwrite the first commit."""
    options = storage_options(workspace.store)
    first, second = (DeltaTable(f"{lake_uri}/{TABLE}", storage_options=options) for _ in range(2))
    assert first.version() == second.version() == 0

    write_deltalake(first, users(500, 5, DAYS[:1]), mode="append")
    write_deltalake(second, users(600, 7, DAYS[:1]), mode="append")

    table = DeltaTable(f"{lake_uri}/{TABLE}", storage_options=options)
    assert table.version() == 2
    assert table.to_pyarrow_table().num_rows == 90 + 5 + 7
