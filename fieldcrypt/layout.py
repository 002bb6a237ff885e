"""Where a declared dataset's partitions and files are in the lake (Hive layout, any engine).

A dataset lives under `<lake>/<path>/`. A partitioned dataset has one Hive directory
level per declared key (`date=2026-11-28/`, `dt=2026-11-28/hour=13/`,
`dt=2026-11-28-13/`, `month=2026-11/`); an unpartitioned one keeps its files directly
under its path. A partition is every data file below its directory, whatever its name
and however deep (Spark's `part-00000-<uuid>-c000.snappy.parquet`, DuckDB's
`data_0.parquet`, pandas' `<uuid>.parquet`, ...), skipping what engines leave beside
data: names starting with `.` or `_` (`_SUCCESS`, `_committed_*`, `.crc` siblings,
`_temporary/`, fieldcrypt's own hidden temporary files) and `*.crc`. Anything else is
data and must be Parquet: a stray file is reported when it is read, never skipped.

Partition keys are canonical per granularity, and are what Dagster's partitions use:
daily `2026-11-28`, hourly `2026-11-28T13`, monthly `2026-11`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fieldcrypt.errors import InputError
from fieldcrypt.policy import DatasetSpec
from fieldcrypt.store import LakeStore

GRANULARITIES = ("daily", "hourly", "monthly", "none")
KEY_FORMATS = {"daily": "%Y-%m-%d", "hourly": "%Y-%m-%dT%H", "monthly": "%Y-%m"}
KEY_EXAMPLES = {"daily": "2026-11-28", "hourly": "2026-11-28T13", "monthly": "2026-11"}
# The directory format used when a level is declared by its key name alone.
DEFAULT_LEVEL_FORMATS = {"daily": "%Y-%m-%d", "hourly": "%Y-%m-%d-%H", "monthly": "%Y-%m"}
_HIVE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Which strftime fields each granularity's levels must cover between them, exactly.
_FIELDS = {"daily": {"Y", "m", "d"}, "hourly": {"Y", "m", "d", "H"}, "monthly": {"Y", "m"}}
_DIRECTIVE = re.compile(r"%(.)")


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
            directives = _DIRECTIVE.findall(level.format)
            if not directives or any(d not in "YmdH" for d in directives):
                raise InputError(
                    f"partition level {level.key}: format {level.format!r} may only use %Y, %m, %d and %H"
                )
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
        return "/".join(f"{level.key}={moment.strftime(level.format)}" for level in self.levels)

    def key_of_directories(self, parts: list[str], where: str) -> str:
        """The canonical key of a file's leading directories (exactly `len(levels)` of them)."""
        values = []
        for part, level in zip(parts, self.levels, strict=True):
            name, sep, value = part.partition("=")
            if not sep or name != level.key:
                raise InputError(f"{where}: directory {part!r} is not the partition level {level.key}=...")
            values.append(value)
        fmt = "\x00".join(level.format for level in self.levels)
        joined = "\x00".join(values)
        try:
            moment = datetime.strptime(joined, fmt).replace(tzinfo=UTC)
        except ValueError:
            moment = None
        # Strict: the directory must be exactly what the format writes (no "hour=3" for "%H").
        if moment is None or moment.strftime(fmt) != joined:
            expected = "/".join(f"{level.key}={level.format}" for level in self.levels)
            raise InputError(f"{where}: {'/'.join(parts)} does not match the declared partitioning {expected}")
        return self.key_of(moment)


UNPARTITIONED = "(unpartitioned)"


def partition_label(partition: str | None) -> str:
    """A partition key for people: the key, or `(unpartitioned)` for an unpartitioned dataset."""
    return UNPARTITIONED if partition is None else partition


def is_engine_marker(name: str) -> bool:
    """Files and directories engines leave beside data, never data themselves."""
    return name.startswith((".", "_")) or name.endswith(".crc")


@dataclass(frozen=True)
class DatasetLayout:
    """A declared dataset: how its rows are read (spec) and where its files are (path, partitioning)."""

    spec: DatasetSpec
    path: str
    partitioning: Partitioning = field(default_factory=Partitioning)
    attributes: Mapping[str, str] = field(default_factory=dict)  # expected protected attributes -> mask
    partitions_start: datetime | None = None  # first partition (Dagster's partitions definition)
    partitions_end: datetime | None = None  # first moment not in the set; None: up to now

    @property
    def name(self) -> str:
        return self.spec.name

    def check_partition(self, partition: str | None) -> None:
        """A named error for a partition key that does not fit the declaration."""
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
        return f"{self.path}/{self.partitioning.directory(partition)}"

    def files(self, store: LakeStore, partition: str | None) -> list[str]:
        """The data files of one partition (relative to the lake), sorted; empty for an empty partition."""
        directory = self.partition_dir(partition)
        depth = directory.count("/") + 1
        return [rel for rel in store.list_files(directory) if not _skipped(rel.split("/")[depth:])]

    def partitions(self, store: LakeStore) -> dict[str | None, list[str]]:
        """Every partition that has data files -> its files, oldest partition first (one listing)."""
        found: dict[str | None, list[str]] = {}
        depth = self.path.count("/") + 1
        levels = len(self.partitioning.levels)
        for rel in store.list_files(self.path):
            parts = rel.split("/")[depth:]
            if _skipped(parts):
                continue
            if not self.partitioning.partitioned:
                found.setdefault(None, []).append(rel)
                continue
            if len(parts) <= levels:
                raise InputError(
                    f"{store.display(rel)} is not inside a partition directory of {self.name} "
                    f"({'/'.join(f'{lv.key}=...' for lv in self.partitioning.levels)})"
                )
            key = self.partitioning.key_of_directories(parts[:levels], store.display(rel))
            found.setdefault(key, []).append(rel)
        return {key: sorted(found[key]) for key in sorted(found, key=lambda k: k or "")}


def _skipped(parts: list[str]) -> bool:
    return any(is_engine_marker(part) for part in parts)
