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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fieldcrypt.engine.encrypt import used_wrapped_keys
from fieldcrypt.engine.rewrite import FULL, Commit, FileJob, Output, lake_commit, rewrite_file
from fieldcrypt.errors import VerificationError
from fieldcrypt.format.columns import identical as identical_values
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.lake.parquet_io import chunk_span, open_parquet, read_ahead, row_group, row_groups
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.ledger import CellDigester, LedgerStep
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec
from fieldcrypt.reads.reveal import decrypt_rows

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
    files: int = 1
    files_rewritten: int = 0
    summary_files_removed: list[str] = field(default_factory=list)  # fieldcrypt.lake.summary_files
    rewrite_path: str = ""  # "splice" or "full" (fieldcrypt.engine.rewrite); a total "+"-joins its files'

    @classmethod
    def total(cls, path: str, reports: Sequence[RotateReport]) -> RotateReport:
        """One report summing the reports of a partition's files (`rewritten` when any file was)."""
        summed = cls(path, files=len(reports))
        for report in reports:
            for counter in ("rows", "distinct_data_keys", "rewrapped", "cells_under_rewrapped_keys", "kms_calls"):
                setattr(summed, counter, getattr(summed, counter) + getattr(report, counter))
            summed.seconds += report.seconds
            summed.files_rewritten += report.files_rewritten
            summed.summary_files_removed = sorted({*summed.summary_files_removed, *report.summary_files_removed})
            paths = {*summed.rewrite_path.split("+"), *report.rewrite_path.split("+")} - {""}
            summed.rewrite_path = "+".join(sorted(paths))
            for ref, count in report.master_keys_before.items():
                summed.master_keys_before[ref] = summed.master_keys_before.get(ref, 0) + count
        summed.rewritten = summed.files_rewritten > 0
        return summed


def wrapped_key_refs(store: LakeStore, rel: str, attributes: Sequence[AttributePolicy]) -> dict[bytes, str]:
    """Every distinct stored wrapped key of the file -> the master key (ref) that wrapped it."""
    return {value: ref for value, (ref, _) in _stored_keys(store, rel, attributes).items()}


def stored_wrapped_keys(
    store: LakeStore, rel: str, attributes: Sequence[AttributePolicy]
) -> dict[bytes, AttributePolicy]:
    """Every distinct stored wrapped key of the file -> the attribute whose column holds it."""
    return {value: attribute for value, (_, attribute) in _stored_keys(store, rel, attributes).items()}


def _stored_keys(
    store: LakeStore, rel: str, attributes: Sequence[AttributePolicy]
) -> dict[bytes, tuple[str, AttributePolicy]]:
    """Every distinct wrapped key the file's rows use -> (master key ref, attribute whose column holds it).

    One pass over the wrapped-key columns only; per row group only the dictionary entries
    that rows use are looked at, never the rows' values.
    """
    found: dict[bytes, tuple[str, AttributePolicy]] = {}
    with open_parquet(store, rel) as parquet:
        present = [a for a in attributes if a.wrapped_key_column in parquet.schema_arrow.names]
        if not present:
            return found
        columns = list(dict.fromkeys(a.wrapped_key_column for a in present))
        for batch in row_groups(parquet, store.display(rel), columns=columns):
            for attribute in present:
                for value in used_wrapped_keys(batch.column(attribute.wrapped_key_column)):
                    if value not in found:
                        found[value] = (WrappedKey.from_bytes(value).master_key_ref, attribute)
    return found


def rotate_file(
    store: LakeStore,
    rel: str,
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    cache: DataKeyCache,
    *,
    dataset_root: str,
    partition: str | None = None,
    ledger: LedgerStep | None = None,
    commit: Commit = lake_commit,
) -> RotateReport:
    started = time.perf_counter()
    calls_before = cache.calls.total
    where = store.display(rel)
    report = RotateReport(where)
    original_version = store.version(rel)
    stored = _stored_keys(store, rel, attributes)
    report.distinct_data_keys = len(stored)
    for ref, _ in stored.values():
        report.master_keys_before[ref] = report.master_keys_before.get(ref, 0) + 1
    stale = [value for value in stored if not cache.is_current(value)]
    if not stale:
        with open_parquet(store, rel) as parquet:  # rows from the footer: a skipped file still counts its rows
            report.rows = parquet.metadata.num_rows
        report.seconds = time.perf_counter() - started
        return report
    mapping = {value: cache.rewrap(value, dataset.name, stored[value][1].path, partition) for value in stale}
    report.rewrapped = len(mapping)

    job = FileJob(
        store, rel, dataset, attributes, cache, dataset_root, partition, "rotate_partition", "rotated", ledger
    )

    # Rotation changes the wrapped-key columns only: on the splice path every other chunk is copied.
    key_columns = {a.wrapped_key_column for a in attributes}

    def write(source: pq.ParquetFile, out: Output) -> None:
        report.rows = 0  # may run twice (fieldcrypt.engine.rewrite.Output)
        with (
            out.writer(source, source.schema_arrow, key_columns) as writer,
            read_ahead(row_groups(source, where, out.columns(key_columns, source))) as batches,
        ):
            for batch in batches:
                report.rows += batch.num_rows
                for attribute in attributes:
                    batch = _map_wrapped_keys(batch, attribute, mapping)
                writer.write_batch(batch)

    def verify(source: pq.ParquetFile, written: pq.ParquetFile, out: Output, _: None) -> None:
        report.cells_under_rewrapped_keys = _verify_rotation(
            store,
            rel,
            out.temp,
            source,
            written,
            dataset,
            attributes,
            mapping,
            cache,
            partition,
            copies_proven=out.path != FULL,
            digester=out.cells,
        )

    _, (intent, removed), report.rewrite_path = rewrite_file(job, original_version, write, verify, commit=commit)
    if cache.audit is not None:
        cache.audit.record(
            "rotate_partition",
            dataset=dataset.name,
            partition=partition,
            data_keys=len(mapping),
            cells=report.cells_under_rewrapped_keys,
            master_key=cache.master_key.ref,
            intent=intent,
        )
    report.rewritten = True
    report.files_rewritten = 1
    report.summary_files_removed = removed
    report.kms_calls = cache.calls.total - calls_before
    report.seconds = time.perf_counter() - started
    return report


