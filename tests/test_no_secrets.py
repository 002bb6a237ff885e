"""No plaintext of a protected row, no data key and no master key in logs, output, audit or lake files.

A full run (enable, protect, reveal, verify, CLI status/verify/audit, one tampered file)
happens with every logger at DEBUG and stdout/stderr captured; then everything it left
behind is scanned. Parquet files are scanned both as raw bytes and decoded value by value
(they are compressed, so plaintext would not show in their raw bytes). The keystore file
itself is skipped: holding the master key is its purpose.
"""

from __future__ import annotations

import base64
import logging
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path
from fieldcrypt import IntegrityError, Workspace
from fieldcrypt.cli import run
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys.keystore import Keystore
from fieldcrypt.keys.providers.base import EncryptionContext
from fieldcrypt.keys.providers.local import LocalKeyProvider
from tests.catalogs import write_catalog

PARTITION = "2026-11-01"
ATTRIBUTES = {
    "users": [("email", "email"), ("phone", "last4")],
    "events": [("properties.email", "email"), ("properties.phone", "last4")],
}


def key_forms(key: bytes) -> list[bytes]:
    """The ways a key could leak: raw, hex (both cases), base64 (standard, URL-safe, unpadded)."""
    b64 = base64.b64encode(key)
    return [
        key,
        key.hex().encode(),
        key.hex().upper().encode(),
        b64,
        b64.rstrip(b"="),
        base64.urlsafe_b64encode(key).rstrip(b"="),
        repr(key).encode(),
    ]


def attribute_values(table: pa.Table, path: str) -> pa.ChunkedArray:
    names = path.split(".")
    column = table.column(names[0])
    for name in names[1:]:
        column = pc.struct_field(column, name)
    return column


def flatten(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from flatten(item)
    elif isinstance(value, list):
        for item in value:
            yield from flatten(item)
    elif value is not None:
        yield value


def decoded_parquet(path: Path) -> tuple[str, bytes]:
    """All text and all binary values of a Parquet file (metadata included)."""
    try:
        parquet = pq.ParquetFile(path)
        table = parquet.read()
    except (pa.ArrowInvalid, OSError):
        return "", b""
    texts, blobs = [str(parquet.schema_arrow.metadata)], []
    for column in table.columns:
        for value in flatten(column.to_pylist()):
            (blobs if isinstance(value, bytes) else texts).append(value if isinstance(value, bytes) else str(value))
    return "\n".join(texts), b"\n".join(blobs)


class Leaks:
    def __init__(self, plaintext: set[str], keys: list[bytes]) -> None:
        self.plaintext = plaintext
        self.keys = keys

    def in_text(self, text: str, where: str) -> list[str]:
        found = [f"plaintext value in {where}" for value in self.plaintext if value in text]
        found += [
            f"key bytes in {where}" for key in self.keys for form in key_forms(key) if form.decode("latin-1") in text
        ]
        return found

    def in_bytes(self, data: bytes, where: str) -> list[str]:
        found = [f"plaintext value in {where}" for value in self.plaintext if value.encode() in data]
        found += [f"key bytes in {where}" for key in self.keys for form in key_forms(key) if form in data]
        return found

    def in_tree(self, root: Path, skip: set[Path]) -> list[str]:
        found: list[str] = []
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p not in skip):
            found += self.in_bytes(path.read_bytes(), str(path))
            text, blobs = decoded_parquet(path) if "parquet" in path.name else ("", b"")
            found += self.in_text(text, f"decoded values of {path}")
            found += self.in_bytes(blobs, f"decoded binary values of {path}")
        return found


