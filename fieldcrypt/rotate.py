"""Rewrapping one partition file under the current master key (rotation).

Only the dictionaries of the `<attr>__fc_dek` columns change: each distinct wrapped
data key not yet under the current master key is rewrapped once (KMS calls scale with
distinct data keys, not rows) and the dictionary is mapped through that table. Every
other byte of every other column, ciphertext included, is carried over and verified
identical before the atomic replace. A file already under the current key is skipped.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fieldcrypt.cache import DataKeyCache
from fieldcrypt.errors import VerificationError
from fieldcrypt.parquet_io import open_parquet, protected_writer, row_groups
from fieldcrypt.policy import AttributePolicy, DatasetSpec
from fieldcrypt.reveal import decrypt_rows
from fieldcrypt.store import LakeStore
from fieldcrypt.wrapped_key import WrappedKey

_SAMPLE_PER_KEY = 8


@dataclass
class RotateReport:
    path: str
    rows: int = 0
    distinct_data_keys: int = 0
    rewrapped: int = 0
    cells_under_rewrapped_keys: int = 0
    rewritten: bool = False
    kms_calls: int = 0
    master_keys_before: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def wrapped_key_refs(store: LakeStore, rel: str, attributes: Sequence[AttributePolicy]) -> dict[bytes, str]:
    """Every distinct stored wrapped key of the file -> the master key (ref) that wrapped it."""
    found: dict[bytes, str] = {}
    with open_parquet(store, rel) as parquet:
        columns = [a.wrapped_key_column for a in attributes if a.wrapped_key_column in parquet.schema_arrow.names]
        if not columns:
            return found
        for batch in row_groups(parquet, store.display(rel), columns=columns):
            for column in batch.columns:
                for value in pc.unique(_decoded(column).drop_null()).to_pylist():
                    if value not in found:
                        found[value] = WrappedKey.from_bytes(value).master_key_ref
    return found


def rotate_file(
    store: LakeStore,
    rel: str,
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    cache: DataKeyCache,
    *,
    partition: str | None = None,
) -> RotateReport:
    started = time.perf_counter()
    calls_before = cache.calls.total
    where = store.display(rel)
    report = RotateReport(where)
    original_version = store.version(rel)
    refs = wrapped_key_refs(store, rel, attributes)
    report.distinct_data_keys = len(refs)
    for ref in refs.values():
        report.master_keys_before[ref] = report.master_keys_before.get(ref, 0) + 1
    stale = [value for value in refs if not cache.is_current(value)]
    if not stale:
        report.seconds = time.perf_counter() - started
        return report
    owner = _owners(store, rel, attributes, set(stale))
    mapping = {value: cache.rewrap(value, dataset.name, owner[value].path, partition) for value in stale}
    report.rewrapped = len(mapping)

    temp = store.temp_path(rel)
    try:
        with open_parquet(store, rel) as source:
            schema = source.schema_arrow
            with store.open_output(temp) as sink, protected_writer(sink, schema, source, list(attributes)) as writer:
                for batch in row_groups(source, where):
                    report.rows += batch.num_rows
                    for attribute in attributes:
                        batch = _map_wrapped_keys(batch, attribute, mapping)
                    writer.write_batch(batch, row_group_size=max(batch.num_rows, 1))
            with open_parquet(store, temp) as written:
                report.cells_under_rewrapped_keys = _verify_rotation(
                    source, written, dataset, attributes, mapping, cache, where, partition
                )
        if store.version(rel) != original_version:
            raise VerificationError(f"{where} changed while it was being rotated; nothing was replaced, run again")
        store.replace(temp, rel)
    finally:
        store.delete(temp)
    if cache.audit is not None:
        cache.audit.record(
            "rotate_partition",
            dataset=dataset.name,
            partition=partition,
            data_keys=len(mapping),
            cells=report.cells_under_rewrapped_keys,
            master_key=cache.master_key.ref,
        )
    report.rewritten = True
    report.kms_calls = cache.calls.total - calls_before
    report.seconds = time.perf_counter() - started
    return report


def _decoded(column: pa.Array) -> pa.Array:
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def _owners(
    store: LakeStore, rel: str, attributes: Sequence[AttributePolicy], values: set[bytes]
) -> dict[bytes, AttributePolicy]:
    """Which attribute each wrapped key belongs to (its encryption context names the attribute)."""
    owner: dict[bytes, AttributePolicy] = {}
    with open_parquet(store, rel) as parquet:
        for attribute in attributes:
            if attribute.wrapped_key_column not in parquet.schema_arrow.names:
                continue
            for batch in row_groups(parquet, store.display(rel), columns=[attribute.wrapped_key_column]):
                for value in pc.unique(_decoded(batch.column(0)).drop_null()).to_pylist():
                    if value in values:
                        owner.setdefault(value, attribute)
    return owner


def _map_wrapped_keys(batch: pa.RecordBatch, attribute: AttributePolicy, mapping: dict[bytes, bytes]) -> pa.RecordBatch:
    index = batch.schema.get_field_index(attribute.wrapped_key_column)
    if index < 0:
        return batch
    column = batch.column(index)
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    dictionary = [mapping.get(v, v) for v in column.dictionary.to_pylist()]
    new = pa.DictionaryArray.from_arrays(column.indices, pa.array(dictionary, pa.binary()))
    return batch.set_column(index, batch.schema.field(index).with_type(new.type), new)


def _verify_rotation(
    source: pq.ParquetFile,
    written: pq.ParquetFile,
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    mapping: dict[bytes, bytes],
    cache: DataKeyCache,
    where: str,
    partition: str | None,
) -> int:
    """Everything but the wrapped keys byte-identical; every new wrapped key unwraps and decrypts a sample.

    The ciphertexts are proven unchanged, so a sample authenticating under the new
    wrapped key proves it holds the same data key. Returns the cells under new keys.
    """
    if written.metadata.num_rows != source.metadata.num_rows:
        raise VerificationError(
            f"{where}: rotation rewrite has {written.metadata.num_rows} rows, original {source.metadata.num_rows}"
        )
    rng = random.SystemRandom()
    new_values = pa.array(list(mapping.values()), pa.binary())
    cells = 0
    sampled: set[bytes] = set()
    for index, (before, after) in enumerate(zip(row_groups(source, where), row_groups(written, where), strict=True)):
        at = f"{where} row group {index}"
        restored = after
        for attribute in attributes:
            column_at = after.schema.get_field_index(attribute.wrapped_key_column)
            if column_at >= 0:
                old = before.column(attribute.wrapped_key_column)
                restored = restored.set_column(column_at, before.schema.field(attribute.wrapped_key_column), old)
        if not restored.equals(before):
            raise VerificationError(f"{at}: rotation changed a column other than the wrapped keys")
        for attribute in attributes:
            if after.schema.get_field_index(attribute.wrapped_key_column) < 0:
                continue
            old_keys = _decoded(before.column(attribute.wrapped_key_column))
            new_keys = _decoded(after.column(attribute.wrapped_key_column))
            expected = pa.array([None if v is None else mapping.get(v, v) for v in old_keys.to_pylist()], pa.binary())
            if not new_keys.equals(expected):
                raise VerificationError(f"{at}, {attribute.name}: a wrapped key was not mapped to its rewrap")
            cells += int(pc.sum(pc.is_in(new_keys, value_set=new_values).cast(pa.int64())).as_py() or 0)
            for new_value in set(mapping.values()) - sampled:
                rows = pc.indices_nonzero(pc.equal(new_keys, pa.scalar(new_value, pa.binary()))).to_pylist()
                if rows:
                    picked = pa.array(sorted(rng.sample(rows, min(_SAMPLE_PER_KEY, len(rows)))), pa.int64())
                    decrypt_rows(after, dataset, attribute, cache, picked, at, partition)
                    sampled.add(new_value)
    unchecked = set(mapping.values()) - sampled
    if unchecked:
        raise VerificationError(f"{where}: {len(unchecked)} rewrapped keys were not found in the rewrite")
    return cells
