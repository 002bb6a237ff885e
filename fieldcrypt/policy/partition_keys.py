"""Primary keys unique per partition, across its files (a file's own rows: fieldcrypt.policy.select.UniqueRowKeys).

The primary key is what binds a cell to its row (docs/FORMAT.md section 3). Two rows with
one key in two files of a partition - a duplicated landing, or a row copied from another
file - would let their cells be swapped undetected, so a partition whose protected or
to-be-protected rows repeat a key across files is refused by name before anything is written.

Cost: only partitions of two or more files pay it - one extra read of the key, ingestion
and attribute columns of each file, and the involved rows' keys in memory (8 bytes a row
for a single integer key, the key's bytes otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.errors import InputError
from fieldcrypt.format.columns import row_key_bytes
from fieldcrypt.lake.parquet_io import open_parquet, row_groups
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec
from fieldcrypt.policy.select import select_rows


def check_unique_across_files(
    store: LakeStore, files: Sequence[str], dataset: DatasetSpec, attributes: Sequence[AttributePolicy], where: str
) -> None:
    """InputError naming both files and rows when an involved row's primary key occurs in two files."""
    if len(files) < 2 or not dataset.primary_key or not attributes:
        return
    per_file = [_involved_keys(store, rel, dataset, attributes) for rel in files]
    if not any(len(found) for found in per_file):
        return
    if len({found.type for found in per_file}) > 1:
        raise InputError(f"{where}: the primary key of {dataset.name} has different types in different files")
    everything = pa.chunked_array(per_file, per_file[0].type)
    counted = pc.value_counts(everything)
    repeated = pc.filter(counted.field("values"), pc.greater(counted.field("counts"), 1))
    if not len(repeated):
        return
    key = repeated[0]
    holders = [rel for rel, found in zip(files, per_file, strict=True) if pc.any(pc.equal(found, key)).as_py()]
    if len(holders) < 2:
        return  # repeated within one file: the file's own check (UniqueRowKeys) names it when it is protected
    raise InputError(
        f"{where}: primary key ({', '.join(dataset.primary_key)}) of {dataset.name} repeats across files "
        f"{store.display(holders[0])} and {store.display(holders[1])}; keys must be unique per partition (a "
        "repeated key would let two rows' cells be swapped undetected); nothing was written"
    )


def _involved_keys(store: LakeStore, rel: str, dataset: DatasetSpec, attributes: Sequence[AttributePolicy]) -> pa.Array:
    """The keys of a file's rows that are protected or to be protected (int64, or canonical key bytes)."""
    where = store.display(rel)
    single_integer = None
    found: list[pa.Array] = []
    with open_parquet(store, rel) as parquet:
        schema = parquet.schema_arrow
        wanted = {*dataset.primary_key, dataset.ingested_at}
        for attribute in attributes:
            wanted |= {attribute.column, attribute.ciphertext_column, attribute.wrapped_key_column}
        columns = [name for name in schema.names if name in wanted]
        if len(dataset.primary_key) == 1 and dataset.primary_key[0] in schema.names:
            single_integer = pa.types.is_signed_integer(schema.field(dataset.primary_key[0]).type)
        for index, batch in enumerate(row_groups(parquet, where, columns)):
            at = f"{where} row group {index}"
            involved = pa.array([False] * batch.num_rows, pa.bool_())
            for attribute in attributes:
                rows = select_rows(batch, dataset, attribute, at)
                involved = pc.or_(involved, pc.or_(rows.selected, pc.is_valid(rows.existing_ciphertext)))
            if single_integer:
                keys = batch.column(dataset.primary_key[0]).cast(pa.int64())
            else:
                keys = row_key_bytes(batch, dataset.primary_key, at).cast(pa.binary())
            found.append(pc.drop_null(pc.filter(keys, involved)))
    kind = pa.int64() if single_integer else pa.binary()
    return pa.concat_arrays(found) if found else pa.array([], kind)
