"""No data key and no plaintext value reaches a log, even with DEBUG logging forced on.

botocore logs KMS response bodies (which carry the plaintext data key) at DEBUG.
fieldcrypt holds those loggers at INFO and filters their DEBUG records; here an
application lowers everything to DEBUG *after* that ran (root logger, and
`boto3.set_stream_logger('botocore', DEBUG)`), runs protect + reveal with aws-kms on
the moto server, and every captured line is scanned for the data keys KMS returned
(raw, base64, hex) and for the plaintext values. A sanity test shows the scan does
catch the key once the filter is taken away.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import pytest

from demo.sample_data import land_sample_lake, users_table
from fieldcrypt import KeyConfig, Workspace, WorkspaceConfig
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys.providers.aws_kms import AwsKmsProvider, kms_client
from fieldcrypt.keys.providers.base import EncryptionContext, KeyProvider
from fieldcrypt.log_safety import BODY_LOGGERS, silence_key_material_loggers
from tests.catalogs import TEST_DATASETS
from tests.conftest import WORKSPACE

# Ingestion times on this day are all after "now", so every row is encrypted on enablement.
DAY = date(2099, 1, 1)
DAY1 = "2099-01-01"
ROWS = 40
_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer")


@contextlib.contextmanager
def forced_debug_logging() -> Iterator[io.StringIO]:
    """Root and every AWS library logger at DEBUG, plus boto3's own stream logger, into one buffer."""
    buffer = io.StringIO()
    names = ["", "botocore", *BODY_LOGGERS]
    names += [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in _LIBRARIES]
    saved = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers)) for name in names}
    root_handler = logging.StreamHandler(buffer)
    root_handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(root_handler)
    boto3.set_stream_logger("botocore", logging.DEBUG)
    for handler in logging.getLogger("botocore").handlers:
        if handler not in saved["botocore"][1] and isinstance(handler, logging.StreamHandler):
            handler.setStream(buffer)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        for name, (level, handlers) in saved.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.handlers = handlers


def record_data_keys(provider: KeyProvider, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every plaintext data key the provider hands out (wrapping its methods; they still call KMS)."""
    seen: list[bytes] = []
    generate, unwrap = provider.generate_data_key, provider.unwrap

    def generate_recorded(context: EncryptionContext) -> tuple[bytes, WrappedKey]:
        dek, wrapped = generate(context)
        seen.append(dek)
        return dek, wrapped

    def unwrap_recorded(wrapped: WrappedKey, context: EncryptionContext) -> bytes:
        dek = unwrap(wrapped, context)
        seen.append(dek)
        return dek

    monkeypatch.setattr(provider, "generate_data_key", generate_recorded)
    monkeypatch.setattr(provider, "unwrap", unwrap_recorded)
    return seen


def key_forms(dek: bytes) -> list[str]:
    return [
        base64.b64encode(dek).decode(),
        base64.urlsafe_b64encode(dek).decode(),
        base64.b64encode(dek).decode().rstrip("="),
        dek.hex(),
        dek.hex().upper(),
        repr(dek)[2:-1],
        dek.decode("latin-1"),
    ]


def leaks(text: str, data_keys: list[bytes], plaintexts: list[str]) -> list[str]:
    """What of the secrets shows up in `text` (descriptions only, never the secret itself)."""
    found = [
        f"data key {i} as form {j}"
        for i, dek in enumerate(data_keys)
        for j, f in enumerate(key_forms(dek))
        if f in text
    ]
    found += [f"plaintext value {i}" for i, value in enumerate(plaintexts) if value in text]
    return found


@pytest.fixture
def kms_workspace(moto: str, tmp_path: Path, make_kms_key: Callable[..., str]) -> Workspace:
    key = KeyConfig(provider="aws-kms", kms_key=make_kms_key(), kms_region="us-east-1", kms_endpoint_url=moto)
    workspace = Workspace(WorkspaceConfig(WORKSPACE, str(tmp_path / "lake"), key, datasets=TEST_DATASETS), actor="test")
    land_sample_lake(workspace.store, DAY, 1, users=ROWS, events=ROWS)
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    workspace.enable("users.phone", "last4", acknowledge_irreversible=True)
    return workspace


def plaintext_values() -> list[str]:
    users = users_table(DAY, ROWS)
    return [v for column in ("email", "phone") for v in users.column(column).to_pylist() if v is not None]


def test_forced_debug_logging_shows_no_data_key_and_no_plaintext_during_protect_and_reveal(
    kms_workspace: Workspace, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = kms_workspace.key_cache()  # builds the KMS client: silence_key_material_loggers() has run
    data_keys = record_data_keys(cache.provider, monkeypatch)

    with forced_debug_logging() as stream:
        caplog.set_level(logging.DEBUG)
        kms_workspace.protect("users", DAY1)
        cache.clear()  # reveal goes back to KMS Decrypt
        revealed = [b.to_pylist() for b in kms_workspace.reveal("users", DAY1, ["users.email", "users.phone"])]

    captured = caplog.text + stream.getvalue()
    assert revealed and data_keys
    assert any(r.levelno == logging.DEBUG and r.name.startswith("botocore") for r in caplog.records), (
        "DEBUG logging was not actually on; the scan below would prove nothing"
    )
    assert leaks(captured, data_keys, plaintext_values()) == []


def test_lake_metadata_and_audit_log_hold_no_data_key_and_no_plaintext(
    kms_workspace: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data_keys = record_data_keys(kms_workspace.key_cache().provider, monkeypatch)
    kms_workspace.protect("users", DAY1)
    kms_workspace.verify("users", DAY1)

    stored = "".join(p.read_bytes().decode("latin-1") for p in (tmp_path / "lake" / "_fieldcrypt").rglob("*.json*"))

    assert "generate_data_key" in stored and data_keys
    assert leaks(stored, data_keys, plaintext_values()) == []


def test_without_the_filter_botocore_parsers_would_log_the_data_key(
    moto: str, make_kms_key: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    """Sanity check of the test above: its scan does catch a leak when the protection is off."""
    provider = AwsKmsProvider(make_kms_key(), WORKSPACE, kms_client("us-east-1", moto, "standard", 3))
    silence_key_material_loggers()
    parsers = logging.getLogger("botocore.parsers")
    filters = list(parsers.filters)
    try:
        parsers.filters = []
        with forced_debug_logging():
            caplog.set_level(logging.DEBUG)
            dek, _ = provider.generate_data_key(EncryptionContext(WORKSPACE, "users", "email"))
    finally:
        parsers.filters = filters

    leaked_by = [r for r in caplog.records if r.name == "botocore.parsers" and r.levelno == logging.DEBUG]
    assert leaked_by
    assert leaks(caplog.text, [dek], []) != []
    assert parsers.filters == filters


def test_filter_is_back_after_the_sanity_check(moto: str, make_kms_key: Callable[..., str], caplog: Any) -> None:
    provider = AwsKmsProvider(make_kms_key(), WORKSPACE, kms_client("us-east-1", moto, "standard", 3))

    with forced_debug_logging():
        caplog.set_level(logging.DEBUG)
        dek, _ = provider.generate_data_key(EncryptionContext(WORKSPACE, "users", "email"))

    assert not [r for r in caplog.records if r.name == "botocore.parsers" and r.levelno == logging.DEBUG]
    assert leaks(caplog.text, [dek], []) == []