@pytest.fixture
def recorded_data_keys(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every plaintext data key the local provider hands out (wrapping the real methods to record)."""
    keys: list[bytes] = []
    real_generate, real_unwrap = LocalKeyProvider.generate_data_key, LocalKeyProvider.unwrap

    def generate_data_key(self: LocalKeyProvider, context: EncryptionContext) -> tuple[bytes, WrappedKey]:
        dek, wrapped = real_generate(self, context)
        keys.append(dek)
        return dek, wrapped

    def unwrap(self: LocalKeyProvider, wrapped: WrappedKey, context: EncryptionContext) -> bytes:
        dek = real_unwrap(self, wrapped, context)
        keys.append(dek)
        return dek

    monkeypatch.setattr(LocalKeyProvider, "generate_data_key", generate_data_key)
    monkeypatch.setattr(LocalKeyProvider, "unwrap", unwrap)
    return keys


def test_full_run_leaves_no_plaintext_and_no_key_bytes_anywhere(
    local_workspace: Workspace,
    enable_at: Callable[..., Any],
    keystore_path: Path,
    tmp_path: Path,
    recorded_data_keys: list[bytes],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    master_key = Keystore.load(keystore_path).key_for(1)
    originals = {
        dataset: pq.read_table(local_workspace.store.full_path(snapshot_path(dataset, PARTITION)))
        for dataset in ATTRIBUTES
    }
    for dataset, attributes in ATTRIBUTES.items():
        for path, mask in attributes:
            enable_at(local_workspace, f"{dataset}.{path}", mask)

    # plaintext of the rows that get protected (minus values that also sit in historical rows)
    protected_values: set[str] = set()
    historical_values: set[str] = set()
    for dataset, attributes in ATTRIBUTES.items():
        local_workspace.protect(dataset, PARTITION)
        stored = pq.read_table(local_workspace.store.full_path(snapshot_path(dataset, PARTITION)))
        for path, _ in attributes:
            encrypted = stored.column(f"{path.replace('.', '__')}__fc_ct").is_valid()
            values = attribute_values(originals[dataset], path)
            protected_values |= {v for v in values.filter(encrypted).to_pylist() if v}
            historical_values |= {v for v in values.filter(pc.invert(encrypted)).to_pylist() if v}
    secrets = protected_values - historical_values
    assert len(secrets) > 300

    for dataset, attributes in ATTRIBUTES.items():
        revealed = pa.Table.from_batches(list(local_workspace.reveal(dataset, PARTITION, [p for p, _ in attributes])))
        assert secrets & {v for c in revealed.columns for v in c.to_pylist() if isinstance(v, str)}
        local_workspace.verify(dataset, PARTITION)
    key = {"provider": "local", "keystore": str(keystore_path)}
    catalog = write_catalog(tmp_path / "fieldcrypt.yaml", "acme", local_workspace.config.lake_uri, key)
    cli = ["--catalog", str(catalog)]
    for command in ("status", "verify", "protect"):
        for dataset in ATTRIBUTES:
            assert run([*cli, command, dataset]) == 0
    assert run([*cli, "audit"]) == 0
    assert run([*cli, "key", "describe"]) == 0

    # one tampered file: a ciphertext moved to another row
    rel = snapshot_path("users", PARTITION)
    table = pq.read_table(local_workspace.store.full_path(rel))
    cells = table.column("email__fc_ct").to_pylist()
    protected_rows = [i for i, cell in enumerate(cells) if cell is not None]
    cells[protected_rows[1]] = cells[protected_rows[0]]
    table = table.set_column(table.schema.get_field_index("email__fc_ct"), "email__fc_ct", pa.array(cells, pa.binary()))
    pq.write_table(table, local_workspace.store.full_path(rel))
    with pytest.raises(IntegrityError) as tampered:
        local_workspace.verify("users", PARTITION)
    failure = "".join(traceback.format_exception(tampered.value)) + repr(tampered.value)

    output = capsys.readouterr()
    data_keys = list(dict.fromkeys(recorded_data_keys))
    assert len(data_keys) >= 4  # one per attribute at least
    leaks = Leaks(secrets, [master_key, *data_keys])
    found = leaks.in_text("\n".join(r.getMessage() for r in caplog.records), "log messages")
    found += leaks.in_text(caplog.text, "formatted log output")
    found += leaks.in_text(output.out, "stdout") + leaks.in_text(output.err, "stderr")
    found += leaks.in_text(failure, "the integrity error and its traceback")
    found += leaks.in_tree(tmp_path, skip={keystore_path})
    assert not found, sorted(set(found))[:20]  # names where, never what

    # the scan sees what it looks for: the master key in the keystore, historical plaintext in the lake
    assert Leaks(set(), [master_key]).in_bytes(keystore_path.read_bytes(), "keystore")
    assert Leaks(set(list(historical_values)[:1]), []).in_tree(tmp_path / "lake", set())


def test_scan_finds_plaintext_in_an_unprotected_snapshot(local_workspace: Workspace) -> None:
    """The decoded-Parquet scan sees values that raw bytes of a compressed file would hide."""
    table = pq.read_table(local_workspace.store.full_path(snapshot_path("users", PARTITION)))
    emails = {e for e in table.column("email").to_pylist() if e}
    found = Leaks(emails, []).in_tree(Path(local_workspace.store.full_path("users")), set())
    assert any(f.startswith("plaintext value in decoded values of") for f in found)


def test_keystore_is_the_only_file_holding_the_master_key(
    local_workspace: Workspace, enable_at: Callable[..., Any], keystore_path: Path, tmp_path: Path
) -> None:
    enable_at(local_workspace, "users.email", "email")
    local_workspace.protect("users", PARTITION)
    master_key = Keystore.load(keystore_path).key_for(1)
    holders = {f.split(" in ", 1)[1] for f in Leaks(set(), [master_key]).in_tree(tmp_path, set())}
    assert holders == {str(keystore_path)}


def test_workspace_and_report_reprs_hold_no_key_bytes(
    local_workspace: Workspace, enable_at: Callable[..., Any], keystore_path: Path, recorded_data_keys: list[bytes]
) -> None:
    enable_at(local_workspace, "users.email", "email")
    report = local_workspace.protect("users", PARTITION)
    cache = local_workspace.key_cache()
    shown = "\n".join([repr(local_workspace), repr(cache), repr(cache.provider), repr(report)])
    keys = [Keystore.load(keystore_path).key_for(1), *recorded_data_keys]
    assert recorded_data_keys
    assert not Leaks(set(), keys).in_text(shown, "reprs")
