"""The protection assets, run by Dagster per partition key on an ephemeral instance with local resources."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster._serdes import serialize_value
from dagster_support import (
    asset_key,
    blocking_checks_passed,
    checks,
    enable,
    land,
    local_fieldcrypt,
    make_keystore,
    materialize_partition,
    metadata,
    node,
    past_day,
    shift_to_straddle_now,
)

from demo.sample_data import snapshot_path
from fieldcrypt.keys.keystore import Keystore
from resources import FieldcryptResource

DAY = past_day(3)
PARTITION = DAY.isoformat()
CHECK_NAMES = {"no_plaintext_after_enablement", "data_keys_unwrap", "row_count_preserved", "no_undeclared_pii"}


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def fieldcrypt(tmp_path: Path, lake: Path) -> FieldcryptResource:
    return local_fieldcrypt(lake, make_keystore(tmp_path))


@pytest.fixture
def split_partition(fieldcrypt: FieldcryptResource) -> str:
    """One day of users and events whose ingestion times straddle now, with users.email,
    users.phone and events.properties.email enabled now: half the rows predate enablement."""
    land(fieldcrypt, DAY, shift_to_straddle_now(DAY))
    enable(fieldcrypt, ("users.email", "email"), ("users.phone", "last4"), ("events.properties.email", "email"))
    return PARTITION


def _file(lake: Path, dataset: str, partition: str = PARTITION) -> Path:
    return lake / snapshot_path(dataset, partition)


def test_partition_materializes_with_counts_ids_and_passing_checks(
    fieldcrypt: FieldcryptResource, split_partition: str
) -> None:
    result = materialize_partition(fieldcrypt, split_partition)

    assert result.success
    users = metadata(result, "protected_users")
    assert users["partition"] == split_partition
    assert users["rows"] == 200
    assert users["rewritten"] is True
    for attribute in ("email", "phone"):
        assert users[f"newly_encrypted.{attribute}"] > 0
        assert users[f"historical_plaintext.{attribute}"] > 0
        assert users[f"already_protected.{attribute}"] == 0
    assert users["newly_encrypted"] == users["newly_encrypted.email"] + users["newly_encrypted.phone"]
    keystore = Keystore.load(Path(fieldcrypt.config().key.keystore_path or ""))
    assert users["master_key_id"] == f"{keystore.key_id}#1"
    assert users["kms_calls"] >= 2  # a data key per attribute, at least
    assert users["duration_s"] > 0
    events = metadata(result, "protected_events")
    assert events["rows"] == 400
    assert events["newly_encrypted.properties.email"] > 0
    for asset in ("protected_users", "protected_events"):
        evaluations = checks(result, asset)
        assert set(evaluations) == CHECK_NAMES
        for evaluation in evaluations.values():
            # events.properties.phone holds phone numbers and is not enabled: a warning (tests/test_discovery.py)
            assert evaluation.passed or (asset, evaluation.check_name) == ("protected_events", "no_undeclared_pii")
            assert evaluation.metadata["partition"].value == split_partition


def test_enablement_in_the_middle_of_a_partition_encrypts_only_later_rows(
    fieldcrypt: FieldcryptResource, lake: Path, split_partition: str
) -> None:
    before = pq.read_table(_file(lake, "users"))
    enabled_at = fieldcrypt.workspace("test").policy().attributes["users.email"].enabled_at

    result = materialize_partition(fieldcrypt, split_partition)

    after = pq.read_table(_file(lake, "users"))
    later = pc.greater_equal(before["ingested_at"], pa.scalar(enabled_at, before.schema.field("ingested_at").type))
    has_email = pc.is_valid(before["email"])
    encrypted = pc.and_(later, has_email)
    assert pc.all(pc.is_valid(after.filter(encrypted)["email__fc_ct"])).as_py()
    assert pc.all(pc.starts_with(after.filter(encrypted)["email"], "****@")).as_py()
    earlier = pc.invert(later)
    assert after.filter(earlier)["email"].equals(before.filter(earlier)["email"])
    assert after.filter(earlier)["email__fc_ct"].null_count == after.filter(earlier).num_rows
    users = metadata(result, "protected_users")
    assert users["newly_encrypted.email"] == pc.sum(encrypted.cast(pa.int64())).as_py()
    assert users["historical_plaintext.email"] == pc.sum(pc.and_(earlier, has_email).cast(pa.int64())).as_py()


def test_rerun_of_a_protected_partition_is_a_no_op(
    fieldcrypt: FieldcryptResource, lake: Path, split_partition: str
) -> None:
    materialize_partition(fieldcrypt, split_partition)
    stored = {dataset: _file(lake, dataset).read_bytes() for dataset in ("users", "events")}

    result = materialize_partition(fieldcrypt, split_partition)

    assert {dataset: _file(lake, dataset).read_bytes() for dataset in ("users", "events")} == stored
    users = metadata(result, "protected_users")
    assert (users["rewritten"], users["newly_encrypted"], users["kms_calls"]) == (False, 0, 0)
    assert users["already_protected.email"] > 0
    assert blocking_checks_passed(result)


def test_schema_drift_fails_clearly_and_leaves_the_stored_file_untouched(
    fieldcrypt: FieldcryptResource, lake: Path, split_partition: str
) -> None:
    path = _file(lake, "users")
    drifted = pq.read_table(path)
    drifted = drifted.set_column(drifted.schema.get_field_index("email"), "email", pa.array(range(drifted.num_rows)))
    pq.write_table(drifted, path)
    stored = path.read_bytes()

    users = [asset_key("protected_users")]
    result = materialize_partition(fieldcrypt, split_partition, raise_on_error=False, selection=users)

    assert not result.success
    failure = result.failure_data_for_node(node("protected_users"))
    assert failure is not None
    assert "users.email is int64; only string columns can be protected" in failure.error.message
    assert PARTITION in failure.error.message
    assert path.read_bytes() == stored
    assert sorted(p.name for p in path.parent.iterdir()) == ["part-0.parquet"]  # no temporary file left


def test_partition_without_files_materializes_as_empty_and_writes_nothing(
    fieldcrypt: FieldcryptResource, lake: Path, split_partition: str
) -> None:
    missing = past_day(2).isoformat()

    result = materialize_partition(fieldcrypt, missing, selection=[asset_key("protected_users")])

    values = metadata(result, "protected_users")
    assert (values["files"], values["empty"], values["rows"], values["rewritten"]) == (0, True, 0, False)
    assert all(e.passed for e in checks(result, "protected_users").values())
    assert not (lake / "users" / f"date={missing}").exists()


def _tamper_wrapped_keys(path: Path) -> bytes:
    table = pq.read_table(path)
    wrapped = table["email__fc_dek"].combine_chunks()
    tampered_values = [bytes(v[:-1]) + bytes([v[-1] ^ 1]) for v in wrapped.dictionary.to_pylist()]
    tampered = pa.DictionaryArray.from_arrays(wrapped.indices, pa.array(tampered_values, pa.binary()))
    pq.write_table(table.set_column(table.schema.get_field_index("email__fc_dek"), "email__fc_dek", tampered), path)
    return path.read_bytes()


def test_tampered_wrapped_key_fails_the_unwrap_check_without_touching_the_file(
    fieldcrypt: FieldcryptResource, lake: Path, split_partition: str
) -> None:
    materialize_partition(fieldcrypt, split_partition)
    stored = _tamper_wrapped_keys(_file(lake, "users"))

    users = [asset_key("protected_users")]
    result = materialize_partition(fieldcrypt, split_partition, selection=users, raise_on_error=False)

    evaluations = checks(result, "protected_users")
    assert not evaluations["data_keys_unwrap"].passed
    assert "IntegrityError" in evaluations["data_keys_unwrap"].metadata["error"].value
    assert evaluations["data_keys_unwrap"].metadata["failing_partitions"].value == [split_partition]
    # The file was rewritten from outside: the counts (status) refuse it too, naming the protection ledger.
    assert "does not hold what fieldcrypt wrote" in evaluations["no_plaintext_after_enablement"].metadata["error"].value
    assert _file(lake, "users").read_bytes() == stored


def test_protected_row_copied_into_another_file_fails_the_run_naming_both_files(
    fieldcrypt: FieldcryptResource, lake: Path, split_partition: str
) -> None:
    materialize_partition(fieldcrypt, split_partition)
    table = pq.read_table(_file(lake, "users"))
    row = pc.index(table.column("email__fc_ct").is_valid(), True).as_py()
    copy = _file(lake, "users").with_name("part-1.parquet")
    pq.write_table(table.take([row]), copy)  # its cells decrypt: they bind the row's key, not its file
    before = copy.read_bytes()

    users = [asset_key("protected_users")]
    result = materialize_partition(fieldcrypt, split_partition, selection=users, raise_on_error=False)

    assert not result.success
    failure = result.failure_data_for_node(node("protected_users"))
    assert failure is not None and failure.error is not None
    # The copy carries the `ledgered` mark of the file it came from: the protection ledger names it first.
    assert "part-1.parquet was written by fieldcrypt" in failure.error.message
    assert "not in the protection ledger" in failure.error.message
    assert copy.read_bytes() == before


def test_failing_check_fails_the_run_naming_the_check_and_the_partition(
    fieldcrypt: FieldcryptResource, lake: Path, split_partition: str
) -> None:
    materialize_partition(fieldcrypt, split_partition)
    _tamper_wrapped_keys(_file(lake, "users"))

    users = [asset_key("protected_users")]
    result = materialize_partition(fieldcrypt, split_partition, selection=users, raise_on_error=False)

    assert not result.success
    failure = result.failure_data_for_node(node("protected_users"))
    assert failure is not None and failure.error is not None
    assert f"check data_keys_unwrap failed for users partition {split_partition}" in failure.error.message


def test_partition_with_a_failing_check_is_not_materialized_and_its_observation_names_the_check(
    fieldcrypt: FieldcryptResource, lake: Path, split_partition: str
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    materialize_partition(fieldcrypt, split_partition, instance=instance)
    _tamper_wrapped_keys(_file(lake, "users"))

    result = materialize_partition(
        fieldcrypt, split_partition, instance=instance, selection=[asset_key("protected_users")], raise_on_error=False
    )

    assert result.asset_materializations_for_node(node("protected_users")) == []
    observation = instance.fetch_observations(asset_key("protected_users"), limit=1).records[0].asset_observation
    assert observation is not None and observation.partition == split_partition
    assert "data_keys_unwrap" in observation.metadata["failed_checks"].value
    assert "IntegrityError" in observation.metadata["data_keys_unwrap.error"].value


def test_metadata_and_run_logs_hold_no_plaintext_and_no_key_bytes(
    fieldcrypt: FieldcryptResource, lake: Path, split_partition: str
) -> None:
    users = pq.read_table(_file(lake, "users"))
    events = pq.read_table(_file(lake, "events"))
    secrets = {v for v in users["email"].to_pylist() + users["phone"].to_pylist() if v}
    secrets |= {p["email"] for p in events["properties"].to_pylist() if p and p["email"]}
    keystore = Keystore.load(Path(fieldcrypt.config().key.keystore_path or ""))
    key_bytes = [version.key for version in keystore.versions.values()]
    instance = dg.DagsterInstance.ephemeral()

    result = materialize_partition(fieldcrypt, split_partition, instance=instance)

    logged = "\n".join(serialize_value(entry) for entry in instance.all_logs(result.run_id))
    assert "newly_encrypted" in logged
    assert not [s for s in secrets if s in logged]
    assert key_bytes
    for key in key_bytes:
        assert base64.b64encode(key).decode() not in logged
        assert key.hex() not in logged


def test_enable_attribute_job_needs_the_acknowledgement_and_records_like_the_cli(
    fieldcrypt: FieldcryptResource,
) -> None:
    from assets import build_assets
    from pipelines.jobs import enable_attribute_job

    enable_attribute = enable_attribute_job(build_assets(fieldcrypt.config()))

    land(fieldcrypt, DAY, shift_to_straddle_now(DAY))
    instance = dg.DagsterInstance.ephemeral()
    config = {"dataset": "events", "attribute": "properties.email", "mask": "email"}

    refused = enable_attribute.execute_in_process(
        run_config={"ops": {node("record_enablement"): {"config": config}}},
        resources=fieldcrypt.as_resources(),
        instance=instance,
        raise_on_error=False,
    )
    accepted = enable_attribute.execute_in_process(
        run_config={"ops": {node("record_enablement"): {"config": {**config, "acknowledge_irreversible": True}}}},
        resources=fieldcrypt.as_resources(),
        instance=instance,
    )

    assert not refused.success
    assert "irreversible" in (refused.failure_data_for_node(node("record_enablement")).error.message)  # type: ignore[union-attr]
    workspace = fieldcrypt.workspace("test")
    entry = workspace.policy().attributes["events.properties.email"]
    assert (entry.mask, entry.enabled_by) == ("email", f"dagster:{accepted.run_id}")
    enables = [e for e in workspace.audit.events() if e["operation"] == "enable"]
    assert [(e["actor"], e["attribute"]) for e in enables] == [(f"dagster:{accepted.run_id}", "properties.email")]
    observation = instance.fetch_observations(asset_key("protected_events"), limit=1).records[0]
    assert observation.asset_observation is not None
    assert observation.asset_observation.metadata["enabled_attribute"].value == "events.properties.email"


def test_protected_files_read_with_masks_in_original_columns_in_polars_pandas_and_duckdb(
    fieldcrypt: FieldcryptResource, lake: Path, split_partition: str
) -> None:
    old_day = past_day(5)  # every row predates enablement: only the (null) protection columns are added
    land(fieldcrypt, old_day, timedelta(0))
    materialize_partition(fieldcrypt, old_day.isoformat())
    materialize_partition(fieldcrypt, split_partition)
    enabled_at = fieldcrypt.workspace("test").policy().attributes["users.email"].enabled_at
    users_glob = f"{lake}/users/**/*.parquet"

    frame = pl.scan_parquet(users_glob, hive_partitioning=True, missing_columns="insert", extra_columns="ignore")
    polars_later = frame.filter(pl.col("ingested_at") >= enabled_at, pl.col("email").is_not_null()).collect()
    assert polars_later.schema["email"] == pl.String
    assert polars_later.height > 0
    assert polars_later["email"].str.contains(r"^\*\*\*\*@[a-z.]+$").all()
    assert polars_later["phone"].drop_nulls().str.contains(r"^\*\*\*\*(\d{4})?$").all()
    assert sorted(frame.select("date").unique().collect()["date"].to_list()) == [old_day, DAY]

    pandas_users = pd.read_parquet(_file(lake, "users"))
    protected = pandas_users[pandas_users["email__fc_ct"].notna()]
    assert len(protected) > 0 and protected["email"].str.match(r"^\*\*\*\*@").all()
    pandas_events = pd.read_parquet(_file(lake, "events"))
    masked = [p["email"] for p, ct in zip(pandas_events["properties"], pandas_events["properties__email__fc_ct"]) if ct]
    assert masked and all(m.startswith("****") for m in masked)

    con = duckdb.connect()
    rows = con.execute(
        "select properties.email, typeof(properties.email) from read_parquet(?, hive_partitioning = true, "
        "union_by_name = true) where properties__email__fc_ct is not null",
        [f"{lake}/events/**/*.parquet"],
    ).fetchall()
    assert rows and all(email.startswith("****") and kind == "VARCHAR" for email, kind in rows)
    counted = con.execute(
        "select count(*) from read_parquet(?, hive_partitioning = true, union_by_name = true)", [users_glob]
    ).fetchone()
    assert counted == (400,)


def test_attribute_dropped_with_its_columns_fails_the_protection_naming_the_file(
    fieldcrypt: FieldcryptResource, lake: Path, split_partition: str
) -> None:
    import json

    from fieldcrypt.policy.select import FILE_METADATA_KEY

    materialize_partition(fieldcrypt, split_partition)
    path = _file(lake, "users")
    table = pq.read_table(path)
    table = table.drop_columns([c for c in table.column_names if c.startswith("email__fc_")])
    described = json.loads(table.schema.metadata[FILE_METADATA_KEY])
    del described["attributes"]["users.email"]
    metadata = {**table.schema.metadata, FILE_METADATA_KEY: json.dumps(described).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)
    stripped = path.read_bytes()

    users = [asset_key("protected_users")]
    result = materialize_partition(fieldcrypt, split_partition, selection=users, raise_on_error=False)

    failure = result.failure_data_for_node(node("protected_users"))
    assert failure is not None and failure.error is not None
    assert f"LedgerError: {path} does not hold what fieldcrypt wrote" in failure.error.message
    assert "users.email had" in failure.error.message
    assert path.read_bytes() == stripped  # its masks were not encrypted as if they were values
