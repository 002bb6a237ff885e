"""Runs that cover a range of partitions (assets/ranged.py): per-partition results, failures and settings.

A ranged run is launched in process with the range tags a backfill's run carries
(`dagster/asset_partition_range_start`/`_end`); the GraphQL-launched backfill that makes
such runs is in test_dagster_backfill.py.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster._core.test_utils import instance_for_test
from dagster_support import (
    asset_key,
    enable,
    fresh_code_location_import,
    land,
    local_fieldcrypt,
    make_keystore,
    node,
    past_day,
)

from demo.sample_data import snapshot_path
from fieldcrypt import ConfigError
from resources import FieldcryptResource

DAYS = [past_day(5), past_day(4), past_day(3)]
PARTITIONS = [day.isoformat() for day in DAYS]
BAD = PARTITIONS[1]


@pytest.fixture
def fieldcrypt(tmp_path: Path) -> FieldcryptResource:
    """Three days landed after enablement; the middle day's users.email drifted to integers (bad input)."""
    fieldcrypt = local_fieldcrypt(tmp_path / "lake", make_keystore(tmp_path))
    enable(fieldcrypt, ("users.email", "email"))
    for day in DAYS:
        # Moved to tomorrow: every row is ingested after the enablement, whatever the time of day the test runs.
        land(fieldcrypt, day, past_day(-1) - day, users=50, events=50)
    path = tmp_path / "lake" / snapshot_path("users", BAD)
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("email"), "email", pa.array(range(len(table)))), path)
    return fieldcrypt


def protect_range(fieldcrypt: FieldcryptResource, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    from assets import build_assets

    return dg.materialize(
        [build_assets(fieldcrypt.config()).protected["users"]],
        tags={
            "dagster/asset_partition_range_start": PARTITIONS[0],
            "dagster/asset_partition_range_end": PARTITIONS[-1],
        },
        resources=fieldcrypt.as_resources(),
        instance=instance,
        raise_on_error=False,
    )


def test_ranged_run_fails_naming_the_failed_partition_and_what_to_rerun(fieldcrypt: FieldcryptResource) -> None:
    result = protect_range(fieldcrypt, dg.DagsterInstance.ephemeral())

    assert not result.success
    failure = result.failure_data_for_node(node("protected_users"))
    assert failure is not None and failure.error is not None and failure.user_failure_data is not None
    assert "1 of 3 partitions of users failed (the other partitions are done)" in failure.error.message
    assert f"protecting users partition {BAD} failed: InputError" in failure.error.message
    assert "missing and failed" in failure.error.message
    assert failure.user_failure_data.metadata["failed_partitions"].value == [BAD]


def test_ranged_run_materializes_each_partition_done_and_not_the_failed_one(fieldcrypt: FieldcryptResource) -> None:
    instance = dg.DagsterInstance.ephemeral()

    protect_range(fieldcrypt, instance)

    assert instance.get_materialized_partitions(asset_key("protected_users")) == {PARTITIONS[0], PARTITIONS[2]}
    workspace = fieldcrypt.workspace("test")
    for partition in (PARTITIONS[0], PARTITIONS[2]):
        assert workspace.status("users", partition).attributes["users.email"].pending == 0


def test_ranged_run_shows_the_failed_partition_as_failed_and_the_others_as_materialized(
    fieldcrypt: FieldcryptResource,
) -> None:
    from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

    from assets import build_assets

    partitions_def = build_assets(fieldcrypt.config()).protected["users"].partitions_def
    assert partitions_def is not None
    with instance_for_test() as instance:  # a sqlite instance: the partition status cache the UI reads
        protect_range(fieldcrypt, instance)
        status = get_and_update_asset_status_cache_value(instance, asset_key("protected_users"), partitions_def)

    assert status is not None
    materialized = status.deserialize_materialized_partition_subsets(partitions_def).get_partition_keys()
    failed = status.deserialize_failed_partition_subsets(partitions_def).get_partition_keys()
    assert (sorted(materialized), list(failed)) == ([PARTITIONS[0], PARTITIONS[2]], [BAD])


def test_ranged_run_leaves_the_failed_partitions_file_untouched(fieldcrypt: FieldcryptResource, tmp_path: Path) -> None:
    path = tmp_path / "lake" / snapshot_path("users", BAD)
    stored = path.read_bytes()

    protect_range(fieldcrypt, dg.DagsterInstance.ephemeral())

    assert path.read_bytes() == stored


def test_partitions_per_run_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDCRYPT_MAX_PARTITIONS_PER_RUN", "7")
    with fresh_code_location_import():
        from pipelines.definitions import defs

        for name in ("protected_users", "rotated_users_keys"):
            asset = defs.resolve_assets_def(dg.AssetKey(["demo", name]))
            assert asset.backfill_policy == dg.BackfillPolicy.multi_run(7)


@pytest.mark.parametrize("value", ["0", "-3", "two", "٣"])
def test_partitions_per_run_that_is_not_a_positive_number_is_a_named_config_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from assets.ranged import max_partitions_per_run

    monkeypatch.setenv("FIELDCRYPT_MAX_PARTITIONS_PER_RUN", value)

    with pytest.raises(ConfigError, match="FIELDCRYPT_MAX_PARTITIONS_PER_RUN"):
        max_partitions_per_run()


def test_a_ranged_run_unwraps_each_key_once_not_once_per_partition(tmp_path: Path) -> None:
    """The run's partitions share its workspace (one data-key cache): the policy MAC key is unwrapped once
    for the protection and once for the checks' own cache, however many partitions the run covers, and the
    data key is generated and unwrapped once per run, not per partition (KMS calls follow distinct keys)."""
    fieldcrypt = local_fieldcrypt(tmp_path / "lake", make_keystore(tmp_path))
    enable(fieldcrypt, ("users.email", "email"))
    for day in DAYS:
        land(fieldcrypt, day, past_day(-1) - day, users=50, events=50)  # all after the enablement (tomorrow)
    audit_before = len(list(fieldcrypt.workspace("count").audit.events()))

    result = protect_range(fieldcrypt, dg.DagsterInstance.ephemeral())

    assert result.success
    events = list(fieldcrypt.workspace("count").audit.events())[audit_before:]
    policy_unwraps = [e for e in events if e["operation"] == "unwrap_policy_key"]
    generated = [e for e in events if e["operation"] == "generate_data_key"]
    data_unwraps = [e for e in events if e["operation"] == "unwrap" and e.get("dataset") == "users"]
    assert len(policy_unwraps) == 2  # the protecting workspace and the checking one, for three partitions
    assert len(generated) == 1  # one data key serves the run's three partitions (well under its cell budget)
    # unwrapped twice in all, not per partition: by the rewrite's verification (the wrapped key must open before
    # the replace) and by the checks' own cache
    assert len(data_unwraps) == 2 * len(generated)
