"""A lake written by real Spark, protected and rotated by fieldcrypt, then read and compacted by Spark.

Spark (local[2], one session for the module) writes a users lake partitioned by `date`, with
its Hadoop `.crc` files, `_SUCCESS` and its schema metadata: once with INT96 timestamps and
zstd, once with TIMESTAMP_MICROS, snappy and the legacy Parquet format. fieldcrypt enables
users.email, protects every partition and rotates the master key. Spark then reads the lake
(its checksums checked, as on every local read) and sees the protection columns; a Spark
compaction (read -> write a new folder -> replace the dataset folder) keeps every ciphertext,
which `verify` decrypts.

Marked `spark` (excluded by default; `make pytest-spark`, run by .ci/run): it needs Java 17.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import BinaryType

from fieldcrypt import Workspace
from fieldcrypt.lake.checksum_file import HadoopChecksums, checksum_path
from fieldcrypt.policy.ledger import LedgerError
from resources import FieldcryptResource
from tests.dagster_support import catalog_fieldcrypt, make_keystore
from tests.plaintext_scan import scan

pytestmark = [
    pytest.mark.spark,
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
ROWS = 3000
PROTECTION_COLUMNS = ("email__fc_ct", "email__fc_dek")
UNTOUCHED = ["user_id", "name", "score", "tags", "ingested_at", "date"]
DATASETS = {
    "users": {
        "path": "warehouse/users",
        "partitioning": {"granularity": "daily", "key": "date", "start": DAYS[0]},
        "ingested_at": "ingested_at",
        "primary_key": "user_id",
    }
}
# Spark's writer settings of each lake: INT96 (Spark's default) with zstd; micros, snappy, legacy lists.
WRITERS = {
    "int96-zstd": {"spark.sql.parquet.outputTimestampType": "INT96", "spark.sql.parquet.compression.codec": "zstd"},
    "micros-snappy-legacy": {
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.parquet.compression.codec": "snappy",
        "spark.sql.parquet.writeLegacyFormat": "true",
    },
}


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    session = (
        SparkSession.builder.master("local[2]")
        .appName("fieldcrypt-tests")
        .config("spark.driver.memory", "1g")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@dataclass
class SparkLake:
    """A protected, rotated Spark lake, its untouched copy from before protection, and the cells encrypted."""

    root: Path
    before: Path
    fieldcrypt: FieldcryptResource
    key: dict[str, str]
    encrypted: int

    @property
    def workspace(self) -> Workspace:
        return self.fieldcrypt.workspace("test")


def write_users(spark: SparkSession, root: Path, settings: dict[str, str]) -> None:
    """ROWS users over DAYS, two files per day; each day's rows are ingested from 12 h before now to 12 h after."""
    start = datetime.now(UTC) - timedelta(hours=12)
    start_us = int(start.timestamp() * 1_000_000)
    step_us = int(timedelta(days=1).total_seconds() * 1_000_000) * len(DAYS) // ROWS
    users = spark.range(ROWS).selectExpr(
        "id AS user_id",
        "CASE WHEN id % 9 = 4 THEN NULL ELSE concat('user', id, '@Example.com') END AS email",
        "concat('name', id) AS name",
        "CASE WHEN id % 50 = 7 THEN double('NaN') ELSE id * 0.25 END AS score",
        "array_repeat(concat('t', id % 3), CAST(id % 3 AS INT)) AS tags",
        f"timestamp_micros({start_us} + (id DIV {len(DAYS)}) * {step_us}) AS ingested_at",
        f"date_format(date_add(DATE'{DAYS[0]}', CAST(id % {len(DAYS)} AS INT)), 'yyyy-MM-dd') AS date",
    )
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        users.repartition(2).write.partitionBy("date").parquet(str(root))
    finally:
        for key, value in previous.items():
            spark.conf.unset(key) if value is None else spark.conf.set(key, value)


