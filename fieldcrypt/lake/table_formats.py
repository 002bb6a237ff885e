"""Delta Lake and Iceberg tables declared as Hive folders are refused by name: their logs would go stale under a
file-by-file rewrite. Declared `kind: delta` / `kind: iceberg`, they are protected through their own commits
(fieldcrypt.lake.tables).

A table format keeps, outside the data files, a log of which files make the table with
their sizes and column statistics (Delta `_delta_log/`, Iceberg `metadata/`). Rewriting a
data file in place breaks its readers (stale sizes, columns without field ids) and leaves
the plaintext of protected cells in the log's statistics, so a dataset that is one, or
lies inside one, is refused before anything is read or written.

Where the log can be, relative to the declared dataset directory:
- below it (the catalog points at the table's root, or at a folder holding tables): seen in
  the dataset's own listing;
- at one of its ancestors up to the lake root (the catalog points at the table's `data/`
  folder or a partition below its root): probed with one `get_file_info` call over
  `<dir>/_delta_log` and `<dir>/metadata` for each ancestor, plus one listing of a
  `metadata/` folder found there (to tell an Iceberg table from a folder named `metadata`).
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow.fs as pafs

from fieldcrypt.errors import InputError
from fieldcrypt.lake.inventory import DELTA_LOG_DIR, ICEBERG_METADATA_DIR, is_iceberg_metadata_file
from fieldcrypt.lake.store import LakeStore

DELTA = "Delta"
ICEBERG = "Iceberg"


def refuse_table_format(store: LakeStore, dataset: str, directory: str, listing: Iterable[str]) -> None:
    """InputError naming the table format when `directory` (a dataset's, or one of its partitions') is in
    or holds a Delta or Iceberg table. `listing`: the files below `directory`, relative to the lake."""
    found = _in_listing(directory, listing) or _at_or_above(store, directory)
    if found is not None:
        kind, log = found
        name, article, declare = (
            ("_delta_log", "a", "kind: delta with its table root as path")
            if kind == DELTA
            else ("metadata/", "an", "kind: iceberg with its table identifier and catalog")
        )
        raise InputError(
            f"{dataset} is {article} {kind} table ({name} at {store.display(log)}): it cannot be rewritten file "
            f"by file (its log's sizes and statistics would go stale); declare it {declare}; fieldcrypt read and "
            "wrote nothing of it"
        )


def _in_listing(directory: str, listing: Iterable[str]) -> tuple[str, str] | None:
    depth = directory.count("/") + 1 if directory else 0
    for rel in listing:
        parts = rel.split("/")
        below = parts[depth:-1]
        if DELTA_LOG_DIR in below:
            return DELTA, "/".join(parts[: depth + below.index(DELTA_LOG_DIR) + 1])
        if below and below[-1] == ICEBERG_METADATA_DIR and is_iceberg_metadata_file(parts[-1]):
            return ICEBERG, "/".join(parts[:-1])
    return None


def _at_or_above(store: LakeStore, directory: str) -> tuple[str, str] | None:
    # `directory` itself is covered by its listing (`_in_listing`): its ancestors only, nearest first.
    parts = directory.split("/") if directory else []
    folders = ["/".join(parts[:end]) for end in range(len(parts) - 1, -1, -1)]
    probes = [_join(folder, name) for folder in folders for name in (DELTA_LOG_DIR, ICEBERG_METADATA_DIR)]
    infos = store.filesystem.get_file_info([store.full_path(probe) for probe in probes])
    for probe, info in zip(probes, infos, strict=True):
        if info.type != pafs.FileType.Directory:
            continue
        if probe.rpartition("/")[2] == DELTA_LOG_DIR:
            return DELTA, probe
        selector = pafs.FileSelector(store.full_path(probe), recursive=False, allow_not_found=True)
        if any(is_iceberg_metadata_file(entry.base_name) for entry in store.filesystem.get_file_info(selector)):
            return ICEBERG, probe
    return None


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name
