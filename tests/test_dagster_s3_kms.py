"""The whole pipeline on an `s3://` lake with the aws-kms provider, against moto's server on loopback.

The workspace is declared in a catalog file as in production, here with an aws-kms key on moto.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster_support import (
    checks,
    kms_fieldcrypt,
    land,
    materialize_partition,
    metadata,
    node,
    past_day,
    shift_to_straddle_now,
)

from demo.sample_data import snapshot_path
from resources import FieldcryptResource

DAY = past_day(3)


@pytest.fixture
def s3_kms_fieldcrypt(
    tmp_path: Path, moto: str, make_kms_key: Callable[..., str], s3_bucket: str
) -> FieldcryptResource:
    return kms_fieldcrypt(tmp_path, f"s3://{s3_bucket}/lake", make_kms_key(), moto)


def test_pipeline_protects_an_s3_lake_under_a_kms_key(s3_kms_fieldcrypt: FieldcryptResource) -> None:
    from assets import build_assets
    from pipelines.jobs import enable_attribute_job

    fieldcrypt = s3_kms_fieldcrypt
    enable_attribute = enable_attribute_job(build_assets(fieldcrypt.config()))
    key_arn = fieldcrypt.config().key.kms_key
    land(fieldcrypt, DAY, shift_to_straddle_now(DAY))
    instance = dg.DagsterInstance.ephemeral()
    for dataset, attribute in (("users", "email"), ("events", "properties.email")):
        config = {"dataset": dataset, "attribute": attribute, "mask": "email", "acknowledge_irreversible": True}
        enable_attribute.execute_in_process(
            run_config={"ops": {node("record_enablement"): {"config": config}}},
            resources=fieldcrypt.as_resources(),
            instance=instance,
        )

    result = materialize_partition(fieldcrypt, DAY.isoformat(), instance=instance)

    assert result.success
    for asset in ("protected_users", "protected_events"):
        values = metadata(result, asset)
        assert values["master_key_id"] == key_arn
        assert values["rewritten"] is True and values["newly_encrypted"] > 0
        assert values["kms_calls"] >= 1
        # users.phone and events.properties.phone hold phone numbers nobody enabled: no_undeclared_pii warns
        assert all(e.passed or e.severity == dg.AssetCheckSeverity.WARN for e in checks(result, asset).values())
    workspace = fieldcrypt.workspace("test")
    with workspace.store.open_input(snapshot_path("users", DAY.isoformat())) as handle:
        users = pq.read_table(handle)
    protected = users.filter(pc.is_valid(users["email__fc_ct"]))
    assert protected.num_rows > 0
    assert pc.all(pc.starts_with(protected["email"], "****@")).as_py()
    operations = {event["operation"] for event in workspace.audit.events()}
    assert {"enable", "describe_key", "encrypt"} <= operations