@pytest.fixture(scope="module", params=sorted(WRITERS))
def spark_lake(
    request: pytest.FixtureRequest, spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> SparkLake:
    """Spark writes the lake; fieldcrypt enables users.email, protects every partition, rotates the master key."""
    directory = tmp_path_factory.mktemp(request.param)
    root = directory / "lake" / "warehouse" / "users"
    write_users(spark, root, WRITERS[request.param])
    assert list(root.glob("date=*/.part-*.parquet.crc")), "Spark wrote no checksum files"
    assert written_as(next(root.glob("date=*/part-*.parquet"))) == (
        WRITERS[request.param]["spark.sql.parquet.outputTimestampType"] == "INT96",
        WRITERS[request.param]["spark.sql.parquet.compression.codec"].upper(),
    )
    before = directory / "before"
    shutil.copytree(root, before)
    key = {"provider": "local", "keystore": str(make_keystore(directory))}
    fieldcrypt = catalog_fieldcrypt(directory, str(directory / "lake"), key, datasets=DATASETS)
    workspace = fieldcrypt.workspace("test")
    assert workspace.partitions("users") == DAYS
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    encrypted = 0
    for day in DAYS:
        report = workspace.protect("users", day)
        assert report.files_rewritten == report.files == 2
        encrypted += report.newly_encrypted
    assert 0 < encrypted < ROWS
    workspace.start_rotation()
    for day in DAYS:
        assert workspace.rotate("users", day).files_rewritten == 2
    workspace.complete_rotation()
    return SparkLake(root, before, fieldcrypt, key, encrypted)


def written_as(path: Path) -> tuple[bool, str]:
    """Are the file's timestamps INT96, and its codec."""
    parquet = pq.ParquetFile(path)
    leaf = parquet.schema.column(parquet.schema.names.index("ingested_at"))
    return leaf.physical_type == "INT96", parquet.metadata.row_group(0).column(0).compression


def read(spark: SparkSession, root: Path, *, merge_schema: bool = False) -> DataFrame:
    return spark.read.option("mergeSchema", str(merge_schema).lower()).parquet(str(root))


def test_spark_reads_every_row_of_the_protected_lake(spark: SparkSession, spark_lake: SparkLake) -> None:
    assert read(spark, spark_lake.root).count() == ROWS


def test_every_untouched_column_reads_as_before_protection(spark: SparkSession, spark_lake: SparkLake) -> None:
    before = read(spark, spark_lake.before).select(*UNTOUCHED)
    after = read(spark, spark_lake.root).select(*UNTOUCHED)
    assert before.exceptAll(after).count() == 0
    assert after.exceptAll(before).count() == 0


def test_protection_columns_are_in_sparks_schema(spark: SparkSession, spark_lake: SparkLake) -> None:
    schema = read(spark, spark_lake.root).schema
    assert all(isinstance(schema[name].dataType, BinaryType) for name in PROTECTION_COLUMNS)
    assert read(spark, spark_lake.root).where("email__fc_ct IS NOT NULL").count() == spark_lake.encrypted


def test_every_rewritten_file_keeps_a_true_crc(spark_lake: SparkLake) -> None:
    store = spark_lake.workspace.store
    for day in DAYS:
        for rel in spark_lake.workspace.files("users", day):
            stored = HadoopChecksums.parse(store.read_bytes(checksum_path(rel)), rel)
            assert HadoopChecksums.of_file(store, rel, stored.bytes_per_checksum) == stored


def test_a_spark_compaction_keeps_every_ciphertext_verifiable(spark: SparkSession, spark_lake: SparkLake) -> None:
    # On a copy of the lake (its control files included), so the other tests see the lake fieldcrypt left.
    copy = spark_lake.root.parents[2] / "compacted"
    shutil.copytree(spark_lake.root.parents[1], copy / "lake")
    root = copy / "lake" / "warehouse" / "users"
    compacted = copy / "users-compacted"
    read(spark, root, merge_schema=True).coalesce(1).write.partitionBy("date").parquet(str(compacted))
    shutil.rmtree(root)
    shutil.move(compacted, root)
    workspace = catalog_fieldcrypt(copy, str(copy / "lake"), spark_lake.key, datasets=DATASETS).workspace("test")
    assert all(len(workspace.files("users", day)) == 1 for day in DAYS)  # Spark's files, not fieldcrypt's
    # The ledger names the files fieldcrypt wrote as gone until an operator accepts the rewrite (audited).
    with pytest.raises(LedgerError, match="but not in the lake: a protected file was deleted or moved"):
        workspace.verify("users", DAYS[0])
    for day in DAYS:
        workspace.accept_rewrite("users", day, "compaction job")
    verified = sum(workspace.verify("users", day)["users.email"] for day in DAYS)
    assert verified == spark_lake.encrypted
    assert read(spark, root).count() == ROWS


def test_spark_reads_a_file_whose_crc_a_crash_removed(spark: SparkSession, spark_lake: SparkLake) -> None:
    # replace_data_file's crash states are "no .crc" (never a wrong one): Hadoop reads such a file unchecked.
    copy = spark_lake.root.parents[2] / "without-crc"
    shutil.copytree(spark_lake.root, copy)
    removed = next(copy.glob("date=*/.part-*.parquet.crc"))
    removed.unlink()
    assert read(spark, copy).count() == ROWS


def test_no_protected_plaintext_is_left_in_any_byte_of_the_spark_lake(spark_lake: SparkLake) -> None:
    """Footers, page statistics, pages (decompressed), .crc and marker files: the scan of tests/plaintext_scan.py."""
    before = pq.read_table(spark_lake.before, columns=["user_id", "email"]).to_pylist()
    after = pq.read_table(spark_lake.root, columns=["user_id", "email__fc_ct"]).to_pylist()
    protected_ids = {row["user_id"] for row in after if row["email__fc_ct"] is not None}
    protected = {row["email"] for row in before if row["user_id"] in protected_ids and row["email"]}
    historical = {row["email"] for row in before if row["user_id"] not in protected_ids and row["email"]}
    assert len(protected) == spark_lake.encrypted and historical
    assert scan(spark_lake.root, protected) == []
    assert scan(spark_lake.root, historical)  # the scan does read Spark's files: rows left as they were are found
