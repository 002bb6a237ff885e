"""An `s3://` lake on moto's real HTTP server, protected with the aws-kms provider.

The bucket is inspected with plain boto3, the way an operator (or the customer) would
see it. The only thing injected is one failing replace, to show a failed write leaves
the original object; nothing else is mocked.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import date
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest

from demo.sample_data import land_sample_lake, snapshot_path, users_table
from fieldcrypt import KeyConfig, Workspace, WorkspaceConfig
from fieldcrypt.lake.store import TEMP_MARKER, LakeStore
from tests.catalogs import TEST_DATASETS
from tests.conftest import WORKSPACE

# Ingestion times on this day are all after "now", so every row is encrypted on enablement.
DAY = date(2099, 1, 1)
DAY1 = "2099-01-01"
ROWS = 40
PREFIX = "prefix"
USERS_KEY = f"{PREFIX}/{snapshot_path('users', DAY1)}"


@pytest.fixture
def s3(moto: str) -> Any:
    return boto3.client("s3", endpoint_url=moto, region_name="us-east-1")


@pytest.fixture
def s3_workspace(moto: str, s3_bucket: str, make_kms_key: Callable[..., str]) -> Workspace:
    """A workspace on s3://lake-bucket/prefix with one landed users partition and users.email enabled."""
    key = KeyConfig(provider="aws-kms", kms_key=make_kms_key(), kms_region="us-east-1", kms_endpoint_url=moto)
    config = WorkspaceConfig(
        WORKSPACE,
        f"s3://{s3_bucket}/{PREFIX}",
        key,
        s3_endpoint_url=moto,
        s3_region="us-east-1",
        datasets=TEST_DATASETS,
    )
    workspace = Workspace(config, actor="run-42")
    land_sample_lake(workspace.store, DAY, 1, users=ROWS, events=ROWS)
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    return workspace


def object_keys(s3: Any, bucket: str) -> list[str]:
    """Every object in the bucket, without the empty directory markers pyarrow creates."""
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/"))
    return keys


def temporary_objects(s3: Any, bucket: str) -> list[str]:
    return [k for k in object_keys(s3, bucket) if TEMP_MARKER in k]


def audit_events(s3: Any, bucket: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for key in object_keys(s3, bucket):
        if key.startswith(f"{PREFIX}/_fieldcrypt/audit/"):
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            events.extend(json.loads(line) for line in body.splitlines() if line.strip())
    return events


def test_protect_on_s3_replaces_the_partition_object_with_the_protected_file(
    s3_workspace: Workspace, s3: Any, s3_bucket: str
) -> None:
    s3_workspace.protect("users", DAY1)

    body = s3.get_object(Bucket=s3_bucket, Key=USERS_KEY)["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    emails = users_table(DAY, ROWS).column("email").to_pylist()
    assert table.column("email").to_pylist() == [
        None if e is None else "****@" + e.split("@")[1].lower() for e in emails
    ]
    assert table.column("email__fc_ct").null_count == emails.count(None)


def test_protect_on_s3_leaves_no_temporary_objects(s3_workspace: Workspace, s3: Any, s3_bucket: str) -> None:
    s3_workspace.protect("users", DAY1)

    assert USERS_KEY in object_keys(s3, s3_bucket)
    assert temporary_objects(s3, s3_bucket) == []


def test_protect_rerun_on_s3_is_a_no_op(s3_workspace: Workspace, s3: Any, s3_bucket: str) -> None:
    s3_workspace.protect("users", DAY1)
    before = s3.head_object(Bucket=s3_bucket, Key=USERS_KEY)

    report = s3_workspace.protect("users", DAY1)

    after = s3.head_object(Bucket=s3_bucket, Key=USERS_KEY)
    assert not report.rewritten
    assert report.newly_encrypted == 0
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])


def test_failed_replace_on_s3_leaves_the_original_object_and_no_temporary_object(
    s3_workspace: Workspace, s3: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = s3.head_object(Bucket=s3_bucket, Key=USERS_KEY)["ETag"]
    real_replace = LakeStore.replace

    def failing_replace(store: LakeStore, temp_rel: str, rel: str, **kwargs: Any) -> None:
        # Injected fault: S3 refuses the CopyObject that publishes the partition.
        if rel.endswith(".parquet"):
            raise OSError("injected: CopyObject failed")
        real_replace(store, temp_rel, rel, **kwargs)

    monkeypatch.setattr(LakeStore, "replace", failing_replace)

    with pytest.raises(OSError, match="injected"):
        s3_workspace.protect("users", DAY1)

    assert s3.head_object(Bucket=s3_bucket, Key=USERS_KEY)["ETag"] == before
    assert temporary_objects(s3, s3_bucket) == []


def test_policy_and_key_binding_are_stored_in_the_bucket(s3_workspace: Workspace, s3: Any, s3_bucket: str) -> None:
    s3_workspace.protect("users", DAY1)

    policy = json.loads(s3.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/_fieldcrypt/policy.json")["Body"].read())
    binding = json.loads(s3.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/_fieldcrypt/master_key.json")["Body"].read())
    assert policy["workspace"] == WORKSPACE
    assert policy["attributes"]["users.email"]["mask"] == "email"
    assert binding["current"] == {
        "provider": "aws-kms",
        "key_id": s3_workspace.config.key.kms_key,
        "key_version": "",
    }


def test_audit_events_for_data_key_generate_and_unwrap_are_stored_in_the_bucket(
    s3_workspace: Workspace, s3: Any, s3_bucket: str
) -> None:
    s3_workspace.protect("users", DAY1)

    events = audit_events(s3, s3_bucket)
    key_uses = [e for e in events if e["operation"] in ("generate_data_key", "unwrap")]
    assert {e["operation"] for e in key_uses} == {"generate_data_key", "unwrap"}
    for event in key_uses:
        assert event["workspace"] == WORKSPACE
        assert event["actor"] == "run-42"
        assert (event["dataset"], event["attribute"], event["partition"]) == ("users", "email", DAY1)
        assert event["master_key"] == s3_workspace.config.key.kms_key
    assert {"describe_key", "bind_master_key", "enable", "encrypt"} <= {e["operation"] for e in events}


def test_audit_log_on_s3_reads_back_through_the_workspace(s3_workspace: Workspace, s3: Any, s3_bucket: str) -> None:
    s3_workspace.protect("users", DAY1)

    assert list(s3_workspace.audit.events()) == sorted(audit_events(s3, s3_bucket), key=lambda e: e["time"])
