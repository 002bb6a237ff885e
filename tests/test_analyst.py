"""The analyst's view (`fieldcrypt.analyst.scan_dataset`) of local and S3 lakes, without the master key.

The lake is protected by the real workspace; S3 is moto's server on loopback. Nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.fs as pafs
import pytest

from demo.sample_data import land_sample_lake
from fieldcrypt import InputError, KeyConfig, Workspace, WorkspaceConfig
from fieldcrypt.analyst import scan_dataset
from tests.catalogs import TEST_DATASETS, write_catalog
from tests.conftest import NOON, SAMPLE_DAY, WORKSPACE

LATER_DAY = SAMPLE_DAY + timedelta(days=1)  # landed, never protected: the original schema
ROWS = 200


@pytest.fixture
def protected_lake(local_workspace: Workspace, enable_at: Callable[..., Any]) -> Workspace:
    """SAMPLE_DAY protected with users.email, users.phone and events.properties.email enabled at its noon."""
    enable_at(local_workspace, "users.email", "email")
    enable_at(local_workspace, "users.phone", "last4")
    enable_at(local_workspace, "events.properties.email", "email")
    local_workspace.protect("users", SAMPLE_DAY.isoformat())
    local_workspace.protect("events", SAMPLE_DAY.isoformat())
    return local_workspace


def lake_of(workspace: Workspace) -> str:
    return workspace.config.lake_uri


def test_fieldcrypt_columns_are_dropped(protected_lake: Workspace) -> None:
    columns = scan_dataset("users", lake=lake_of(protected_lake)).collect_schema().names()
    assert not [name for name in columns if "__fc_" in name]


def test_each_protected_attribute_gets_an_is_protected_flag(protected_lake: Workspace) -> None:
    columns = scan_dataset("users", lake=lake_of(protected_lake)).collect_schema()
    assert columns["email_is_protected"] == pl.Boolean
    assert columns["phone_is_protected"] == pl.Boolean


def test_flag_is_true_exactly_on_rows_ingested_after_enablement_with_a_value(protected_lake: Workspace) -> None:
    frame = scan_dataset("users", lake=lake_of(protected_lake)).collect()
    expected = (frame["ingested_at"] >= NOON) & frame["email"].is_not_null()
    assert frame["email_is_protected"].to_list() == expected.to_list()


def test_protected_rows_hold_masks(protected_lake: Workspace) -> None:
    frame = scan_dataset("users", lake=lake_of(protected_lake)).filter(pl.col("email_is_protected")).collect()
    assert frame.height > 0
    assert frame["email"].str.starts_with("****").all()


def test_distinct_count_of_values_leaves_masks_out(protected_lake: Workspace) -> None:
    frame = scan_dataset("users", lake=lake_of(protected_lake)).collect()
    values = frame.filter(~pl.col("email_is_protected") & pl.col("email").is_not_null())
    counted = scan_dataset("users", lake=lake_of(protected_lake)).select(
        pl.col("email").filter(~pl.col("email_is_protected")).drop_nulls().n_unique()
    )
    assert counted.collect().item() == values["email"].n_unique()


def test_struct_attribute_flag_is_named_by_its_column_stem(protected_lake: Workspace) -> None:
    frame = scan_dataset("events", lake=lake_of(protected_lake)).collect()
    assert frame["properties__email_is_protected"].any()


def test_hive_partition_directory_becomes_a_column(protected_lake: Workspace) -> None:
    frame = scan_dataset("users", lake=lake_of(protected_lake)).collect()
    assert frame["date"].unique().to_list() == [SAMPLE_DAY.isoformat()]


def test_snapshot_not_yet_protected_reads_with_flag_false(protected_lake: Workspace) -> None:
    land_sample_lake(protected_lake.store, LATER_DAY, 1, users=ROWS, events=ROWS)
    frame = scan_dataset("users", lake=lake_of(protected_lake)).filter(pl.col("date") == LATER_DAY.isoformat())
    collected = frame.collect()
    assert collected.height == ROWS
    assert not collected["email_is_protected"].any()


def test_engine_markers_beside_data_are_not_read(protected_lake: Workspace) -> None:
    partition = Path(lake_of(protected_lake)) / "users" / f"date={SAMPLE_DAY.isoformat()}"
    (partition / "_SUCCESS").write_text("")
    (partition / ".part-0.parquet.crc").write_bytes(b"\x00crc")
    assert scan_dataset("users", lake=lake_of(protected_lake)).collect().height == 300


def test_scan_needs_no_master_key(protected_lake: Workspace, keystore_path: Path) -> None:
    keystore_path.unlink()
    assert scan_dataset("users", lake=lake_of(protected_lake)).filter(pl.col("email_is_protected")).collect().height


def test_flags_come_from_column_names_when_file_metadata_is_gone(protected_lake: Workspace) -> None:
    import pyarrow.parquet as pq

    path = Path(lake_of(protected_lake)) / "users" / f"date={SAMPLE_DAY.isoformat()}" / "part-0.parquet"
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata(None), path)  # e.g. a copy by a tool that drops metadata
    assert scan_dataset("users", lake=lake_of(protected_lake)).collect()["email_is_protected"].any()


def test_catalog_workspace_and_dataset_locate_the_lake(protected_lake: Workspace, tmp_path: Path) -> None:
    catalog = write_catalog(
        tmp_path / "catalog" / "fieldcrypt.yaml",
        WORKSPACE,
        lake_of(protected_lake),
        {"provider": "local", "keystore": str(tmp_path / "no-keystore-needed.json")},
    )
    frame = scan_dataset("users", catalog=catalog, workspace=WORKSPACE).collect()
    assert frame.height == 300


def test_dataset_not_in_the_catalog_is_a_named_error(protected_lake: Workspace, tmp_path: Path) -> None:
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", WORKSPACE, lake_of(protected_lake), {"provider": "local", "keystore": "k.json"}
    )
    with pytest.raises(InputError, match="'Users' is not declared"):
        scan_dataset("Users", catalog=catalog)


def test_dataset_without_files_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no data files under .*/orders"):
        scan_dataset("orders", lake=str(tmp_path / "lake"))


def test_stray_non_parquet_file_is_a_named_error(protected_lake: Workspace) -> None:
    partition = Path(lake_of(protected_lake)) / "users" / f"date={SAMPLE_DAY.isoformat()}"
    (partition / "notes.txt").write_text("not parquet")
    with pytest.raises(InputError, match="notes.txt is not a readable Parquet file"):
        scan_dataset("users", lake=lake_of(protected_lake))


# -- S3 (moto) ----------------------------------------------------------------------------


@pytest.fixture
def s3_protected_lake(moto: str, s3_bucket: str, keystore_path: Path, enable_at: Callable[..., Any]) -> Workspace:
    config = WorkspaceConfig(
        WORKSPACE,
        f"s3://{s3_bucket}/lake",
        KeyConfig(provider="local", keystore_path=str(keystore_path)),
        s3_endpoint_url=moto,
        s3_region="us-east-1",
        datasets=TEST_DATASETS,
    )
    workspace = Workspace(config, actor="test")
    land_sample_lake(workspace.store, SAMPLE_DAY, 1, users=ROWS, events=ROWS)
    enable_at(workspace, "users.email", "email")
    workspace.protect("users", SAMPLE_DAY.isoformat())
    return workspace


def test_s3_lake_scans_with_flags(s3_protected_lake: Workspace, moto: str) -> None:
    frame = scan_dataset("users", lake=lake_of(s3_protected_lake), s3_endpoint_url=moto, region="us-east-1").collect()
    assert frame.height == ROWS
    assert frame["email_is_protected"].any()
    assert not [name for name in frame.columns if "__fc_" in name]


def test_s3_lake_is_found_through_the_catalog_with_its_endpoint(
    s3_protected_lake: Workspace, moto: str, tmp_path: Path
) -> None:
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml",
        WORKSPACE,
        lake_of(s3_protected_lake),
        {"provider": "local", "keystore": "k.json"},
        s3_endpoint_url=moto,
        region="us-east-1",
    )
    assert scan_dataset("users", catalog=catalog).filter(pl.col("email_is_protected")).collect().height > 0


def test_pandas_recipe_reads_an_s3_partition_through_pyarrow_filesystem(
    s3_protected_lake: Workspace, moto: str
) -> None:
    # The README's pandas recipe on S3: pyarrow's S3 filesystem (s3fs cannot be installed beside boto3 1.44).
    import pandas as pd

    scheme, _, host = moto.partition("://")
    s3 = pafs.S3FileSystem(endpoint_override=host, scheme=scheme, region="us-east-1")
    df = pd.read_parquet(f"lake-bucket/lake/users/date={SAMPLE_DAY.isoformat()}", filesystem=s3)
    for ciphertext in df.columns[df.columns.str.endswith("__fc_ct")]:
        df[ciphertext.removesuffix("__fc_ct") + "_is_protected"] = df[ciphertext].notna()
    df = df.drop(columns=df.columns[df.columns.str.contains("__fc_")])
    assert df["email_is_protected"].any()
    assert df.loc[df["email_is_protected"], "email"].str.startswith("****").all()
