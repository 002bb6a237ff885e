"""Where a declared dataset's partitions and files are in the lake (Hive layout, any engine).

A dataset lives under `<lake>/<path>/`. A partitioned dataset has one Hive directory
level per declared key (`date=2026-11-28/`, `dt=2026-11-28/hour=13/`,
`dt=2026-11-28-13/`, `month=2026-11/`); an unpartitioned one keeps its files directly
under its path. A partition is every data file below its directory, whatever its name
and however deep (Spark's `part-00000-<uuid>-c000.snappy.parquet`, DuckDB's
`data_0.parquet`, pandas' `<uuid>.parquet`, ...). Every file under the dataset is
classified by `fieldcrypt.lake.inventory` (data, engine marker, checksum, summary file,
fieldcrypt temp, table log); a file that may hold data but is neither is refused by name,
never skipped, and a Delta or Iceberg table declared as a Hive folder is refused
(`fieldcrypt.lake.table_formats`).

A dataset declared `kind: delta` or `kind: iceberg` (`source`) is not listed by directory: its
partitions and files come from the table's log (fieldcrypt.lake.tables), its partition keys
are the table's partition values rendered `key=value/...`.

Partition keys are canonical per granularity, and are what Dagster's partitions use:
daily `2026-11-28`, hourly `2026-11-28T13`, monthly `2026-11`. A null partition value, as
Spark and Hive write it (`date=__HIVE_DEFAULT_PARTITION__/`, every level null), is the
partition `__HIVE_DEFAULT_PARTITION__`, sorted before every other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fieldcrypt.errors import InputError
from fieldcrypt.lake.inventory import DATA, PUBLISHED, TEMP, Entry, Inventory, classify, is_hidden
from fieldcrypt.lake.store import TEMP_MARKER, FileVersion, LakeStore
from fieldcrypt.lake.table_formats import refuse_table_format
from fieldcrypt.lake.tables.base import HIVE_KIND, NEW_FILE_PREFIX, TableFormat, TableSource
from fieldcrypt.lake.tables.open import open_table
from fieldcrypt.policy.policy import DatasetSpec

GRANULARITIES = ("daily", "hourly", "monthly", "none")
KEY_FORMATS = {"daily": "%Y-%m-%d", "hourly": "%Y-%m-%dT%H", "monthly": "%Y-%m"}
KEY_EXAMPLES = {"daily": "2026-11-28", "hourly": "2026-11-28T13", "monthly": "2026-11"}
# The directory format used when a level is declared by its key name alone.
DEFAULT_LEVEL_FORMATS = {"daily": "%Y-%m-%d", "hourly": "%Y-%m-%d-%H", "monthly": "%Y-%m"}
_HIVE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Why a key starting with `_` cannot be a level: its directories would be hidden.
HIDDEN_KEY_REASON = (
    "engines (Spark, pyarrow, DuckDB) skip directories whose name starts with '_' or '.', so its partitions "
    "would be invisible; rename the key"
)
# The directory value Spark and Hive write for a null partition value; its partition's key.
HIVE_DEFAULT_PARTITION = "__HIVE_DEFAULT_PARTITION__"
# Which fields each granularity's levels must cover between them, exactly once.
_FIELDS = {"daily": {"Y", "m", "d"}, "hourly": {"Y", "m", "d", "H"}, "monthly": {"Y", "m"}}
# Directives of a level format: zero-padded (%m) or, as Spark and DuckDB write integers, not (%-m).
_DIRECTIVE = re.compile(r"%(-?)([YmdH])|%(.)")
_WIDTH = {"Y": 4, "m": 2, "d": 2, "H": 2}


def _directives(fmt: str) -> list[tuple[bool, str]]:
    """(padded, field) of each directive of a level format; a named error for anything else."""
    found = []
    for match in _DIRECTIVE.finditer(fmt):
        if match.group(3) is not None:
            raise InputError(f"format {fmt!r}: only %Y, %m, %d, %H (or unpadded %-m, %-d, %-H) are supported")
        found.append((match.group(1) != "-", match.group(2)))
    return found


def _value_pattern(fmt: str) -> re.Pattern[str]:
    """A regex reading a level value written with `fmt`, one group per field."""
    parts, at = [], 0
    for match in _DIRECTIVE.finditer(fmt):
        parts.append(re.escape(fmt[at : match.start()]))
        padded, name = match.group(1) != "-", match.group(2)
        digits = f"\\d{{{_WIDTH[name]}}}" if padded or name == "Y" else "[1-9]\\d?|0"
        parts.append(f"(?P<{name}>{digits})")
        at = match.end()
    parts.append(re.escape(fmt[at:]))
    return re.compile("".join(parts))


def _write_value(fmt: str, moment: datetime) -> str:
    def field(match: re.Match[str]) -> str:
        padded, name = match.group(1) != "-", match.group(2)
        value = {"Y": moment.year, "m": moment.month, "d": moment.day, "H": moment.hour}[name]
        return f"{value:0{_WIDTH[name]}d}" if padded else str(value)

    return _DIRECTIVE.sub(field, fmt)


@dataclass(frozen=True)
class HiveLevel:
    """One directory level `key=value`, the value written with a strftime format."""

    key: str
    format: str


@dataclass(frozen=True)
class Partitioning:
    """How a dataset is split into partitions: a granularity and its Hive directory levels."""

    granularity: str = "daily"
    levels: tuple[HiveLevel, ...] = (HiveLevel("date", "%Y-%m-%d"),)

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise InputError(f"granularity {self.granularity!r} is not one of {', '.join(GRANULARITIES)}")
        if self.granularity == "none":
            if self.levels:
                raise InputError("an unpartitioned dataset has no partition levels")
            return
        if not self.levels:
            raise InputError(f"a {self.granularity} dataset needs at least one partition level")
        used: list[str] = []
        for level in self.levels:
            if not _HIVE_KEY.fullmatch(level.key):
                raise InputError(f"partition key {level.key!r} must be letters, digits and underscores")
            if is_hidden(level.key):
                raise InputError(f"partition key {level.key!r} starts with '_': {HIDDEN_KEY_REASON}")
            directives = [name for _, name in _directives(level.format)]
            if not directives:
                raise InputError(f"partition level {level.key}: format {level.format!r} has no %Y, %m, %d or %H")
            used += directives
        if sorted(used) != sorted(_FIELDS[self.granularity]):
            raise InputError(
                f"{self.granularity} partition levels {', '.join(f'{lv.key}={lv.format}' for lv in self.levels)} "
                f"must spell {' '.join('%' + f for f in sorted(_FIELDS[self.granularity]))} exactly once"
            )
        if len({level.key for level in self.levels}) != len(self.levels):
            raise InputError("partition level keys must be distinct")

    @property
    def partitioned(self) -> bool:
        return self.granularity != "none"

    def parse_key(self, key: str) -> datetime:
        """The start of the partition a canonical key names; a named error for anything else."""
        if not self.partitioned:
            raise InputError(f"the dataset is not partitioned; partition {key!r} does not apply")
        if key == HIVE_DEFAULT_PARTITION:
            return datetime.min.replace(tzinfo=UTC)  # sorts before every partition with a value
        fmt = KEY_FORMATS[self.granularity]
        try:
            moment = datetime.strptime(key, fmt).replace(tzinfo=UTC)
        except (ValueError, TypeError):
            moment = None
        if moment is None or moment.strftime(fmt) != key:
            example = KEY_EXAMPLES[self.granularity]
            raise InputError(f"partition {key!r} is not a valid {self.granularity} partition key (like {example})")
        return moment

    def key_of(self, moment: datetime) -> str:
        return moment.strftime(KEY_FORMATS[self.granularity])

    def directory(self, key: str) -> str:
        """The Hive directory of a partition, relative to the dataset: `dt=2026-11-28/hour=13`."""
        moment = self.parse_key(key)
        if key == HIVE_DEFAULT_PARTITION:
            return "/".join(f"{level.key}={HIVE_DEFAULT_PARTITION}" for level in self.levels)
        return "/".join(f"{level.key}={_write_value(level.format, moment)}" for level in self.levels)

    def key_of_directories(self, parts: list[str], where: str) -> str:
        """The canonical key of a file's leading directories (exactly `len(levels)` of them)."""
        nulls = [part.partition("=")[2] == HIVE_DEFAULT_PARTITION for part in parts]
        if all(nulls):
            for part, level in zip(parts, self.levels, strict=True):
                if part.partition("=")[0] != level.key:
                    raise InputError(f"{where}: directory {part!r} is not the partition level {level.key}=...")
            return HIVE_DEFAULT_PARTITION
        if any(nulls):
            raise InputError(
                f"{where}: {'/'.join(parts)} has a null ({HIVE_DEFAULT_PARTITION}) value at some levels only; "
                "a partition is null at every level or at none"
            )
        fields: dict[str, int] = {}
        for part, level in zip(parts, self.levels, strict=True):
            name, sep, value = part.partition("=")
            if not sep or name != level.key:
                raise InputError(f"{where}: directory {part!r} is not the partition level {level.key}=...")
            match = _value_pattern(level.format).fullmatch(value)
            if match is None:
                declared = f"{level.key}={level.format}"
                raise InputError(f"{where}: {part!r} does not match the declared partition level {declared}")
            fields.update({field: int(text) for field, text in match.groupdict().items()})
        try:
            moment = datetime(fields["Y"], fields.get("m", 1), fields.get("d", 1), fields.get("H", 0), tzinfo=UTC)
        except ValueError:
            raise InputError(f"{where}: {'/'.join(parts)} is not a valid {self.granularity} partition") from None
        return self.key_of(moment)


