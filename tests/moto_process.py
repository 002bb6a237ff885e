"""A moto server (S3) in a process of its own, for the table tests on `s3://` lakes, and a download of what it stores.

tests/conftest.py's `moto` runs its server in a thread of the test's process; delta-rs holds the GIL through
some calls (`alter.set_table_properties`), so such a server could never answer it. A test module takes these
fixtures in place of conftest's by importing them (`from tests.moto_process import moto as moto`, and
`moto_process`): the module-scoped server is then started once per such module.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pytest

BUCKET = "delta-lake-bucket"
AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


@pytest.fixture(scope="module")
def moto_process() -> Iterator[str]:
    """A moto server (S3) in a child process on a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"the moto server exited with {server.returncode}") from None
                time.sleep(0.05)
        else:
            raise RuntimeError("the moto server did not answer within 10 s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def moto(moto_process: str) -> Iterator[str]:
    """The child moto server, reset, with the test credentials in the environment (delta-rs reads them there;
    a patch of its own, so a test's `monkeypatch.undo()` keeps them)."""
    with pytest.MonkeyPatch.context() as environment:
        for name, value in AWS_ENVIRONMENT.items():
            environment.setenv(name, value)
        request = urllib.request.Request(f"{moto_process}/moto-api/reset", method="POST", data=b"")
        urllib.request.urlopen(request, timeout=10).close()
        boto3.client("s3", endpoint_url=moto_process, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield moto_process


def download(moto: str, bucket: str, prefix: str, into: Path) -> Path:
    """Every object under `prefix` (data files, `_delta_log` JSON and checkpoints, pyarrow's empty directory
    markers), as stored, into one folder: each under its key with `/` quoted, since a marker's key is also a
    prefix of other keys."""
    s3: Any = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    into.mkdir()
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            (into / quote(item["Key"], safe="")).write_bytes(body)
            count += 1
    assert count, f"no object under s3://{bucket}/{prefix}"
    return into