def _as_dictionary(column: pa.Array) -> pa.DictionaryArray:
    return column if pa.types.is_dictionary(column.type) else column.dictionary_encode()


def _map_wrapped_keys(batch: pa.RecordBatch, attribute: AttributePolicy, mapping: dict[bytes, bytes]) -> pa.RecordBatch:
    index = batch.schema.get_field_index(attribute.wrapped_key_column)
    if index < 0:
        return batch
    new = _mapped(_as_dictionary(batch.column(index)), mapping)
    return batch.set_column(index, batch.schema.field(index).with_type(new.type), new)


def _mapped(column: pa.DictionaryArray, mapping: dict[bytes, bytes]) -> pa.DictionaryArray:
    """The same rows with each dictionary entry mapped through `mapping` (indices untouched)."""
    dictionary = [mapping.get(v, v) if v is not None else None for v in column.dictionary.to_pylist()]
    return pa.DictionaryArray.from_arrays(column.indices, pa.array(dictionary, pa.binary()))


def _verify_rotation(
    store: LakeStore,
    rel: str,
    temp: str,
    source: pq.ParquetFile,
    written: pq.ParquetFile,
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    mapping: dict[bytes, bytes],
    cache: DataKeyCache,
    partition: str | None,
    *,
    copies_proven: bool = False,
    digester: CellDigester | None = None,
) -> int:
    """Everything but the wrapped keys identical; every new wrapped key unwraps and decrypts a sample.

    `copies_proven`: the engine proved every other column chunk copied byte for byte (the splice path),
    so they are not compared again here.

    Columns other than the wrapped keys are compared as stored bytes, column chunk by
    column chunk: identical pages decode to identical values, and no decoding is needed.
    A row group where any of them differs (say, a file written with other settings) is
    decoded from both files and compared value by value instead. The ciphertexts are so
    proven unchanged, and a sample authenticating under each new wrapped key proves it
    holds the same data key. Returns the cells under new keys. `digester`: the ledger's digester of the
    written file, fed each row group read here (with the columns it needs besides the wrapped keys).
    """
    where = store.display(rel)
    if written.metadata.num_rows != source.metadata.num_rows:
        raise VerificationError(
            f"{where}: rotation rewrite has {written.metadata.num_rows} rows, original {source.metadata.num_rows}"
        )
    if written.num_row_groups != source.num_row_groups or not written.schema.equals(source.schema):
        raise VerificationError(f"{where}: rotation rewrite changed the file's row groups or schema")
    if not written.schema_arrow.equals(source.schema_arrow, check_metadata=False):
        raise VerificationError(f"{where}: rotation rewrite changed the file's schema")
    present = [a for a in attributes if a.wrapped_key_column in source.schema_arrow.names]
    key_columns = list(dict.fromkeys(a.wrapped_key_column for a in present))
    identical = (
        [True] * source.num_row_groups
        if copies_proven
        else _identical_chunks(store, rel, temp, source.metadata, written.metadata, set(key_columns))
    )
    rng = random.SystemRandom()
    new_set = set(mapping.values())
    new_values = pa.array(list(new_set), pa.binary())
    cells = 0
    sampled: set[bytes] = set()
    for index in range(source.num_row_groups):
        at = f"{where} row group {index}"
        if not identical[index]:
            before, after = row_group(source, index, where), row_group(written, index, where)
            restored = after
            for column in key_columns:
                column_at = after.schema.get_field_index(column)
                restored = restored.set_column(column_at, before.schema.field(column), before.column(column))
            if not identical_values(restored, before):
                raise VerificationError(f"{at}: rotation changed a column other than the wrapped keys")
        if not key_columns:
            continue
        read_after = key_columns if digester is None else list(dict.fromkeys([*key_columns, *digester.columns]))
        old_keys, new_keys = row_group(source, index, where, key_columns), row_group(written, index, where, read_after)
        if digester is not None:
            digester.add(new_keys)
        if old_keys.num_rows != new_keys.num_rows:
            raise VerificationError(f"{at}: rotation rewrite has {new_keys.num_rows} rows, {old_keys.num_rows} read")
        for attribute in present:
            new = _as_dictionary(new_keys.column(attribute.wrapped_key_column))
            expected = _mapped(_as_dictionary(old_keys.column(attribute.wrapped_key_column)), mapping)
            if not _same_keys(new, expected):
                raise VerificationError(f"{at}, {attribute.name}: a wrapped key was not mapped to its rewrap")
            # Rows per dictionary entry (null rows left out), summed over the new entries.
            is_new = pc.fill_null(pc.is_in(new.dictionary, value_set=new_values), False)
            uses = np.bincount(new.indices.drop_null().to_numpy(), minlength=len(new.dictionary))
            cells += int(uses[is_new.to_numpy(zero_copy_only=False)].sum())
            entries: dict[bytes, list[int]] = {}
            for position, value in enumerate(new.dictionary.to_pylist()):
                if value in new_set and value not in sampled:
                    entries.setdefault(value, []).append(position)
            picked: list[int] = []
            for new_value, positions in entries.items():
                uses = pc.is_in(new.indices, value_set=pa.array(positions, new.indices.type))
                rows = pc.indices_nonzero(uses).to_numpy()
                if len(rows):
                    picked += [int(rows[i]) for i in rng.sample(range(len(rows)), min(_SAMPLE_PER_KEY, len(rows)))]
                    sampled.add(new_value)
            if picked:  # one read and one call for all the keys' samples; a failure is an IntegrityError
                needed = [attribute.ciphertext_column, attribute.wrapped_key_column, attribute.column]
                needed += dataset.primary_key
                batch = row_group(written, index, where, list(dict.fromkeys(needed)))
                decrypt_rows(batch, dataset, attribute, cache, pa.array(sorted(picked), pa.int64()), at, partition)
    unchecked = new_set - sampled
    if unchecked:
        raise VerificationError(f"{where}: {len(unchecked)} rewrapped keys were not found in the rewrite")
    return cells


