"""What `enable` checks against the catalog and the data before it records an (irreversible) enablement.

An enabled attribute can never be dropped, so a typo must be refused before it is recorded:
an attribute the catalog's `attributes:` list does not declare (every later protection of the
dataset would refuse it), and a map key that no row of the newest partition has.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.errors import InputError, PolicyError
from fieldcrypt.lake.parquet_io import open_parquet
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.layout import DatasetLayout
from fieldcrypt.policy.policy import AttributePolicy

ALLOW_ABSENT_KEY = "--allow-absent-key"


def check_declared(layout: DatasetLayout, entry: AttributePolicy, catalog_path: str | None) -> None:
    """Refuse an attribute the catalog's `attributes:` of its dataset does not list (when it lists any)."""
    if not layout.attributes or entry.path in layout.attributes:
        return
    where = f"the catalog ({catalog_path})" if catalog_path else "the catalog"
    raise PolicyError(
        f"{entry.name} is not declared in {where}: dataset {layout.name} lists attributes "
        f"{', '.join(sorted(layout.attributes))}; add it there first (enabling is irreversible)"
    )


def check_map_key_occurs(store: LakeStore, files: Iterable[str], entry: AttributePolicy, partition: str) -> None:
    """Refuse a map attribute whose key no row of `files` (the newest partition) has: likely a typo."""
    parsed = entry.parsed_path
    if parsed.map_key is None:
        return
    for rel in files:
        with open_parquet(store, rel) as parquet:
            for index in range(parquet.num_row_groups):
                column = parquet.read_row_group(index, columns=[parsed.column]).column(0)
                if any(_has_key(chunk, parsed.names[1:], parsed.map_key) for chunk in column.chunks):
                    return
    raise InputError(
        f"no row of the newest partition ({partition}) of {entry.dataset} has the map key {parsed.map_key!r} in "
        f"{'.'.join(parsed.names)}: {entry.name} would be enabled for a key that does not occur (a typo is "
        f"irreversible); check the key, or pass {ALLOW_ABSENT_KEY} (Dagster: allow_absent_key) if it only occurs "
        "in data not landed yet"
    )


def _has_key(array: pa.Array, names: tuple[str, ...], key: str) -> bool:
    for name in names:
        array = array.field(name)
    keys = array.keys
    if pa.types.is_dictionary(keys.type):
        keys = keys.dictionary_decode()
    return bool(pc.any(pc.equal(keys, pa.scalar(key, keys.type))).as_py())
