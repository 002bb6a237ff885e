"""Where a declared dataset's partitions and files are: Hive levels of any name and granularity, any file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldcrypt import InputError
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.layout import DatasetLayout, HiveLevel, Partitioning
from fieldcrypt.policy.policy import DatasetSpec

DAILY_DT = Partitioning("daily", (HiveLevel("dt", "%Y-%m-%d"),))
HOURLY_TWO_LEVELS = Partitioning("hourly", (HiveLevel("dt", "%Y-%m-%d"), HiveLevel("hour", "%-H")))
HOURLY_ONE_LEVEL = Partitioning("hourly", (HiveLevel("dt", "%Y-%m-%d-%H"),))
MONTHLY_SPARK = Partitioning("monthly", (HiveLevel("year", "%Y"), HiveLevel("month", "%-m")))


def layout(partitioning: Partitioning, path: str = "raw/clicks") -> DatasetLayout:
    return DatasetLayout(DatasetSpec("clicks", "ts", "id"), path, partitioning)


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


@pytest.mark.parametrize(
    ("partitioning", "key", "directory"),
    [
        (Partitioning(), "2026-11-28", "date=2026-11-28"),
        (DAILY_DT, "2026-11-28", "dt=2026-11-28"),
        (Partitioning("daily", (HiveLevel("ds", "%Y%m%d"),)), "2026-11-28", "ds=20261128"),
        (HOURLY_TWO_LEVELS, "2026-11-28T03", "dt=2026-11-28/hour=3"),
        (HOURLY_ONE_LEVEL, "2026-11-28T13", "dt=2026-11-28-13"),
        (Partitioning("monthly", (HiveLevel("month", "%Y-%m"),)), "2026-11", "month=2026-11"),
        (MONTHLY_SPARK, "2026-01", "year=2026/month=1"),
    ],
)
def test_partition_key_and_hive_directory_map_both_ways(partitioning: Partitioning, key: str, directory: str) -> None:
    assert partitioning.directory(key) == directory
    assert partitioning.key_of_directories(directory.split("/"), "lake") == key


@pytest.mark.parametrize(
    ("partitioning", "directories", "problem"),
    [
        (DAILY_DT, ["date=2026-11-28"], "directory 'date=2026-11-28' is not the partition level dt=..."),
        (DAILY_DT, ["dt=2026-11-31"], "dt=2026-11-31 is not a valid daily partition"),
        (HOURLY_TWO_LEVELS, ["dt=__HIVE_DEFAULT_PARTITION__", "hour=3"], "has a null .* at some levels only"),
        (HOURLY_TWO_LEVELS, ["dt=2026-11-28", "hour=03"], "'hour=03' does not match the declared partition level"),
        (HOURLY_TWO_LEVELS, ["dt=2026-11-28", "hour=24"], "is not a valid hourly partition"),
    ],
)
def test_directory_that_does_not_fit_the_declaration_is_named(
    partitioning: Partitioning, directories: list[str], problem: str
) -> None:
    with pytest.raises(InputError, match=problem.replace("(", r"\(")):
        partitioning.key_of_directories(directories, "lake")


@pytest.mark.parametrize(
    ("granularity", "levels", "problem"),
    [
        ("daily", (HiveLevel("dt", "%Y-%m"),), "must spell %Y %d %m exactly once"),
        ("hourly", (HiveLevel("dt", "%Y-%m-%d"),), "must spell %H %Y %d %m exactly once"),
        ("daily", (HiveLevel("dt", "%Y-%m-%d-%M"),), "only %Y, %m, %d, %H"),
        ("weekly", (), "granularity 'weekly' is not one of daily, hourly, monthly, none"),
        ("none", (HiveLevel("dt", "%Y"),), "an unpartitioned dataset has no partition levels"),
        ("daily", (HiveLevel("d-t", "%Y-%m-%d"),), "partition key 'd-t' must be letters"),
    ],
)
def test_declared_partitioning_is_checked_when_made(
    granularity: str, levels: tuple[HiveLevel, ...], problem: str
) -> None:
    with pytest.raises(InputError, match=problem):
        Partitioning(granularity, levels)


def test_partition_is_every_data_file_below_its_directory_and_engine_markers_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "raw" / "clicks" / "dt=2026-11-28"
    touch(
        root,
        "part-00000-8d3f-c000.snappy.parquet",
        "part-00001-8d3f-c000.snappy.parquet",
        "bucket=3/data_0.parquet",
        "_SUCCESS",
        "_committed_123",
        ".part-00000-8d3f-c000.snappy.parquet.crc",
        "part-00002.parquet.crc",
        "_temporary/0/task/part-9.parquet",
    )
    touch(tmp_path / "raw" / "clicks", "_SUCCESS", "dt=2026-11-29/only.parquet")
    store = LakeStore.from_uri(str(tmp_path))
    dataset = layout(DAILY_DT)

    assert dataset.files(store, "2026-11-28") == [
        "raw/clicks/dt=2026-11-28/bucket=3/data_0.parquet",
        "raw/clicks/dt=2026-11-28/part-00000-8d3f-c000.snappy.parquet",
        "raw/clicks/dt=2026-11-28/part-00001-8d3f-c000.snappy.parquet",
    ]
    assert list(dataset.partitions(store)) == ["2026-11-28", "2026-11-29"]
    assert dataset.files(store, "2026-11-30") == []


def test_unpartitioned_dataset_is_every_data_file_under_its_path(tmp_path: Path) -> None:
    touch(tmp_path / "accounts", "a.parquet", "sub/b.parquet", "_SUCCESS")
    dataset = layout(Partitioning("none", ()), path="accounts")
    store = LakeStore.from_uri(str(tmp_path))

    assert dataset.partitions(store) == {None: ["accounts/a.parquet", "accounts/sub/b.parquet"]}
    with pytest.raises(InputError, match="dataset clicks is not partitioned; partition '2026-11-28' does not apply"):
        dataset.files(store, "2026-11-28")


def test_a_data_file_outside_any_partition_directory_is_named_not_skipped(tmp_path: Path) -> None:
    touch(tmp_path / "raw" / "clicks", "dt=2026-11-28/a.parquet", "stray.parquet")
    with pytest.raises(InputError, match=r"raw/clicks/stray.parquet is not inside a partition directory of clicks"):
        layout(DAILY_DT).partitions(LakeStore.from_uri(str(tmp_path)))


@pytest.mark.parametrize("key", ["2026-11-28T3", "2026-11-28 03", "2026-11-28", "../x"])
def test_hourly_partition_key_is_canonical(key: str) -> None:
    with pytest.raises(InputError, match=f"partition '{key}' is not a valid hourly partition key"):
        HOURLY_TWO_LEVELS.parse_key(key)
