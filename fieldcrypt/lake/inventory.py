"""What is under a dataset's directory, entry by entry: the classification every command relies on.

Every file below a dataset (or one partition of it) is exactly one of:

- data: a file in a partition directory (or anywhere below an unpartitioned dataset) with no
  name part starting with `_` or `.`; it must be Parquet (a stray file is refused when read).
- marker: what engines leave beside data and never read as rows: `_SUCCESS`,
  `_committed_<id>`, `_started_<id>` (Databricks' commit protocol), anything below
  `_temporary/` (Spark's in-flight job directory), and a hidden file that is not Parquet
  (`.DS_Store`, `.keep`, ...; see below).
- checksum: a Hadoop checksum `.<name>.crc` of a data file `<name>` beside it. The `.crc` of
  anything else (a marker, or an orphan) is a marker.
- summary: `_metadata` / `_common_metadata` (Parquet summary files), at any level.
- temp: fieldcrypt's own hidden temporary file (`.<name>.fieldcrypt-tmp-<hex>`).
- table log: a file below `_delta_log/` (Delta Lake) or an Iceberg `metadata/` folder's
  `*.metadata.json` / `version-hint.text`. A dataset holding one is refused by
  `fieldcrypt.lake.table_formats`, never rewritten file by file.

Anything else is an InputError naming the path, never skipped: a file inside a directory
whose name starts with `_` or `.` (other than `_temporary/`), e.g. `date=.../_batch=1/`,
since engines differ on whether they read it; a hidden file named `*.parquet`; a hidden
file that starts with the Parquet magic `PAR1` (the first 4 bytes are read only for hidden
files no rule above names, so a listing of a usual lake reads no file); and a data file
outside the declared partition levels (`fieldcrypt.policy.layout`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from fieldcrypt.errors import InputError
from fieldcrypt.lake.store import TEMP_MARKER, FileVersion, LakeStore

DATA = "data"
MARKER = "marker"
CHECKSUM = "checksum"
SUMMARY = "summary"
TEMP = "temp"
TABLE_LOG = "table_log"
# A table's `part-fc-*` file its current version does not reference (fieldcrypt.policy.table_recovery).
PUBLISHED = "published"

SUMMARY_FILES = frozenset({"_metadata", "_common_metadata"})
# Spark writes `_SUCCESS`; Databricks' DBIO commit protocol `_started_<txn>` and `_committed_<txn>`.
_MARKER_FILE = re.compile(r"_SUCCESS|_committed_.*|_started_.*")
SPARK_JOB_DIR = "_temporary"  # Spark's in-flight output: attempts not committed are not data
DELTA_LOG_DIR = "_delta_log"
ICEBERG_METADATA_DIR = "metadata"
PARQUET_MAGIC = b"PAR1"


def is_iceberg_metadata_file(name: str) -> bool:
    return name.endswith(".metadata.json") or name == "version-hint.text"


def is_hidden(name: str) -> bool:
    """A name engines treat as not data (Spark, Hive, pyarrow, DuckDB's hive globs skip these)."""
    return name.startswith(("_", "."))


@dataclass(frozen=True)
class Entry:
    """One file under a dataset: its path (relative to the lake), its kind, and its partition if data."""

    rel: str
    kind: str
    partition: str | None = None
    version: FileVersion | None = None


@dataclass
class Inventory:
    """Every file under a dataset's directory (or one partition's), classified; nothing is left out."""

    dataset: str
    entries: list[Entry] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Entry]:
        return [entry for entry in self.entries if entry.kind == kind]

    @property
    def data(self) -> dict[str | None, list[str]]:
        """Partition -> its data files, sorted (partitions in the order the layout sorted them)."""
        found: dict[str | None, list[str]] = {}
        for entry in self.of_kind(DATA):
            found.setdefault(entry.partition, []).append(entry.rel)
        return {key: sorted(files) for key, files in found.items()}

    @property
    def files(self) -> list[str]:
        """Every data file, sorted."""
        return sorted(entry.rel for entry in self.of_kind(DATA))

    @property
    def markers(self) -> list[str]:
        return [entry.rel for entry in self.of_kind(MARKER)]

    @property
    def checksums(self) -> list[str]:
        return [entry.rel for entry in self.of_kind(CHECKSUM)]

    def checksum_of(self, data_file: str) -> str | None:
        """The Hadoop checksum file (`.<name>.crc` beside it) of a data file, if the inventory holds one."""
        head, _, name = data_file.rpartition("/")
        candidate = f"{head}/.{name}.crc" if head else f".{name}.crc"
        return candidate if candidate in self.checksums else None

    @property
    def summaries(self) -> list[str]:
        return [entry.rel for entry in self.of_kind(SUMMARY)]

    @property
    def temps(self) -> list[Entry]:
        return self.of_kind(TEMP)

    @property
    def published(self) -> list[Entry]:
        return self.of_kind(PUBLISHED)

    @property
    def table_logs(self) -> list[str]:
        return [entry.rel for entry in self.of_kind(TABLE_LOG)]


