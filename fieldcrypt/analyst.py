"""The analyst's view of a protected dataset, without the master key.

`scan_dataset` returns a lazy polars frame of a dataset with fieldcrypt's own columns
(`<stem>__fc_ct`, `<stem>__fc_dek`, `<stem>__fc_bidx`; docs/FORMAT.md §1) dropped and one
boolean `<stem>_is_protected` per protected attribute, true exactly where the row's
ciphertext is not null (the attribute's column then holds a mask, not a value). So
`count(distinct email)` can be restricted to real values (`~email_is_protected`) or
report masks apart.

Which attributes are protected is read from the files themselves: each file's
`fieldcrypt` key-value metadata, and, for a file without it, its `__fc_ct` column
names. The policy, keystore and KMS are never touched. Files are those fieldcrypt
itself treats as data (docs/CATALOG.md: engine markers such as `_SUCCESS`, `*.crc`,
hidden and `_`-prefixed names are skipped); their schemas are unified, so snapshots
not yet protected (no protection columns) read with `<stem>_is_protected` false.
Hive partition directories (`date=2026-11-24/`) become columns.

A Delta or Iceberg dataset (`kind: delta` / `kind: iceberg`, or a folder holding a `_delta_log`)
is never listed: its folder also holds the files older versions removed (the plaintext a
protection replaced, rows an erasure removed) and its log (Iceberg's Avro manifests). It is read
as its own readers read its current version (TableFormat.scan: polars' `scan_delta` /
`scan_iceberg`), and its protected attributes are those whose `__fc_ct` column its schema holds.

Only the file footers are read when the frame is built; rows are read when it is collected.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from fieldcrypt.errors import InputError
from fieldcrypt.format.file_metadata import FILE_METADATA_KEY
from fieldcrypt.lake.inventory import classify
from fieldcrypt.lake.store import FileVersion, LakeStore
from fieldcrypt.lake.tables.base import DELTA_KIND, TableFormat, TableSource
from fieldcrypt.lake.tables.open import open_table

if TYPE_CHECKING:
    import polars as pl

    from fieldcrypt.catalog import Catalog

CIPHERTEXT_SUFFIX = "__fc_ct"
PROTECTION_MARK = "__fc_"  # every column fieldcrypt adds holds it (docs/FORMAT.md §1)
FLAG_SUFFIX = "_is_protected"
_FOOTER_READERS = 8
DELTA_LOG = "_delta_log"


def scan_dataset(
    dataset: str,
    *,
    lake: str | Path | None = None,
    path: str | None = None,
    catalog: str | Path | Catalog | None = None,
    workspace: str | None = None,
    s3_endpoint_url: str | None = None,
    region: str | None = None,
) -> pl.LazyFrame:
    """The analyst's view of `dataset`: no `__fc_*` columns, a `<stem>_is_protected` flag per protected attribute.

    Either `lake` (a local folder or `s3://bucket/prefix`; the dataset is under `path`, by
    default its name), or the catalog (`catalog`, else $FIELDCRYPT_CATALOG, else
    ./fieldcrypt.yaml) and `workspace` (else the catalog's selected one), which give the
    lake, the dataset's folder and the S3 endpoint and region. S3 credentials come from the
    standard AWS chain.
    """
    store, folder, table = _locate(dataset, lake, path, catalog, workspace, s3_endpoint_url, region)
    listed = _listed(store, folder) if table is None else {}
    table = table or _table_in_folder(store, folder, listed, dataset)
    if table is not None:
        return _table_view(table)
    files = classify(store, folder, folder, listed, lambda rel, parts: None).files
    if not files:
        raise InputError(f"dataset {dataset}: no data files under {store.display(folder)}")
    schemas = _footers(store, files)
    stems = protected_stems({store.display(rel): schema for rel, schema in zip(files, schemas, strict=True)})
    unified = _unified(schemas, store)
    kept = pa.schema([f for f in unified if PROTECTION_MARK not in f.name or f.name in _ct_columns(stems)])
    partitioning = pads.HivePartitioning.discover(infer_dictionary=False)
    source = pads.dataset(
        [store.full_path(rel) for rel in files],
        schema=None,
        format="parquet",
        filesystem=store.filesystem,
        partitioning=partitioning,
        partition_base_dir=store.full_path(folder),
    )
    # The files' columns as unified, then the Hive columns the discovery found.
    hive = [f for f in source.schema if f.name not in unified.names]
    source = pads.dataset(
        [store.full_path(rel) for rel in files],
        schema=pa.schema([*kept, *hive]),
        format="parquet",
        filesystem=store.filesystem,
        partitioning=partitioning,
        partition_base_dir=store.full_path(folder),
    )
    import polars as pl

    return _masked(pl.scan_pyarrow_dataset(source), stems)


def _table_view(table: TableFormat) -> pl.LazyFrame:
    """A Delta or Iceberg table's view: its current version's rows as its own log gives them (TableFormat.scan),
    never a file an older version removed; the protected attributes are those whose `__fc_ct` column the
    table's schema holds (a file written before the column was added reads it as null: not protected)."""
    frame = table.scan(table.snapshot())
    names = frame.collect_schema().names()
    stems = sorted(name.removesuffix(CIPHERTEXT_SUFFIX) for name in names if name.endswith(CIPHERTEXT_SUFFIX))
    kept = set(_ct_columns(stems))
    return _masked(frame.drop([name for name in names if PROTECTION_MARK in name and name not in kept]), stems)


def _masked(frame: pl.LazyFrame, stems: list[str]) -> pl.LazyFrame:
    """`frame` (no `__fc_*` column left but the ciphertexts of `stems`) with a `<stem>_is_protected` flag per
    stem, true where the row's ciphertext is not null, and the ciphertexts dropped."""
    import polars as pl

    flags = [pl.col(f"{stem}{CIPHERTEXT_SUFFIX}").is_not_null().alias(f"{stem}{FLAG_SUFFIX}") for stem in stems]
    return frame.with_columns(flags).drop(_ct_columns(stems))


def protected_stems(schemas: Mapping[str, pa.Schema]) -> list[str]:
    """The column stems (docs/FORMAT.md §1) of the attributes any of these files (name -> schema) protect."""
    stems: set[str] = set()
    for where, schema in schemas.items():
        raw = (schema.metadata or {}).get(FILE_METADATA_KEY)
        if raw is not None:
            try:
                described = json.loads(raw)["attributes"]
                stems.update(str(entry["ciphertext"]).removesuffix(CIPHERTEXT_SUFFIX) for entry in described.values())
            except (ValueError, KeyError, TypeError, AttributeError):
                raise InputError(f"{where}: its fieldcrypt metadata is not as docs/FORMAT.md §1 describes") from None
        stems.update(name.removesuffix(CIPHERTEXT_SUFFIX) for name in schema.names if name.endswith(CIPHERTEXT_SUFFIX))
    return sorted(stems)


def _ct_columns(stems: list[str]) -> list[str]:
    return [f"{stem}{CIPHERTEXT_SUFFIX}" for stem in stems]


def _locate(
    dataset: str,
    lake: str | Path | None,
    path: str | None,
    catalog: str | Path | Catalog | None,
    workspace: str | None,
    s3_endpoint_url: str | None,
    region: str | None,
) -> tuple[LakeStore, str, TableFormat | None]:
    """The lake, the dataset's folder, and its table format when the catalog declares it `kind: delta` or
    `kind: iceberg`."""
    if lake is not None:
        if catalog is not None or workspace is not None:
            raise InputError("give either a lake or a catalog and workspace, not both")
        store = LakeStore.from_uri(str(lake), endpoint_url=s3_endpoint_url, region=region)
        return store, (path or dataset).strip("/"), None
    from fieldcrypt.catalog import Catalog

    loaded = catalog if isinstance(catalog, Catalog) else Catalog.load(catalog)
    config = loaded.workspace_config(workspace)
    layout = config.datasets.get(dataset)
    if layout is None:
        declared = ", ".join(sorted(config.datasets)) or "none"
        raise InputError(f"dataset {dataset!r} is not declared in workspace {config.name} (declared: {declared})")
    store = LakeStore.from_uri(
        config.lake_uri, endpoint_url=s3_endpoint_url or config.s3_endpoint_url, region=region or config.s3_region
    )
    if path is not None and layout.source is not None:
        raise InputError(f"dataset {dataset} is a {layout.kind} table: it is read from its log, not from a path")
    return store, path or layout.path, layout.table(store)


def _listed(store: LakeStore, folder: str) -> dict[str, FileVersion]:
    try:
        return store.list_all(folder)
    except OSError as exc:
        raise InputError(f"cannot list {store.display(folder)}: {exc}") from None


def _table_in_folder(
    store: LakeStore, folder: str, listed: Mapping[str, FileVersion], dataset: str
) -> TableFormat | None:
    """A folder given by path that holds a table: a Delta table is read from its `_delta_log`; an Iceberg table
    needs its catalog (its files are listed by its manifests, which name the current snapshot), so it is
    refused by name. Never listed as a folder: the files older versions removed would read as live rows."""
    prefix = f"{folder}/" if folder else ""
    names = [rel[len(prefix) :] for rel in listed]
    if any(name.startswith(f"{DELTA_LOG}/") for name in names):
        return open_table(store, TableSource(DELTA_KIND, location=folder), dataset)
    if any(name.startswith("metadata/") and name.endswith(".metadata.json") for name in names):
        raise InputError(
            f"{store.display(folder)} is an Iceberg table: declare it `kind: iceberg` in the catalog and scan "
            f"{dataset} through the catalog (its live files are those its current snapshot lists)"
        )
    return None


def _footers(store: LakeStore, files: list[str]) -> list[pa.Schema]:
    def read(rel: str) -> pa.Schema:
        try:
            with store.open_input(rel) as source:
                return pq.read_schema(source)
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"{store.display(rel)} is not a readable Parquet file ({type(exc).__name__})") from None

    with ThreadPoolExecutor(max_workers=min(_FOOTER_READERS, len(files))) as pool:
        return list(pool.map(read, files))


def _unified(schemas: list[pa.Schema], store: LakeStore) -> pa.Schema:
    try:
        return pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"the files under {store.uri} have incompatible schemas: {exc}") from None