def _identical_chunks(
    store: LakeStore,
    rel: str,
    temp: str,
    before: pq.FileMetaData,
    after: pq.FileMetaData,
    skip: set[str],
) -> list[bool]:
    """Per row group: are all its column chunks but `skip` stored byte for byte the same in both files?

    Each file's row group is read as one byte range (one request on S3), then compared chunk by chunk.
    """
    result = []
    with store.open_input(rel) as old_file, store.open_input(temp) as new_file:
        for index in range(before.num_row_groups):
            old_group, new_group = before.row_group(index), after.row_group(index)
            if old_group.num_rows != new_group.num_rows or old_group.num_columns != new_group.num_columns:
                result.append(False)
                continue
            old_chunks = [old_group.column(c) for c in range(old_group.num_columns)]
            new_chunks = [new_group.column(c) for c in range(new_group.num_columns)]
            if [c.path_in_schema for c in old_chunks] != [c.path_in_schema for c in new_chunks]:
                result.append(False)
                continue
            compared = [
                (old, new) for old, new in zip(old_chunks, new_chunks, strict=True) if old.path_in_schema not in skip
            ]
            same = all(
                old.compression == new.compression
                and old.num_values == new.num_values
                and old.total_compressed_size == new.total_compressed_size
                for old, new in compared
            )
            if same and compared:
                old_bytes, old_base = _read_span(old_file, [chunk_span(old) for old, _ in compared])
                new_bytes, new_base = _read_span(new_file, [chunk_span(new) for _, new in compared])
                for old, new in compared:
                    (old_start, old_end), (new_start, new_end) = chunk_span(old), chunk_span(new)
                    old_chunk = old_bytes.slice(old_start - old_base, old_end - old_start)
                    if not old_chunk.equals(new_bytes.slice(new_start - new_base, new_end - new_start)):
                        same = False
                        break
            result.append(same)
    return result


def _read_span(file: pa.NativeFile, spans: list[tuple[int, int]]) -> tuple[pa.Buffer, int]:
    """One read covering every span; returns the bytes (compared by memcmp) and the offset they start at."""
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    file.seek(start)
    data = file.read_buffer(end - start)
    if data.size != end - start:
        raise VerificationError(f"column chunks at bytes {start}-{end} lie beyond the end of the file")
    return data, start


def _same_keys(new: pa.DictionaryArray, expected: pa.DictionaryArray) -> bool:
    """Row-by-row equal wrapped keys; without decoding when the dictionaries are the same."""
    if new.dictionary.equals(expected.dictionary):
        return bool(new.indices.equals(expected.indices))
    return bool(new.dictionary_decode().equals(expected.dictionary_decode()))
