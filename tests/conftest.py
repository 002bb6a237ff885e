"""Shared fixtures: a local workspace on a temp lake, and a real moto server on loopback.

The moto server (S3 + KMS over HTTP) is started once per session in-process with
ThreadedMotoServer on 127.0.0.1 and a free port; its state is reset before each test
that uses it.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from demo.sample_data import land_sample_lake
from fieldcrypt import KeyConfig, Workspace, WorkspaceConfig
from fieldcrypt.keys.keystore import Keystore
from tests.catalogs import TEST_DATASETS
from tests.faults import KmsFaults

SAMPLE_DAY = date(2026, 11, 1)
NOON = datetime(2026, 11, 1, 12, tzinfo=UTC)
WORKSPACE = "acme"


@pytest.fixture
def keystore_path(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "keystore.json"
    Keystore.create(path, WORKSPACE)
    return path


@pytest.fixture
def make_local_workspace(tmp_path: Path, keystore_path: Path) -> Callable[..., Workspace]:
    def make(lake: str | None = None, actor: str = "test", **config: Any) -> Workspace:
        key = KeyConfig(provider="local", keystore_path=str(keystore_path))
        config.setdefault("datasets", TEST_DATASETS)
        return Workspace(WorkspaceConfig(WORKSPACE, lake or str(tmp_path / "lake"), key, **config), actor=actor)

    return make


@pytest.fixture
def local_workspace(make_local_workspace: Callable[..., Workspace]) -> Workspace:
    """A local workspace whose lake holds one day of sample users (300) and events (600)."""
    workspace = make_local_workspace()
    land_sample_lake(workspace.store, SAMPLE_DAY, 1, users=300, events=600)
    return workspace


# -- moto server (S3 + KMS) --------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    patch = pytest.MonkeyPatch()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        patch.setenv(name, value)
    yield url
    patch.undo()
    server.stop()


@pytest.fixture
def moto(moto_endpoint: str) -> str:
    """The moto endpoint, with all S3 and KMS state reset."""
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST", data=b"")
    urllib.request.urlopen(request, timeout=10).close()
    return moto_endpoint


@pytest.fixture
def kms(moto: str) -> Any:
    return boto3.client("kms", endpoint_url=moto, region_name="us-east-1")


@pytest.fixture
def make_kms_key(kms: Any) -> Callable[..., str]:
    """Create a KMS key on moto; returns its ARN. moto omits KeyUsage unless given, so pass it."""

    def make(**kwargs: Any) -> str:
        params = {"KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "ENCRYPT_DECRYPT", **kwargs}
        arn: str = kms.create_key(**params)["KeyMetadata"]["Arn"]
        return arn

    return make


@pytest.fixture
def s3_bucket(moto: str) -> str:
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    s3.create_bucket(Bucket="lake-bucket")
    return "lake-bucket"


# -- core library helpers (local provider) -----------------------------------------------


@pytest.fixture
def enable_at() -> Callable[..., Any]:
    """Enable an attribute with a chosen enablement time, through the policy API.

    `Workspace.enable` always stamps "now"; tests of the enablement boundary need a fixed
    moment, so this builds the same policy with `Policy.with_enabled(now=...)` and saves it
    through the same irreversibility check. A `spec` for a dataset the test made up is
    declared in the workspace's catalog too, as the catalog would declare it.
    """
    from dataclasses import replace

    from fieldcrypt.policy.policy import DatasetSpec
    from tests.catalogs import declared

    def enable(
        workspace: Workspace, attribute: str, mask: str, at: datetime = NOON, spec: DatasetSpec | None = None
    ) -> Any:
        policy = workspace.policy()
        dataset = attribute.partition(".")[0]
        known = workspace.config.datasets.get(dataset)
        if spec is not None and (known is None or known.spec != spec):
            layout = declared(spec.name, spec.ingested_at, spec.primary_key)
            workspace.config = replace(workspace.config, datasets={**workspace.config.datasets, dataset: layout})
        if dataset not in policy.datasets:
            policy = policy.with_dataset(spec or workspace.layout(dataset).spec)
        policy = policy.with_enabled(attribute, mask, enabled_by="test", now=at)
        workspace.policies.save(policy)
        return policy.attributes[attribute]

    return enable


@pytest.fixture
def kms_faults(moto: str) -> Iterator[KmsFaults]:
    """Fault injection on every KMS client fieldcrypt builds (they come from boto3's default session)."""
    boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None
    events = boto3.DEFAULT_SESSION.events
    faults = KmsFaults()
    faults.install(events)
    yield faults
    faults.uninstall(events)
    boto3.DEFAULT_SESSION = None
