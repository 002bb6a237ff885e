"""docs/FORMAT.md is the contract: its standalone decryptor, which uses only pyarrow,
cryptography and boto3, must decrypt files that fieldcrypt wrote."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from demo.sample_data import land_sample_lake, snapshot_path
from fieldcrypt import KeyConfig, Workspace, WorkspaceConfig
from fieldcrypt.errors import IntegrityError
from fieldcrypt.keys.keystore import Keystore
from tests.catalogs import TEST_DATASETS
from tests.conftest import SAMPLE_DAY, WORKSPACE
from tests.policy_support import backdate_policy

FORMAT_DOC = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


def standalone_decryptor() -> dict[str, Any]:
    block = re.search(r"```python standalone-decrypt\n(.*?)```", FORMAT_DOC.read_text(), re.S)
    assert block, "FORMAT.md lost its standalone decryptor"
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), str(FORMAT_DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


def _original_and_protected(workspace: Workspace, attribute: str, mask: str) -> tuple[list[Any], str]:
    dataset = attribute.split(".")[0]
    rel = snapshot_path(dataset, SAMPLE_DAY.isoformat())
    original = pq.read_table(workspace.store.full_path(rel))
    workspace.enable(attribute, mask, acknowledge_irreversible=True)
    # Enablement is "now", after the sample's ingestion times: move it back so rows get protected.
    _backdate(workspace, attribute)
    report = workspace.protect(dataset, SAMPLE_DAY.isoformat())
    assert report.newly_encrypted > 0
    return original.column(attribute.split(".", 1)[1]).to_pylist(), workspace.store.full_path(rel)


def _backdate(workspace: Workspace, attribute: str) -> None:
    """Rewrite the policy so the attribute was enabled before the sample day (test setup only)."""
    backdate_policy(workspace)


def test_standalone_decryptor_reads_local_key_files(local_workspace: Workspace, keystore_path: Path) -> None:
    values, path = _original_and_protected(local_workspace, "users.email", "email")
    keystore = Keystore.load(keystore_path)
    decrypted = standalone_decryptor()["decrypt_column"](
        path,
        WORKSPACE,
        "users",
        "email",
        primary_key="user_id",
        local_master_keys={v: keystore.key_for(v) for v in keystore.versions},
    )
    assert decrypted
    assert all(values[row] == plain for row, plain in decrypted.items())


def test_standalone_decryptor_reads_aws_kms_files(tmp_path: Path, moto: str, make_kms_key: Callable[..., str]) -> None:
    key_arn = make_kms_key()
    config = WorkspaceConfig(
        WORKSPACE,
        str(tmp_path / "lake"),
        KeyConfig(provider="aws-kms", kms_key=key_arn, kms_endpoint_url=moto),
        datasets=TEST_DATASETS,
    )
    workspace = Workspace(config, actor="test")
    land_sample_lake(workspace.store, SAMPLE_DAY, 1, users=50, events=50)
    values, path = _original_and_protected(workspace, "users.phone", "last4")
    kms = boto3.client("kms", endpoint_url=moto, region_name="us-east-1")
    decrypted = standalone_decryptor()["decrypt_column"](
        path, WORKSPACE, "users", "phone", primary_key="user_id", kms=kms
    )
    assert decrypted
    assert all(values[row] == plain for row, plain in decrypted.items())


def test_standalone_decryptor_reads_padded_cells(local_workspace: Workspace, keystore_path: Path) -> None:
    rel = snapshot_path("users", SAMPLE_DAY.isoformat())
    original = pq.read_table(local_workspace.store.full_path(rel)).column("phone").to_pylist()
    local_workspace.enable("users.phone", "last4", acknowledge_irreversible=True, pad_to=16)
    backdate_policy(local_workspace)
    assert local_workspace.protect("users", SAMPLE_DAY.isoformat()).newly_encrypted > 0
    cells = pq.read_table(local_workspace.store.full_path(rel)).column("phone__fc_ct").drop_null().to_pylist()
    assert {cell[0] for cell in cells} == {2}
    keystore = Keystore.load(keystore_path)

    decrypted = standalone_decryptor()["decrypt_column"](
        local_workspace.store.full_path(rel),
        WORKSPACE,
        "users",
        "phone",
        primary_key="user_id",
        local_master_keys={v: keystore.key_for(v) for v in keystore.versions},
        pad_to=16,
    )

    assert decrypted and all(original[row] == value for row, value in decrypted.items())


def test_standalone_decryptor_refuses_a_format_1_cell_in_a_padded_attribute(
    local_workspace: Workspace, keystore_path: Path
) -> None:
    _, path = _original_and_protected(local_workspace, "users.email", "email")  # format-1 cells
    keystore = Keystore.load(keystore_path)
    keys = {v: keystore.key_for(v) for v in keystore.versions}
    decrypt = standalone_decryptor()["decrypt_column"]
    with pytest.raises(ValueError, match="cell format version 1 in an attribute with pad_to 16"):
        decrypt(path, WORKSPACE, "users", "email", primary_key="user_id", local_master_keys=keys, pad_to=16)


def _with_nonzero_padding(path: str, keys: dict[int, bytes]) -> int:
    """Re-encrypt the first padded phone cell of the file with a 0x01 padding byte, under its own data key
    and associated data (fault injection: fieldcrypt never writes such a cell); returns its row."""
    doc = standalone_decryptor()
    table = pq.read_table(path)
    cells = table.column("phone__fc_ct").to_pylist()
    row = next(i for i, cell in enumerate(cells) if cell is not None)
    wrapped = table.column("phone__fc_dek").to_pylist()[row]
    dek = AESGCM(doc["unwrap"](wrapped, WORKSPACE, "users", "phone", keys))
    ad = b"\x02" + doc["cell_ad"]("users", "phone", table.column("user_id")[row].as_py())[1:]
    padded = bytearray(dek.decrypt(cells[row][1:13], cells[row][13:], ad))
    padded[-1] = 1
    cells[row] = cells[row][:13] + dek.encrypt(cells[row][1:13], bytes(padded), ad)
    index = table.schema.get_field_index("phone__fc_ct")
    table = table.set_column(index, table.schema.field(index), pa.array(cells, pa.binary()))
    pq.write_table(table.replace_schema_metadata(table.schema.metadata), path)
    return row


def test_padded_cell_with_nonzero_padding_is_refused_by_the_standalone_decryptor_and_by_verify(
    local_workspace: Workspace, keystore_path: Path
) -> None:
    local_workspace.enable("users.phone", "last4", acknowledge_irreversible=True, pad_to=16)
    backdate_policy(local_workspace)
    local_workspace.protect("users", SAMPLE_DAY.isoformat())
    path = local_workspace.store.full_path(snapshot_path("users", SAMPLE_DAY.isoformat()))
    keystore = Keystore.load(keystore_path)
    keys = {v: keystore.key_for(v) for v in keystore.versions}
    row = _with_nonzero_padding(path, keys)
    decrypt = standalone_decryptor()["decrypt_column"]
    with pytest.raises(ValueError, match=f"row {row}: padded cell with a length or padding"):
        decrypt(path, WORKSPACE, "users", "phone", primary_key="user_id", local_master_keys=keys, pad_to=16)
    with pytest.raises(IntegrityError, match="padding is not all zero bytes"):
        local_workspace.verify("users", SAMPLE_DAY.isoformat())
