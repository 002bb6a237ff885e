"""Writes tests/data/spark-4.parquet with real Spark (parquet-java): INT96 timestamps, page indexes, a bloom
filter on `email`, six row groups. Run once by hand (about a minute, Java 17): the tests read the file and
never start Spark. Usage: python tests/data/make_spark_fixture.py"""

from __future__ import annotations

import glob
import shutil
import tempfile
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F  # noqa: N812

TARGET = Path(__file__).resolve().parent / "spark-4.parquet"


def main() -> None:
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("splice-fixture")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    id_ = F.col("id")
    frame = spark.range(0, 3000).select(
        id_,
        F.concat(F.lit("user"), (id_ % 97).cast("string"), F.lit("@example.com")).alias("email"),
        F.when(id_ % 11 == 0, F.lit(float("nan"))).otherwise(id_ / 7).alias("score"),
        F.struct((id_ % 5).alias("n"), F.concat(F.lit("10.0.0."), (id_ % 256).cast("string")).alias("ip")).alias("ctx"),
        F.array(id_, id_ + 1).alias("tags"),
        F.create_map(F.lit("k"), id_).alias("props"),
        (F.lit("2026-11-01 12:00:00").cast("timestamp") + F.make_interval(secs=id_)).alias("at"),
        (id_ / 100).cast("decimal(12,2)").alias("amount"),
        F.date_add(F.lit("2026-01-01").cast("date"), (id_ % 300).cast("int")).alias("day"),
        id_.cast("string").cast("binary").alias("blob"),
    )
    out = Path(tempfile.mkdtemp()) / "out"
    (
        frame.coalesce(1)
        .write.option("parquet.block.size", 40000)
        .option("parquet.bloom.filter.expected.ndv#email", "100")
        .option("parquet.page.size", 2048)
        .option("parquet.bloom.filter.enabled#email", "true")
        .option("compression", "snappy")
        .parquet(str(out))
    )
    spark.stop()
    [part] = glob.glob(str(out / "part-*.parquet"))
    shutil.copyfile(part, TARGET)
    shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