UNPARTITIONED = "(unpartitioned)"


def partition_label(partition: str | None) -> str:
    """A partition key for people: the key, or `(unpartitioned)` for an unpartitioned dataset."""
    return UNPARTITIONED if partition is None else partition


@dataclass(frozen=True)
class DatasetLayout:
    """A declared dataset: how its rows are read (spec) and where its files are (path, partitioning)."""

    spec: DatasetSpec
    path: str
    partitioning: Partitioning = field(default_factory=Partitioning)
    attributes: Mapping[str, str] = field(default_factory=dict)  # expected protected attributes -> mask
    partitions_start: datetime | None = None  # first partition (Dagster's partitions definition)
    partitions_end: datetime | None = None  # first moment not in the set; None: up to now
    source: TableSource | None = None  # kind: delta / iceberg; None: a Hive folder

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return HIVE_KIND if self.source is None else self.source.kind

    def table(self, store: LakeStore) -> TableFormat | None:
        """The dataset's table format (its log not read yet); None for a Hive folder."""
        return None if self.source is None else open_table(store, self.source, self.name)

    def check_partition(self, partition: str | None) -> None:
        """A named error for a partition key that does not fit the declaration."""
        if self.source is not None:  # the table's own partition values: checked against its log when listed
            if partition is not None and "=" not in partition:
                raise InputError(
                    f"partition {partition!r} of {self.name} is not a {self.kind} table partition (key=value/...)"
                )
            return
        if self.partitioning.partitioned:
            if partition is None:
                granularity = self.partitioning.granularity
                raise InputError(f"dataset {self.name} is partitioned {granularity}; name a partition")
            self.partitioning.parse_key(partition)
        elif partition is not None:
            raise InputError(f"dataset {self.name} is not partitioned; partition {partition!r} does not apply")

    def partition_dir(self, partition: str | None) -> str:
        self.check_partition(partition)
        if partition is None:
            return self.path
        if self.source is not None:
            return f"{self.path}/{partition}"
        return f"{self.path}/{self.partitioning.directory(partition)}"

    def files(self, store: LakeStore, partition: str | None) -> list[str]:
        """The data files of one partition (relative to the lake), sorted; empty for an empty partition."""
        self.check_partition(partition)
        table = self.table(store)
        if table is not None:
            return table.partitions(table.snapshot()).get(partition, [])
        return self.inventory(store, partition).files

    def partitions(self, store: LakeStore, listing: Iterable[str] | None = None) -> dict[str | None, list[str]]:
        """Every partition that has data files -> its files, oldest partition first (one listing, or
        `listing`: the files below the dataset's path, e.g. the keys of `store.list_file_versions`)."""
        table = self.table(store)
        found = table.partitions(table.snapshot()) if table is not None else self.inventory(store, listing=listing).data
        return {key: found[key] for key in sorted(found, key=self._order)}

    def inventory(
        self, store: LakeStore, partition: str | None = None, *, listing: Iterable[str] | None = None
    ) -> Inventory:
        """Every file under the dataset (or, given a `partition`, under its directory), classified.

        A Delta or Iceberg table, a file that may hold data below a hidden directory and a data
        file outside the declared partition levels are InputErrors naming them.
        """
        table = self.table(store)
        if table is not None:
            return self._table_inventory(store, table, partition)
        whole = partition is None and self.partitioning.partitioned
        directory = self.path if whole else self.partition_dir(partition)
        found: dict[str, FileVersion | None] = (
            dict(store.list_all(directory)) if listing is None else dict.fromkeys(listing)
        )
        refuse_table_format(store, self.name, directory, found)
        keys: dict[tuple[str, ...], str] = {}  # a partition's directories are parsed once, not once per file
        return classify(
            store, self.name, self.path, found, lambda rel, parts: self._partition_of(store, rel, parts, keys)
        )

    def _table_inventory(self, store: LakeStore, table: TableFormat, partition: str | None) -> Inventory:
        """A table's live files (from its log) and the temporary files dead runs left beside them."""
        self.check_partition(partition)
        found = table.partitions(table.snapshot())
        wanted = found if partition is None else {partition: found.get(partition, [])}
        entries = [Entry(rel, DATA, key) for key, files in wanted.items() for rel in files]
        # Temporary files are made beside the file they replace: below the partition's directory (Delta), or in
        # the data files' own folders (Iceberg: `<table>/data/<partition>/`, or wherever its location provider
        # put them).
        directory = self.partition_dir(partition)
        folders = {rel.rpartition("/")[0] for files in wanted.values() for rel in files}
        listed: dict[str, FileVersion] = {}
        for folder in [directory, *sorted(f for f in folders if f != directory and not f.startswith(f"{directory}/"))]:
            listed.update(store.list_all(folder))
        live = {rel for files in found.values() for rel in files}
        for rel, version in sorted(listed.items()):
            name = rel.rpartition("/")[2]
            if name.startswith(".") and TEMP_MARKER in name:
                entries.append(Entry(rel, TEMP, partition, version))
            elif name.startswith(NEW_FILE_PREFIX) and rel not in live:  # kept for time travel, or never committed
                entries.append(Entry(rel, PUBLISHED, partition, version))
        return Inventory(self.name, entries)

    def _partition_of(
        self, store: LakeStore, rel: str, parts: list[str], keys: dict[tuple[str, ...], str]
    ) -> str | None:
        if not self.partitioning.partitioned:
            return None
        levels = len(self.partitioning.levels)
        if len(parts) <= levels:
            raise InputError(
                f"{store.display(rel)} is not inside a partition directory of {self.name} "
                f"({'/'.join(f'{lv.key}=...' for lv in self.partitioning.levels)})"
            )
        directories = tuple(parts[:levels])
        if directories not in keys:
            keys[directories] = self.partitioning.key_of_directories(list(directories), store.display(rel))
        return keys[directories]

    @staticmethod
    def _order(key: str | None) -> tuple[bool, str]:
        """Oldest first: canonical keys sort by time as text; the null partition before them all."""
        return (key != HIVE_DEFAULT_PARTITION, key or "")