def classify(
    store: LakeStore,
    dataset: str,
    directory: str,
    listing: Mapping[str, FileVersion | None],
    partition_of: Callable[[str, list[str]], str | None],
) -> Inventory:
    """Classify every file of `listing` (paths relative to the lake, all below `directory`).

    `directory` is what the listing covered (the dataset's path or one partition's);
    `partition_of(rel, parts)` gives the partition of a data file from its name parts below
    the dataset, or raises a named InputError for one outside the declared levels.
    """
    depth = directory.count("/") + 1 if directory else 0
    inventory = Inventory(dataset)
    data_names = _data_names(listing, depth)
    for rel, version in listing.items():
        parts = rel.split("/")[depth:]
        kind = _kind(store, rel, parts, data_names)
        partition = partition_of(rel, parts) if kind == DATA else None
        inventory.entries.append(Entry(rel, kind, partition, version))
    inventory.entries.sort(key=lambda entry: entry.rel)
    return inventory


def _data_names(listing: Iterable[str], depth: int) -> set[str]:
    """Paths of the files that are data by name alone (no hidden part): what a `.crc` may be the checksum of."""
    return {rel for rel in listing if not any(is_hidden(part) for part in rel.split("/")[depth:])}


def _kind(store: LakeStore, rel: str, parts: list[str], data_names: set[str]) -> str:
    *folders, name = parts
    if DELTA_LOG_DIR in folders:
        return TABLE_LOG
    if folders and folders[-1] == ICEBERG_METADATA_DIR and is_iceberg_metadata_file(name):
        return TABLE_LOG
    if SPARK_JOB_DIR in folders:
        return MARKER
    hidden = [index for index, folder in enumerate(folders) if is_hidden(folder)]
    if hidden:
        whole = rel.split("/")
        at = "/".join(whole[: len(whole) - len(parts) + hidden[0] + 1])
        raise InputError(
            f"{store.display(rel)} is inside {store.display(at)}, a directory whose name starts with "
            f"{folders[hidden[0]][0]!r}: engines disagree on whether its files are data; move them into the "
            "partition directory or out of the dataset (fieldcrypt neither skips nor protects them)"
        )
    if TEMP_MARKER in name and name.startswith("."):
        return TEMP
    if name in SUMMARY_FILES:
        return SUMMARY
    if _MARKER_FILE.fullmatch(name):
        return MARKER
    if name.endswith(".crc"):
        head = rel.rpartition("/")[0]
        checked = f"{head}/{name[1:-4]}" if name.startswith(".") else f"{head}/{name[:-4]}"
        return CHECKSUM if checked in data_names else MARKER
    if not is_hidden(name):
        return DATA
    if name.lower().endswith(".parquet") or _starts_with_parquet_magic(store, rel):
        raise InputError(
            f"{store.display(rel)} is a hidden file holding Parquet: engines disagree on whether it is data; "
            "rename it or move it out of the dataset (fieldcrypt neither skips nor protects it)"
        )
    return MARKER


def _starts_with_parquet_magic(store: LakeStore, rel: str) -> bool:
    """The first 4 bytes (one ranged read): every Parquet file starts (and ends) with `PAR1`."""
    with store.open_input(rel) as handle:
        return bool(handle.read(4) == PARQUET_MAGIC)
