"""Lake layout: `<root>/<dataset>/date=<YYYY-MM-DD>/part-0.parquet`, one file per daily partition.

Hive-style directories, so polars, pandas, DuckDB and Spark read a dataset with
its `date` column. fieldcrypt's own state lives under `<root>/_fieldcrypt/`, which
those readers skip.
"""

from __future__ import annotations

import re

from fieldcrypt.errors import InputError
from fieldcrypt.policy import DatasetSpec
from fieldcrypt.store import LakeStore

PART_FILE = "part-0.parquet"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

USERS = DatasetSpec(name="users", ingested_at="ingested_at", primary_key="user_id")
EVENTS = DatasetSpec(name="events", ingested_at="ingested_at", primary_key="event_id")
DEFAULT_DATASETS = {spec.name: spec for spec in (USERS, EVENTS)}


def partition_path(dataset: str, partition: str) -> str:
    if not _DATE.match(partition):
        raise InputError(f"partition {partition!r} is not a date (YYYY-MM-DD)")
    return f"{dataset}/date={partition}/{PART_FILE}"


def list_partitions(store: LakeStore, dataset: str) -> list[str]:
    """The dates that have a file for `dataset`, oldest first."""
    dates = []
    for rel in store.list_files(dataset, suffix=PART_FILE):
        folder = rel.split("/")[-2]
        if folder.startswith("date=") and _DATE.match(folder[5:]):
            dates.append(folder[5:])
    return sorted(dates)
