"""The whole pipeline on an `s3://` lake with the aws-kms provider, against moto's server on loopback.

Resources come from the environment exactly as in production (`resources_from_env`):
FIELDCRYPT_KEY_PROVIDER=aws-kms, the key ARN, endpoints and region through `dg.EnvVar`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster_support import checks, land, materialize_partition, metadata, past_day, shift_to_straddle_now

from fieldcrypt.lake import partition_path
from resources import FieldcryptResource, KeyProviderResource, LakeResource, resources_from_env

DAY = past_day(3)


@pytest.fixture
def s3_kms_fieldcrypt(
    moto: str, make_kms_key: Callable[..., str], s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> FieldcryptResource:
    for name, value in {
        "FIELDCRYPT_WORKSPACE": "acme",
        "FIELDCRYPT_LAKE": f"s3://{s3_bucket}/lake",
        "FIELDCRYPT_S3_ENDPOINT_URL": moto,
        "FIELDCRYPT_KEY_PROVIDER": "aws-kms",
        "FIELDCRYPT_KMS_KEY": make_kms_key(),
        "FIELDCRYPT_KMS_ENDPOINT_URL": moto,
        "FIELDCRYPT_KMS_MAX_ATTEMPTS": "2",
    }.items():
        monkeypatch.setenv(name, value)
    resource: FieldcryptResource = resources_from_env()["fieldcrypt"]
    return resource


def test_pipeline_protects_an_s3_lake_under_a_kms_key(s3_kms_fieldcrypt: FieldcryptResource) -> None:
    from pipelines.jobs import enable_attribute

    fieldcrypt = s3_kms_fieldcrypt
    key_arn = os.environ["FIELDCRYPT_KMS_KEY"]
    land(_plain(), DAY, shift_to_straddle_now(DAY))
    instance = dg.DagsterInstance.ephemeral()
    for dataset, attribute in (("users", "email"), ("events", "properties.email")):
        config = {"dataset": dataset, "attribute": attribute, "mask": "email", "acknowledge_irreversible": True}
        enable_attribute.execute_in_process(
            run_config={"ops": {"record_enablement": {"config": config}}},
            resources={"fieldcrypt": fieldcrypt},
            instance=instance,
        )

    result = materialize_partition(fieldcrypt, DAY.isoformat(), instance=instance)

    assert result.success
    for asset in ("protected_users", "protected_events"):
        values = metadata(result, asset)
        assert values["master_key_id"] == key_arn
        assert values["rewritten"] is True and values["newly_encrypted"] > 0
        assert values["kms_calls"] >= 1
        assert all(e.passed for e in checks(result, asset).values())
    workspace = _plain().workspace("test")
    with workspace.store.open_input(partition_path("users", DAY.isoformat())) as handle:
        users = pq.read_table(handle)
    protected = users.filter(pc.is_valid(users["email__fc_ct"]))
    assert protected.num_rows > 0
    assert pc.all(pc.starts_with(protected["email"], "****@")).as_py()
    operations = {event["operation"] for event in workspace.audit.events()}
    assert {"enable", "describe_key", "encrypt"} <= operations


def _plain() -> FieldcryptResource:
    """The same resource with plain values, read from the environment, for setting up and reading back."""
    return FieldcryptResource(
        workspace_name="acme",
        lake=LakeResource(uri=os.environ["FIELDCRYPT_LAKE"], s3_endpoint_url=os.environ["FIELDCRYPT_S3_ENDPOINT_URL"]),
        key=KeyProviderResource(
            provider="aws-kms",
            kms_key_arn=os.environ["FIELDCRYPT_KMS_KEY"],
            kms_endpoint_url=os.environ["FIELDCRYPT_KMS_ENDPOINT_URL"],
        ),
    )
