"""A workspace: one customer's lake, policy and master key; the safe entry point.

`Workspace` exposes what users do - enable, protect, status, verify, reveal, rotate, erase -
and keeps key material, nonces and wrapping internal. Nothing here contacts a KMS
until a key is first needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.access.master_key_access import LakeKeyFiles, MasterKeyAccess
from fieldcrypt.access.partition_job import EnabledDataset, PartitionJob, each_file
from fieldcrypt.access.workspace_config import KeyConfig as KeyConfig  # re-exported: the public name
from fieldcrypt.access.workspace_config import WorkspaceConfig as WorkspaceConfig
from fieldcrypt.campaigns import blind_index_campaign, erasure_campaign, rotation_campaign
from fieldcrypt.campaigns.rotation_campaign import SCAN_THREADS, RotationStatus
from fieldcrypt.detectors import DEFAULT_PHONE_REGIONS
from fieldcrypt.discovery import DEFAULT_MIN_SHARE, DEFAULT_SAMPLE, DiscoveryReport, discover_files
from fieldcrypt.engine.erase import EraseReport
from fieldcrypt.engine.protect import ProtectReport, check_schema, protect_file, scan_file
from fieldcrypt.engine.reindex import ReindexReport, RetiringIndexKeys
from fieldcrypt.engine.rewrite import Commit, lake_commit
from fieldcrypt.engine.rotate import RotateReport
from fieldcrypt.engine.table_commit import TableCommit
from fieldcrypt.erasure_keys import KeysFile, read_keys_file
from fieldcrypt.errors import (
    ConcurrentUpdateError,
    ConfigError,
    FieldcryptError,
    InputError,
    PolicyError,
    RowNotFoundError,
)
from fieldcrypt.format.columns import row_key_bytes
from fieldcrypt.keys.binding import BindingStore, Campaign
from fieldcrypt.keys.blind_index import INDEX_KEYS_PATH, BlindIndexKey, IndexKeyStore
from fieldcrypt.keys.cache import DataKeyCache
from fieldcrypt.keys.policy_auth import MacKey, check_stored_file
from fieldcrypt.lake import summary_files
from fieldcrypt.lake.audit import AuditLog, AuditReport
from fieldcrypt.lake.audit_chain import AuditHead
from fieldcrypt.lake.parquet_io import open_parquet, read_ahead, row_groups
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.lake.tables.base import History, Purge, TableFormat, TableOperation
from fieldcrypt.policy import table_recovery
from fieldcrypt.policy.enable_checks import check_declared, check_map_key_occurs
from fieldcrypt.policy.erasure import DEFAULT_EXPIRY_DAYS, ErasureRequest, ErasureRequests
from fieldcrypt.policy.layout import DatasetLayout, partition_label
from fieldcrypt.policy.ledger import Ledger, LedgerError, LedgerStep, entry_of, is_marked
from fieldcrypt.policy.partition_keys import check_unique_across_files
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec, Policy, PolicyStore
from fieldcrypt.policy.select import existing_ciphertext
from fieldcrypt.reads.dispatch import DispatchReport, Segment, segment_row_group_indexes, segment_row_groups
from fieldcrypt.reads.read_rule import ReadKeys, RowChoice, check_partition, read_attribute

Result = TypeVar("Result")


def has_pending_cells(store: LakeStore, rel: str, dataset: DatasetSpec, attributes: Sequence[AttributePolicy]) -> bool:
    """Whether a protection run would encrypt cells of this file (what the ledger asks of a re-landed file)."""
    return any(c.pending for c in scan_file(store, rel, dataset, attributes).attributes.values())


class Workspace:
    def __init__(self, config: WorkspaceConfig, actor: str) -> None:
        self._config = config
        self.name = config.name
        self.store = LakeStore.from_uri(config.lake_uri, endpoint_url=config.s3_endpoint_url, region=config.s3_region)
        self.policies = PolicyStore(self.store, config.name, keys=self.key_cache)
        self.bindings = BindingStore(self.store)
        self.index_keys = IndexKeyStore(self.store)
        self.retiring_index_keys = RetiringIndexKeys(self.store)  # old keys of blind-index re-indexes under way
        self.audit = AuditLog(self.store, config.name, actor, key_source=self.key_cache)
        self.ledger = Ledger(self.store, config.name, self._policy_mac_key, has_pending_cells)  # policy/ledger.py
        self.erasures = ErasureRequests(self.store, config.name, self._policy_mac_key)  # policy/erasure.py
        # The bound master key and the data-key cache over it; the stores above reach it through key_cache().
        self._keys = MasterKeyAccess(
            config, LakeKeyFiles(self.store, self.bindings, self.policies, self.index_keys, self.audit)
        )

    def __repr__(self) -> str:
        return f"Workspace({self.name!r}, lake={self.store.uri!r})"

    @property
    def config(self) -> WorkspaceConfig:
        return self._config

    @config.setter
    def config(self, config: WorkspaceConfig) -> None:
        """A workspace given a new configuration (a wider catalog, another KMS budget) hands it to its
        master-key access too, which reads the key settings, the data-key TTL and the datasets from it."""
        self._config = config
        self._keys.config = config

    # -- keys: delegates to fieldcrypt.access.master_key_access --------------------------------

    def key_cache(self) -> DataKeyCache:
        """The data-key cache over the bound master key, built (and the key described) on first use."""
        return self._keys.key_cache()

    def policy(self) -> Policy:
        return self.policies.load()

    def _policy_mac_key(self) -> MacKey:
        """The policy MAC key, from which the protection ledger's key is derived."""
        wrapped = self.policies.mac_key_value()
        if wrapped is None:
            raise PolicyError(
                f"{self.store.display('_fieldcrypt/policy.json')} is missing or not authenticated: "
                "the protection ledger cannot be read"
            )
        return self.key_cache().policy_key_for(wrapped)

    def ledger_step(
        self, partition: str | None, spec: DatasetSpec, attributes: Sequence[AttributePolicy]
    ) -> LedgerStep:
        """How a rewrite of this partition records each file in the protection ledger (each file is checked
        against it right before its replace: a replaced file is never laundered into the ledger)."""
        return LedgerStep(self.ledger, spec, partition, attributes)

    def _check_ledger(
        self,
        dataset: str,
        partition: str | None,
        spec: DatasetSpec,
        attributes: Sequence[AttributePolicy],
        files: Sequence[str] | None = None,
        deep: bool = False,
    ) -> None:
        """Before any cell is decrypted (verify, reveal, dispatch): the partition against the protection ledger
        (`deep`, verify: the cell digests too).

        A replaced file is first checked cell by cell, so a tampered cell is named with its row;
        the ledger's own finding is raised when every cell authenticates.
        """
        try:
            self._recover_table(dataset, partition)
            listed = self.files(dataset, partition) if files is None else files
            self.ledger.check(spec, partition, listed, attributes, deep=deep)
        except LedgerError as exc:
            if exc.replaced and exc.rel is not None:
                self._verify_cells(dataset, partition, [exc.rel])
            raise

    def enable(
        self,
        attribute: str,
        mask: str,
        *,
        acknowledge_irreversible: bool,
        blind_index: bool = False,
        pad_to: int = 0,
        normalize: str = "none",
        allow_absent_key: bool = False,
    ) -> AttributePolicy:
        """Protect `dataset.path` for every row ingested from now on. Irreversible.

        The dataset must be declared in the catalog, and the attribute too when the catalog
        lists the dataset's `attributes:`; the attribute must exist, with a type that can be
        protected, in every file of the newest partition landed so far, and a map key must
        occur in some row of it (unless `allow_absent_key`: a key of data not landed yet).
        With `pad_to`, cells are padded to a multiple of that many bytes, so their length shows
        only the bucket of the value's length (cell format 2, docs/FORMAT.md section 2a).
        With `blind_index`, protected rows also get a keyed index of their value (joins and
        distinct counts without decrypting); its key is created here, under the master key.
        `normalize` (with a blind index: trim, email, e164) is applied to values before indexing.
        """
        if not acknowledge_irreversible:
            raise PolicyError(
                f"enabling {attribute} is irreversible and leaves rows ingested before now unencrypted; "
                "acknowledge both to proceed"
            )
        dataset = attribute.partition(".")[0]
        layout = self.layout(dataset)
        policy = previous = self.policy()
        if dataset not in policy.datasets:
            policy = policy.with_dataset(layout.spec)
        policy = policy.with_enabled(
            attribute,
            mask,
            enabled_by=self.audit.actor,
            blind_index=blind_index,
            pad_to=pad_to,
            normalize=normalize,
        )
        entry = policy.attributes[attribute]
        check_declared(layout, entry, self.config.catalog_path)
        partitions = layout.partitions(self.store)
        if partitions:  # the attribute must exist, with a protectable type, in the data landed so far
            newest = list(partitions)[-1]
            for rel in partitions[newest]:
                with open_parquet(self.store, rel) as parquet:
                    check_schema(parquet.schema_arrow, policy.datasets[dataset], [entry], self.store.display(rel))
            if not allow_absent_key:
                check_map_key_occurs(self.store, partitions[newest], entry, str(newest or "unpartitioned"))
        # Refuse before creating an index key, as the save below would: another worker's change since
        # `previous` is a concurrent update (run again), not a successor that "drops" what it enabled.
        self.policies.check_change(policy, previous)
        if blind_index:  # the key exists before any run can need it (one left by an interrupted enable is kept)
            cache = self.key_cache()
            self.index_keys.update(
                lambda keys: (
                    None if entry.name in keys else {**keys, entry.name: cache.new_index_key(dataset, entry.path)}
                )
            )
        self.policies.save(policy, previous=previous)
        self.audit.record("enable", dataset=dataset, attribute=entry.path, detail=f"mask={mask}")
        return entry

    def encrypt_history(self, attribute: str, *, acknowledge_irreversible: bool) -> AttributePolicy:
        """From now on, rows of `attribute` ingested before its enablement are encrypted too. Irreversible.

        Nothing is rewritten here: each protection run (`protect`, the Dagster protection assets,
        a backfill over a chosen range of partitions) then encrypts the historical rows of the
        partitions it covers, verified and replaced atomically per file like any protection, and a
        re-run is a no-op. It cannot reach copies of the plaintext outside the lake, nor older
        versions of the files kept by S3 versioning, snapshots or backups (docs/OPERATIONS.md).
        """
        if not acknowledge_irreversible:
            raise PolicyError(
                f"encrypting the history of {attribute} is irreversible and does not reach copies outside the "
                "lake (old S3 object versions, snapshots, backups); acknowledge to proceed"
            )
        previous = self.policy()
        policy = previous.with_history_encrypted(attribute)
        entry = policy.attributes[attribute]
        self.layout(entry.dataset)  # still declared
        self.policies.save(policy, previous=previous)
        self.audit.record("encrypt_history", dataset=entry.dataset, attribute=entry.path)
        return entry

    # -- datasets and partitions ---------------------------------------------------------

    @property
    def datasets(self) -> list[str]:
        """The declared datasets, by name."""
        return sorted(self.config.datasets)

    def layout(self, dataset: str) -> DatasetLayout:
        """A declared dataset; a named error for one the catalog does not declare."""
        layout = self.config.datasets.get(dataset)
        if layout is None:
            declared = ", ".join(self.datasets) or "none"
            raise InputError(f"dataset {dataset!r} is not declared in workspace {self.name!r} (declared: {declared})")
        return layout

    def partitions(self, dataset: str) -> list[str | None]:
        """The partitions of `dataset` that hold data files, oldest first (None: unpartitioned)."""
        return list(self.layout(dataset).partitions(self.store))

    def files(self, dataset: str, partition: str | None) -> list[str]:
        """The data files of one partition, relative to the lake; empty for an empty partition."""
        return self.layout(dataset).files(self.store, partition)

    def landed_files(self, dataset: str, partition: str | None) -> list[str]:
        """The data files of a partition someone named; a named error when it holds none.

        A date typo must not pass a scripted check as "verified 1 partition, 0 cells": the
        error says whether the key is outside the declared partitions or nothing landed there.
        """
        layout = self.layout(dataset)
        files = layout.files(self.store, partition)
        if files:
            return files
        where = self.partition_display(dataset, partition)
        if partition is not None and layout.partitions_start is not None:
            start = layout.partitioning.key_of(layout.partitions_start)
            if partition < start:
                raise InputError(
                    f"partition {partition} of {dataset} is before the dataset's first partition {start} "
                    f"(nothing under {where})"
                )
        raise InputError(f"partition {partition_label(partition)} of {dataset} has no data files under {where}")

    def swept_files(self, dataset: str, partition: str | None) -> tuple[list[str], int]:
        """The data files of one partition, after deleting the temporary files dead runs left in it (their
        plaintext copies), and how many temporary files are left: held by a live run, or, on S3 (no locks),
        younger than store.STALE_TEMP_SECONDS."""
        layout = self.layout(dataset)
        layout.check_partition(partition)
        inventory = layout.inventory(self.store, partition)
        left = sum(not self.store.sweep_temp(temp.rel, temp.version) for temp in inventory.temps)
        table = layout.table(self.store)
        if table is not None:  # files a dead run published and never committed
            left += table_recovery.sweep_published(
                self.ledger, self.store, table, dataset, partition, inventory.published, self.audit
            )
        if self._recover_table(dataset, partition):
            inventory = layout.inventory(self.store, partition)
        return inventory.files, left

    def _recover_table(self, dataset: str, partition: str | None) -> int:
        """A Delta or Iceberg partition's ledger step that a run died before (after its table commit) completed,
        when fieldcrypt.policy.table_recovery proves the commit and the new files fieldcrypt's; files recorded."""
        table = self.layout(dataset).table(self.store)
        if table is None:
            return 0
        return table_recovery.recover(self.ledger, self.store, table, dataset, partition, self.audit)

    def partition_display(self, dataset: str, partition: str | None) -> str:
        return self.store.display(self.layout(dataset).partition_dir(partition))

    def _dataset(self, dataset: str) -> tuple[DatasetSpec, list[AttributePolicy]]:
        """How to read `dataset` and its enabled attributes; the catalog must agree with the policy."""
        layout = self.layout(dataset)
        policy = self.policy()
        spec = policy.datasets.get(dataset)
        attributes = policy.for_dataset(dataset)
        if spec is not None and attributes and spec != layout.spec:
            raise ConfigError(
                f"catalog declares {dataset} with ingestion column {layout.spec.ingested_at!r} and primary key "
                f"{layout.spec.primary_key!r}, but its enabled attributes were enabled with {spec.ingested_at!r} "
                f"and {spec.primary_key!r}; enabling is irreversible, restore the declaration"
            )
        dropped = [a.path for a in attributes if layout.attributes and a.path not in layout.attributes]
        if dropped:
            raise ConfigError(
                f"catalog lists the attributes of {dataset} without {', '.join(dropped)}, which "
                "are enabled; enabling is irreversible, add them back"
            )
        return spec or layout.spec, attributes

    def _enabled(self, dataset: str) -> EnabledDataset:
        """`_dataset`, with the dataset's layout: what the campaigns are handed of a dataset."""
        spec, attributes = self._dataset(dataset)
        return EnabledDataset(dataset, self.layout(dataset), spec, attributes)

    def _enabled_datasets(self) -> list[EnabledDataset]:
        """Every dataset the policy names, checked against the catalog (one it dropped is an error)."""
        return [self._enabled(dataset) for dataset in sorted(self.policy().datasets)]

    def _partition_job(self, dataset: str, partition: str | None, operation: str | None = None) -> PartitionJob:
        """A partition to work on file by file, its files listed after a sweep of dead runs' temporary files.

        With `operation`, a Delta or Iceberg table's partition gets its table commit (its files then are
        those of the snapshot the commit reads from); the caller finishes it (`_committed`)."""
        enabled = self._enabled(dataset)
        ledger = self.ledger_step(partition, enabled.spec, enabled.attributes)
        files = self.swept_files(dataset, partition)[0]
        commit = None if operation is None else self._table_commit(dataset, partition, operation, ledger)
        job = PartitionJob(
            enabled,
            partition,
            files=files if commit is None else commit.files(partition),
            where=self.partition_display(dataset, partition),
            ledger=ledger,
            file_workers=self.config.file_workers,
        )
        return job if commit is None else dataclasses.replace(job, commit=commit)

    def _table_commit(
        self, dataset: str, partition: str | None, operation: str, ledger: LedgerStep
    ) -> TableCommit | None:
        """For a Delta or Iceberg dataset: its table read once (files, writability) and the commit of this
        partition's rewrites into one table transaction; None for a Hive folder."""
        table = self.layout(dataset).table(self.store)
        if table is None:
            return None
        snapshot = table.snapshot()
        table.check_writable(snapshot)
        names = [a.name for a in ledger.attributes]
        return TableCommit(
            self.store,
            table,
            snapshot,
            TableOperation(operation, dataset, partition, names, self.name),
            ledger,
            self.audit,
        )

    @staticmethod
    def _committed(commit: Commit | None, work: Callable[[], Result]) -> Result:
        """`work()`, then the table commit of what it staged (also when some files failed: those that were
        written and verified are committed, then the failure is raised)."""
        if not isinstance(commit, TableCommit):
            return work()
        try:
            result = work()
        except BaseException:
            commit.finish()
            raise
        commit.finish()
        return result

    def _each_file(
        self, dataset: str, partition: str | None, work: Callable[[str], Result], files: Sequence[str] | None = None
    ) -> list[Result]:
        """`work(rel)` for each file of a partition (`files`, or those listed after a sweep of the temporary
        files dead runs left), a few at a time; every file is tried (fieldcrypt.access.partition_job.each_file)."""
        if files is None:
            files = self.swept_files(dataset, partition)[0]
        return each_file(files, work, self.config.file_workers, self.partition_display(dataset, partition))

    # -- protection ----------------------------------------------------------------------

    def protect(self, dataset: str, partition: str | None) -> ProtectReport:
        """Encrypt every pending cell of every file of a partition; a report summed over its files."""
        spec, attributes = self._dataset(dataset)
        where = self.partition_display(dataset, partition)
        if not attributes:
            # a file protected under a lost policy is refused, not scanned as "nothing enabled"
            scanned = self._each_file(dataset, partition, lambda rel: self._checked_scan(rel, spec, attributes))
            self.ledger.check(spec, partition, self.files(dataset, partition), attributes, skip_replaced=True)
            return ProtectReport.total(where, scanned)
        # Before any work: a deleted or unledgered protected file (a restored `_fieldcrypt/`) stops the run; a
        # replaced file is refused right before its own replace (never laundered), and named by verify.
        files, _ = self.swept_files(dataset, partition)  # one listing: the checks below and the work share it
        ledger = self.ledger_step(partition, spec, attributes)
        # A snapshot landed after an erasure request may hold an erased key: erased before anything is protected
        # (its files ledger-checked first). A table's erasure is its own transaction, committed here, so the
        # protection below reads the table after it: a new snapshot, never a second staging of an old file.
        active = self.erasures.active(dataset)  # the index, then only the active requests (read once per process)
        self._audit_expired()
        erased = self._erase_files(dataset, partition, files, active, None) if active else None
        table_commit = self._table_commit(dataset, partition, "encrypt", ledger)
        if table_commit is not None:  # a table's files: those of the snapshot its commit reads from
            files = table_commit.files(partition)
        self.ledger.check(spec, partition, files, attributes, skip_replaced=True)
        check_unique_across_files(self.store, files, spec, attributes, where)
        cache = self.key_cache()
        index_keys, wrapped = self._index_keys(attributes)
        by_name = {a.name: a for a in attributes}

        def index_keys_unchanged(where: str) -> None:
            """Under the file's lock, right before its replace: a re-index that started since this run
            loaded the index keys would otherwise get old-key indexes written after its own scan. A key
            only rewrapped (a master-key rotation) is the same key: unwrapped once to tell them apart."""
            if not wrapped:
                return
            stored = self.index_keys.load()
            changed = sorted(
                name
                for name, key in wrapped.items()
                if stored.get(name) != key
                and (
                    name not in stored
                    or not cache.index_key_for(stored[name], by_name[name].dataset, by_name[name].path).same_key(
                        index_keys[name]
                    )
                )
            )
            if changed:
                raise ConcurrentUpdateError(
                    f"{where}: the blind-index key of {', '.join(changed)} changed while the file was being "
                    "protected (a re-index started); nothing was replaced, run again"
                )

        reports = self._committed(
            table_commit,
            lambda: self._each_file(
                dataset,
                partition,
                lambda rel: protect_file(
                    self.store,
                    rel,
                    spec,
                    attributes,
                    cache,
                    dataset_root=self.layout(dataset).path,
                    partition=partition,
                    index_keys=index_keys,
                    before_replace_check=index_keys_unchanged,
                    ledger=ledger,
                    commit=table_commit or lake_commit,
                ),
                files,
            ),
        )
        report = ProtectReport.total(where, reports, master_key=cache.master_key.ref)
        if erased is not None:
            report.erasure_files_rewritten, report.erasure_cells = erased.files_rewritten, erased.cells
        return report

    # -- erasure -------------------------------------------------------------------------

    def erasure_keys(self, dataset: str, keys_file: Path) -> KeysFile:
        """The primary keys of `keys_file` (fieldcrypt.erasure_keys), typed like `dataset`'s key columns in its
        latest partition; a named error (file, line, column) for any that is not a key."""
        spec, _ = self._dataset(dataset)
        partitions = self.partitions(dataset)
        files = self.files(dataset, partitions[-1]) if partitions else []
        if not files:
            raise InputError(f"dataset {dataset} has no data files: there is nothing to erase keys from")
        with open_parquet(self.store, files[0]) as parquet:
            schema = parquet.schema_arrow
        missing = [c for c in spec.primary_key if c not in schema.names]
        if missing:
            raise InputError(f"{self.store.display(files[0])}: primary-key column {', '.join(missing)} not found")
        return read_keys_file(keys_file, spec.primary_key, {c: schema.field(c).type for c in spec.primary_key})

    def request_erasure(
        self, dataset: str, keys: KeysFile, reason: str, *, expires_in_days: int = DEFAULT_EXPIRY_DAYS
    ) -> ErasureRequest:
        """Record an erasure request (the keys as keyed tags, never in clear; fieldcrypt.policy.erasure), audited.

        A request for exactly the keys of one not expired is that request. Nothing is erased here:
        `erase_partition` over the partitions (the CLI's `erase`, a Dagster backfill of
        the erasure assets) does it, and every protection run erases the request's keys until it expires.
        """
        spec, _ = self._dataset(dataset)
        if not reason or not reason.strip():
            raise InputError("an erasure request needs a reason (a ticket id): it is written to the audit log")
        same = self.erasures.key().tags(keys.canonical.to_pylist())
        for existing in self.erasures.active(dataset):
            if existing.tags == same:  # the same keys asked again (a re-run): the open request, not a second one
                return existing
        partitions = [partition_label(p) for p in self.partitions(dataset)]
        request = self.erasures.create(
            dataset,
            spec.primary_key,
            keys.canonical.to_pylist(),
            reason,
            self.audit.actor,
            partitions,
            expires_in=timedelta(days=expires_in_days),
        )
        self.audit.record(
            "erasure_request",
            dataset=dataset,
            reason=request.reason,
            detail=f"{request.request_id}: {request.keys} keys ({', '.join(request.key_columns)}), "
            f"{len(partitions)} partitions, expires {request.expires_at.isoformat()}",
        )
        return request

    def erasure_requests(self, dataset: str) -> list[ErasureRequest]:
        """The erasure requests of `dataset`, oldest first (ids, counts and progress; never a key)."""
        self.layout(dataset)
        requests = self.erasures.of_dataset_indexed(dataset)
        if any(request.done for request in requests):
            cache = self.key_cache()
            for request in requests:
                erasure_campaign.note_done(self.erasures, cache, request)
        return requests

    def rebuild_erasure_index(self, dataset: str, reason: str) -> int:
        """Rebuild `dataset`'s index of active erasure requests from every request on file (audited); returns how
        many are active. For an index removed, damaged, or missing on a lake from before it (FORMAT.md 6e)."""
        self.layout(dataset)
        if not reason or not reason.strip():
            raise InputError("rebuilding the erasure index needs a reason: it is written to the audit log")
        index = self.erasures.rebuild_index(dataset)
        self.audit.record(
            "erasure_reindex",
            dataset=dataset,
            reason=reason.strip(),
            detail=f"{len(index.active)} active requests, {index.expired} expired, index version {index.version}",
        )
        return len(index.active)

    def _audit_expired(self) -> None:
        """Audit the requests this process moved out of an index once expired (each by the one run that did)."""
        for dataset, request_id in self.erasures.expired_out():
            self.audit.record("erasure_expired", dataset=dataset, detail=f"{request_id}: out of the active index")

    def erase_partition(
        self, dataset: str, partition: str | None, keys: KeysFile | None = None, request: ErasureRequest | None = None
    ) -> EraseReport:
        """Null the protected cells of erased keys in every file of a partition (fieldcrypt.engine.erase).

        With `keys` and `request` (the run that recorded it): that request's keys, in clear, so files whose
        key statistics exclude them are skipped by their footer. Otherwise every request of the dataset not
        expired, by their tags (a Dagster backfill). Each request's progress records the partition (a Delta or
        Iceberg table's: once its `erase` transaction is committed; its older versions keep the erased rows until
        `purge_history`).
        """
        self._dataset(dataset)
        files, _ = self.swept_files(dataset, partition)
        if keys is not None and request is not None:
            return self._erase_files(dataset, partition, files, [request], keys)
        active = self.erasures.active(dataset)
        self._audit_expired()
        return self._erase_files(dataset, partition, files, active, None)

    def erase(
        self, dataset: str, keys_file: Path, reason: str, *, expires_in_days: int = DEFAULT_EXPIRY_DAYS
    ) -> tuple[ErasureRequest, EraseReport]:
        """Record an erasure request for the keys of `keys_file`, then erase them from every partition.

        Every partition is tried; the first failure is raised afterwards (the request stays open, and a
        re-run of `erase_partition`, or any protection run, finishes it). Returns the request as recorded
        after the run and the report summed over the partitions.
        """
        keys = self.erasure_keys(dataset, keys_file)
        request = self.request_erasure(dataset, keys, reason, expires_in_days=expires_in_days)
        reports: list[EraseReport] = []
        failures: list[FieldcryptError] = []
        for partition in self.partitions(dataset):
            try:
                reports.append(self.erase_partition(dataset, partition, keys, request))
            except FieldcryptError as exc:
                failures.append(exc)
        if failures:
            raise type(failures[0])(
                f"erasure request {request.request_id}: {len(failures)} partitions of {dataset} failed (the others "
                f"are done; run it again with erase_partition or protect); first: {failures[0]}"
            ) from failures[0]
        return self.erasures.load(dataset, request.request_id), EraseReport.total(dataset, reports)

    def _erase_files(
        self,
        dataset: str,
        partition: str | None,
        files: Sequence[str],
        requests: Sequence[ErasureRequest],
        keys: KeysFile | None,
    ) -> EraseReport:
        """The requests' keys erased from `files` (the partition's listing); fieldcrypt.campaigns.erasure_campaign.

        A Delta or Iceberg table's partition is erased through its table commit (operation `erase`): its files
        are those of the snapshot the commit reads (not `files`), each rewritten file is a new data file, and the
        partition's rewrites are one table transaction, committed before any request's progress is recorded."""
        enabled = self._enabled(dataset)
        ledger = self.ledger_step(partition, enabled.spec, enabled.attributes)
        commit = self._table_commit(dataset, partition, "erase", ledger) if requests else None
        if commit is not None:
            files = commit.files(partition)
        if requests:  # a deleted or unledgered protected file stops the run before any rewrite
            self.ledger.check(enabled.spec, partition, files, enabled.attributes, skip_replaced=True)
        job = PartitionJob(
            enabled,
            partition,
            files=list(files),
            where=self.partition_display(dataset, partition),
            ledger=ledger,
            file_workers=self.config.file_workers,
        )
        if commit is not None:
            job = dataclasses.replace(job, commit=commit)
        return erasure_campaign.erase_partition(
            job,
            self.key_cache(),
            self.store,
            self.erasures,
            requests,
            keys,
            committed=lambda work: self._committed(commit, work),
        )

    def _index_keys(self, attributes: list[AttributePolicy]) -> tuple[dict[str, BlindIndexKey], dict[str, bytes]]:
        """The unwrapped blind-index keys of the attributes that have one, and their stored (wrapped) form."""
        wanted = [a for a in attributes if a.blind_index]
        if not wanted:
            return {}, {}
        stored = self.index_keys.load()
        missing = [a.name for a in wanted if a.name not in stored]
        if missing:
            raise PolicyError(f"blind-index key of {', '.join(missing)} is missing from {INDEX_KEYS_PATH}")
        cache = self.key_cache()
        keys = {a.name: cache.index_key_for(stored[a.name], a.dataset, a.path).normalized(a.normalize) for a in wanted}
        return keys, {a.name: stored[a.name] for a in wanted}

    def status(self, dataset: str, partition: str | None) -> ProtectReport:
        """Per-attribute counts of a partition, summed over its files, without changing any data file, and
        the summary files describing them (the next run that rewrites one of the files removes them).

        Temporary files left by dead runs are deleted first; `temp_files_left` counts those that cannot
        be yet (a live run's), since they may hold plaintext copies.
        """
        spec, attributes = self._dataset(dataset)
        files, temps_left = self.swept_files(dataset, partition)
        self.ledger.check(spec, partition, files, attributes)
        reports = self._each_file(dataset, partition, lambda rel: scan_file(self.store, rel, spec, attributes), files)
        report = ProtectReport.total(self.partition_display(dataset, partition), reports)
        report.temp_files_left = temps_left
        report.summary_files_present = summary_files.present(self.store, files, self.layout(dataset).path)
        return report

    def discover(
        self,
        dataset: str,
        partition: str | None,
        *,
        sample_rows: int = DEFAULT_SAMPLE,
        phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
        min_share: float = DEFAULT_MIN_SHARE,
    ) -> DiscoveryReport:
        """Where a partition's text columns hold PII, per column: detector, share of the sampled values
        matching, enabled or not, protected or not, historical plaintext (fieldcrypt.discovery).

        Reads only (no temporary-file sweep; the master key only authenticates the policy, no data key
        is unwrapped); `sample_rows` non-null values per column.
        A named partition with no data is an error. The report holds names and counts, never a value.
        """
        spec, attributes = self._dataset(dataset)
        self.layout(dataset).check_partition(partition)
        files = self.landed_files(dataset, partition)
        return discover_files(
            self.store,
            files,
            spec,
            attributes,
            partition=partition,
            where=self.partition_display(dataset, partition),
            sample=sample_rows,
            phone_regions=phone_regions,
            min_share=min_share,
        )

    def verify(self, dataset: str, partition: str | None, files: Sequence[str] | None = None) -> dict[str, int]:
        """Decrypt every protected cell of a partition in memory and check it by the read rule; counts per attribute.

        `files`: the partition's files when the caller listed them already (one listing, not two).
        Raises IntegrityError on what fieldcrypt.reads.read_rule refuses (a cell that does not authenticate,
        a removed ciphertext, a wrong blind index, a primary key repeated across files), VerificationError
        on a protected row whose stored mask is not the mask of its decrypted value, and IntegrityError
        (LedgerError) on a file that does not hold what the protection ledger recorded.
        """
        listed = self.files(dataset, partition) if files is None else list(files)
        spec, attributes = self._dataset(dataset)
        self.erasures.index(dataset)  # an erasure index rolled back is refused here too (one small read)
        self._check_ledger(dataset, partition, spec, attributes, listed, deep=True)  # before any cell is decrypted
        return self._verify_cells(dataset, partition, listed)

    def _verify_cells(self, dataset: str, partition: str | None, listed: Sequence[str]) -> dict[str, int]:
        """verify's cell-by-cell check of `listed`: decrypt each protected cell and check it by the read rule."""
        spec, attributes = self._dataset(dataset)
        check_partition(self.store, listed, spec, attributes, self.partition_display(dataset, partition))
        keys = self._read_keys(attributes)
        counts: dict[str, int] = {}
        for rel in listed:
            where = self.store.display(rel)
            with open_parquet(self.store, rel) as parquet:
                for index, batch in enumerate(row_groups(parquet, where)):
                    self._audit_decryption("verify_decrypt", batch, attributes, partition)
                    for attribute in attributes:
                        at = f"{where} row group {index}"
                        _, protected = read_attribute(batch, spec, attribute, keys, at, partition)
                        counts[attribute.name] = counts.get(attribute.name, 0) + protected.true_count
        return counts

    def reveal(
        self,
        dataset: str,
        partition: str | None,
        attributes: list[str],
        *,
        row_keys: Sequence[str] | None = None,
        reason: str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Dispatch and support: batches of (primary key, real values of `attributes`), plaintext in memory only.

        With `row_keys` (primary-key values as text) only those rows are decrypted. The audit log
        records, per file and attribute, the cells revealed, with the workspace's actor and `reason`.
        Refuses what `verify` refuses (fieldcrypt.reads.read_rule); a repeated primary key before any plaintext exists.
        """
        spec, enabled = self._dataset(dataset)
        chosen = [a for a in enabled if a.name in attributes or a.path in attributes]
        unknown = set(attributes) - {a.name for a in chosen} - {a.path for a in chosen}
        if unknown:
            raise InputError(f"{', '.join(sorted(unknown))} not enabled for {dataset}")
        if row_keys is not None and len(spec.primary_key) != 1:
            raise InputError(f"{dataset} has no single-column primary key: rows cannot be chosen by key")
        files = self.landed_files(dataset, partition)
        choice = None
        if row_keys is not None:  # decrypt the chosen rows only
            with open_parquet(self.store, files[0]) as first:
                row_keys = _canonical_row_keys(row_keys, first.schema_arrow, spec.primary_key[0], dataset)
            wanted = pa.array([key.encode() for key in row_keys], pa.binary())

            def is_wanted(batch: pa.RecordBatch) -> pa.BooleanArray:
                keys = row_key_bytes(batch, spec.primary_key, f"{dataset} rows chosen by key").cast(pa.binary())
                result: pa.BooleanArray = pc.fill_null(pc.is_in(keys, value_set=wanted), False)
                return result

            choice = RowChoice(lambda parquet: range(parquet.num_row_groups), is_wanted)
        found: set[bytes] = set()
        self._check_ledger(dataset, partition, spec, enabled, files)
        check_partition(self.store, files, spec, enabled, self.partition_display(dataset, partition), choice)
        keys = self._read_keys(chosen)
        for rel in files:
            where = self.store.display(rel)
            with open_parquet(self.store, rel) as parquet:
                for index, batch in enumerate(row_groups(parquet, where)):
                    at = f"{where} row group {index}"
                    if choice is not None:
                        batch = batch.filter(choice.rows(batch))
                        if batch.num_rows == 0:
                            continue
                        found.update(row_key_bytes(batch, spec.primary_key, at).cast(pa.binary()).to_pylist())
                    self._audit_decryption("reveal", batch, chosen, partition, reason=reason)
                    columns = {a.name: read_attribute(batch, spec, a, keys, at, partition)[0] for a in chosen}
                    columns = {key: batch.column(key) for key in spec.primary_key} | columns
                    yield pa.RecordBatch.from_pydict(columns)
        missing = [key for key in row_keys or () if key.encode() not in found]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise RowNotFoundError(
                f"{len(missing)} of {len(row_keys or ())} row keys not found in {dataset} "
                f"{partition_label(partition)}: {shown}"
            )

    def dispatch(
        self,
        dataset: str,
        segment: pa.Array | Iterable[object],
        attributes: Sequence[str],
        *,
        reason: str,
        partition: str | None = None,
        report: DispatchReport | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Campaign sends: batches of (primary key, real values of `attributes`) for the rows of `segment`.

        `segment` holds primary-key values (one key column; millions are fine). `partition`
        defaults to the dataset's latest. Row groups whose key statistics hold no segment key
        are not read; the others are read for the key and the chosen attributes only, and
        only the segment's rows are decrypted. Each row group's decryption is audited
        (`dispatch`, actor, reason, attribute, cells) before its plaintext exists; the
        plaintext lives only in the yielded batches. `report`, if given, is filled with counts.
        What `verify` refuses about the segment's rows is refused (fieldcrypt.reads.read_rule): a segment
        key on two protected rows of the partition before any plaintext exists.
        """
        if not reason or not reason.strip():
            raise InputError("a dispatch needs a reason (campaign or ticket id): it is written to the audit log")
        spec, enabled = self._dataset(dataset)
        chosen = [a for a in enabled if a.name in attributes or a.path in attributes]
        unknown = set(attributes) - {a.name for a in chosen} - {a.path for a in chosen}
        if unknown or not chosen:
            raise InputError(f"{', '.join(sorted(unknown)) or 'no attribute'} not enabled for {dataset}")
        if len(spec.primary_key) != 1:
            raise InputError(f"{dataset} has no single-column primary key: a segment cannot name its rows")
        (key_column,) = spec.primary_key
        if partition is None:
            landed = self.partitions(dataset)
            if not landed:
                raise InputError(f"{dataset} has no partition with data to dispatch from")
            partition = landed[-1]
        report = report if report is not None else DispatchReport(dataset, partition)
        report.partition = partition
        files = self.files(dataset, partition)
        self._check_ledger(dataset, partition, spec, enabled, files)
        chosen_segment: Segment | None = None
        for rel in files[:1]:  # the segment is typed like the key column
            with open_parquet(self.store, rel) as parquet:
                schema = parquet.schema_arrow
                if schema.get_field_index(key_column) < 0:
                    raise InputError(f"{self.store.display(rel)}: primary-key column {key_column!r} is missing")
                chosen_segment = Segment(segment, schema.field(key_column).type, dataset)
                report.segment_keys = len(chosen_segment)
        if chosen_segment is None:
            return
        in_segment = chosen_segment
        choice = RowChoice(
            lambda parquet: segment_row_group_indexes(parquet, key_column, in_segment),
            lambda batch: in_segment.contains(batch.column(key_column)),
        )
        check_partition(self.store, files, spec, enabled, self.partition_display(dataset, partition), choice)
        keys = self._read_keys(chosen)
        for rel in files:
            where = self.store.display(rel)
            with open_parquet(self.store, rel) as parquet:
                schema = parquet.schema_arrow
                if schema.get_field_index(key_column) < 0:
                    raise InputError(f"{where}: primary-key column {key_column!r} is missing")
                # What the read rule reads: the values, their protection columns and the ingestion time.
                wanted = {key_column, spec.ingested_at} | {a.path.split(".")[0].split("[")[0] for a in chosen}
                for a in chosen:
                    wanted |= {a.ciphertext_column, a.wrapped_key_column, a.blind_index_column or key_column}
                columns = [name for name in schema.names if name in wanted]
                report.files += 1
                # The next matching row group is read and filtered on a helper thread while this one decrypts.
                matching = segment_row_groups(parquet, where, columns, key_column, in_segment, report)
                with read_ahead(matching) as batches:
                    for index, batch in batches:
                        at = f"{where} row group {index}"
                        self._audit_decryption("dispatch", batch, chosen, partition, reason=reason)
                        values = {a.name: read_attribute(batch, spec, a, keys, at, partition)[0] for a in chosen}
                        for a in chosen:
                            cells = pc.is_valid(existing_ciphertext(batch, a)).true_count
                            report.cells[a.name] = report.cells.get(a.name, 0) + cells
                        report.rows += batch.num_rows
                        yield pa.RecordBatch.from_pydict({key_column: batch.column(key_column)} | values)

    def _read_keys(self, attributes: list[AttributePolicy]) -> ReadKeys:
        """The data-key cache and the index keys a stored blind index of `attributes` may be under:
        the current key and, while a re-index of the attribute is under way, its old key."""
        cache = self.key_cache()
        current, wrapped = self._index_keys(attributes)
        accepted = {name: [key] for name, key in current.items()}
        retiring = self.retiring_index_keys.load() if current else {}
        for attribute in attributes:
            old = retiring.get(attribute.name)
            if attribute.name in accepted and old is not None and old != wrapped[attribute.name]:
                accepted[attribute.name].append(
                    cache.index_key_for(old, attribute.dataset, attribute.path).normalized(attribute.normalize)
                )
        return ReadKeys(cache, accepted)

    def _audit_decryption(
        self,
        operation: str,
        batch: pa.RecordBatch,
        attributes: list[AttributePolicy],
        partition: str | None,
        reason: str | None = None,
    ) -> None:
        """One event per attribute and row group, written before any of its plaintext exists."""
        for attribute in attributes:
            cells = pc.is_valid(existing_ciphertext(batch, attribute)).true_count
            if cells:
                self.audit.record(
                    operation,
                    dataset=attribute.dataset,
                    attribute=attribute.path,
                    partition=partition,
                    cells=cells,
                    reason=reason,
                )

    def _checked_scan(self, rel: str, spec: DatasetSpec, attributes: list[AttributePolicy]) -> ProtectReport:
        check_stored_file(self.store, rel, attributes)
        return scan_file(self.store, rel, spec, attributes)

    # -- a Delta or Iceberg table's history -----------------------------------------------------

    def _table(self, dataset: str) -> TableFormat:
        table = self.layout(dataset).table(self.store)
        if table is None:
            raise InputError(
                f"{dataset} is a Hive folder (kind: hive): it has no table history; copies of its files outside "
                "the lake (S3 object versions, snapshots, backups) are out of fieldcrypt's reach (docs/OPERATIONS.md)"
            )
        return table

    def table_history(self, dataset: str) -> History:
        """What a Delta or Iceberg table's older versions still hold: how many versions (time travel) and
        unreferenced data files from before its newest protection commit, and of which protected attributes."""
        table = self._table(dataset)
        _, attributes = self._dataset(dataset)
        return table.history([a.name for a in attributes])

    def purge_history(self, dataset: str, *, older_than_hours: float) -> Purge:
        """Delete what only a table's versions older than `older_than_hours` need: the table's own VACUUM
        (or expire-snapshots) with that retention, the format's retention check disabled (the operator chose
        it), then its log cleanup. Audited: an intent before, the counts after. It cannot reach clones,
        backups, readers pinned to an old version, nor S3 non-current object versions (docs/OPERATIONS.md)."""
        if older_than_hours < 0:
            raise InputError(f"--older-than must not be negative (got {older_than_hours} hours)")
        table = self._table(dataset)
        intent = self.audit.intent(
            "purge_history", dataset=dataset, detail=f"{table.kind} {table.describe()}: older than {older_than_hours} h"
        )
        purge = table.purge_history(older_than_hours)
        self.audit.record(
            "history_purged",
            dataset=dataset,
            intent=intent,
            detail=f"{purge.files_deleted} data files and {purge.log_files_deleted} log files deleted; retention "
            f"{purge.retention_hours} h, the table's own retention check disabled for the operator's retention",
        )
        return purge

    # -- rotation: thin delegates to fieldcrypt.campaigns.rotation_campaign -------------------------

    def start_rotation(self, to: str | None = None, *, to_kms_key: str | None = None) -> Campaign:
        """Start moving every wrapped data key to a new master key (local: a new key version)."""
        return rotation_campaign.start_rotation(self._keys, self.retiring_index_keys, to, to_kms_key=to_kms_key)

    def rotate(self, dataset: str, partition: str | None) -> RotateReport:
        """Rewrap the data keys of every file of a partition under the current master key."""
        job = self._partition_job(dataset, partition, "rotate_partition")
        return self._committed(job.commit, lambda: rotation_campaign.rotate(job, self.key_cache(), self.store))

    def old_key_refs(self, dataset: str, partition: str | None) -> list[str]:
        """Master keys (refs) other than the current one that still wrap data keys of a partition (no KMS call)."""
        _, attributes = self._dataset(dataset)
        return rotation_campaign.old_key_refs(self._keys, attributes, self.files(dataset, partition))

    def rotation_status(
        self,
        *,
        threads: int = SCAN_THREADS,
        known_clean: Mapping[str, str] | None = None,
        max_reads: int | None = None,
    ) -> RotationStatus:
        """Scan every partition for wrapped keys not under the current master key (no KMS call)."""
        return rotation_campaign.rotation_status(
            self._keys, self._enabled_datasets, threads=threads, known_clean=known_clean, max_reads=max_reads
        )

    def complete_rotation(self) -> Campaign:
        """Prove no wrapped key under the old master key remains, then retire it."""
        return rotation_campaign.complete_rotation(self._keys, self._enabled_datasets)

    # -- blind-index re-index: thin delegates to fieldcrypt.campaigns.blind_index_campaign ----------

    def start_reindex(self, attribute: str) -> None:
        """Give a blind-indexed attribute a new index key; new rows are indexed under it from now on."""
        return blind_index_campaign.start_reindex(self._keys, self.retiring_index_keys, self.policy(), attribute)

    def reindex(self, dataset: str, partition: str | None) -> ReindexReport:
        """Recompute, in every file of a partition, the blind indexes of the attributes being re-indexed."""
        job = self._partition_job(dataset, partition, "reindex")
        return self._committed(
            job.commit, lambda: blind_index_campaign.reindex(self._keys, self.retiring_index_keys, job)
        )

    def complete_reindex(self, attribute: str) -> int:
        """Prove every blind index of `attribute` is under the new key, then forget the old key; partitions checked."""
        return blind_index_campaign.complete_reindex(
            self._keys,
            self.retiring_index_keys,
            attribute,
            lambda dataset: (self._partition_job(dataset, partition) for partition in self.partitions(dataset)),
        )

    # -- policy adoption -----------------------------------------------------------------

    def adopt_policy(self) -> Policy:
        """Authenticate a legacy (unauthenticated) policy after checking it against every stored file.

        The operator reviews the policy first (`fieldcrypt policy adopt` prints it). A policy
        that lacks an attribute some file says is protected is refused. Audited.
        """
        legacy = self.policies.unauthenticated()
        policy = legacy if legacy is not None else Policy(self.name)
        checked = 0
        for dataset in self.datasets:  # every declared dataset's files, whatever the policy names
            for files in self.layout(dataset).partitions(self.store).values():
                for rel in files:
                    check_stored_file(self.store, rel, policy.for_dataset(dataset))
                    checked += 1
        self.key_cache()
        self.policies.write_authenticated(policy)
        # A new MAC key: the ledger, whose key derives from it, is recorded again after every cell is verified.
        self.ledger = Ledger(self.store, self.name, self._policy_mac_key, has_pending_cells)
        recorded = self._record_ledger([(d, p) for d in self.datasets for p in self.partitions(d)])
        self.audit.record(
            "policy_adopt",
            detail=f"{len(policy.attributes)} attributes; {checked} files checked; {recorded} files recorded in "
            "the protection ledger; "
            + ("legacy policy authenticated" if legacy is not None else "missing policy replaced by an empty one"),
        )
        return policy

    # -- a deliberate restore of `_fieldcrypt/` from a backup ---------------------------------

    def accept_restore(self, reason: str) -> tuple[int, int, int, list[str]]:
        """Accept a deliberate restore of the policy, ledger and erasure indexes from a backup; audited.

        The restored policy (authenticated, but older than the lake has seen) is checked against
        every stored file, as adoption does, then stored as a version above every one seen, so
        older copies stay refused. Every partition's files are then verified cell by cell and
        recorded in the protection ledger as they are now. Each erasure index older than the
        version the binding pinned is rebuilt from the requests on file (none on file is dropped)
        at a version above it. Returns (the restored policy's version, its new version, the files
        recorded, the datasets whose erasure index was rebuilt). The audit log gets an intent before
        anything is written and its confirmation after (docs/OPERATIONS.md, "Restoring from a backup").
        """
        if not reason or not reason.strip():
            raise InputError("accepting a restore needs a reason (ticket id): it is written to the audit log")
        restored = self.policies.load_restored()
        partitions = [(d, p) for d in self.datasets for p in self.partitions(d)]
        for dataset, partition in partitions:  # a policy that lacks what some file protects is refused
            for rel in self.files(dataset, partition):
                check_stored_file(self.store, rel, restored.for_dataset(dataset))
        indexes = self.erasures.rolled_back()
        restored_indexes = f"; restored erasure indexes of {', '.join(indexes)}" if indexes else ""
        intent = self.audit.intent(
            "restore_accept",
            reason=reason,
            detail=f"policy version {restored.version}; {len(partitions)} partitions{restored_indexes}",
        )
        version = self.policies.accept_restored(restored)
        recorded = self._record_ledger(partitions)
        rebuilt = []
        for dataset in indexes:
            index = self.erasures.rebuild_index(dataset)
            rebuilt.append(
                f"erasure index of {dataset} rebuilt as version {index.version} ({len(index.active)} active)"
            )
        self.audit.record(
            "restore_accepted",
            intent=intent,
            reason=reason,
            detail=f"policy.json version {restored.version} stored as version {version}; "
            f"{recorded} files recorded in the protection ledger" + "".join(f"; {line}" for line in rebuilt),
        )
        return restored.version, version, recorded, indexes

    def verify_audit(self) -> AuditReport:
        """Check every audit record (`AuditLog.verify`), also against the head the binding pinned at the last
        verification (its newest records cut off are named), then pin this head there."""
        pinned = self.policies.pinned_audit_head()
        report = self.audit.verify(AuditHead(*pinned) if pinned else None)
        if report.head is not None:
            self.policies.pin_audit_head(report.head.seq, report.head.digest)
        return report

    def accept_rewrite(self, dataset: str, partition: str | None, reason: str) -> int:
        """Accept a partition whose files an engine rewrote (a compaction: read, write new files, drop the
        old), audited; returns the files recorded.

        The protection ledger names such a partition (the files fieldcrypt wrote are gone, new ones
        hold their cells). Before anything is recorded, no attribute may hold fewer protected cells
        than the ledger recorded for the partition (a rewrite that dropped ciphertext is refused by
        name), and every protected cell is decrypted and checked by the read rule; then the
        partition's files are recorded as they are now (docs/OPERATIONS.md, "After an engine
        rewrote a partition").
        """
        if not reason or not reason.strip():
            raise InputError("accepting a rewrite needs a reason (ticket id): it is written to the audit log")
        spec, attributes = self._dataset(dataset)
        files = self.landed_files(dataset, partition)
        shard = self.ledger.load(dataset, partition)
        before: dict[str, int] = {}
        for entry in shard.files.values() if shard is not None else ():
            for name, (cells, _) in entry.attributes.items():
                before[name] = before.get(name, 0) + cells
        now: dict[str, int] = {}
        for rel in files:
            for name, (cells, _) in entry_of(self.store, rel, spec, attributes).attributes.items():
                now[name] = now.get(name, 0) + cells
        lost = {name: (cells, now.get(name, 0)) for name, cells in before.items() if now.get(name, 0) < cells}
        if lost:
            said = "; ".join(
                f"{name} had {was} protected cells, the files now hold {held}" for name, (was, held) in lost.items()
            )
            raise LedgerError(
                f"{self.partition_display(dataset, partition)}: {said}: the rewrite lost ciphertext; nothing was "
                "recorded (restore the files from before the rewrite)"
            )
        intent = self.audit.intent(
            "rewrite_accept", dataset=dataset, partition=partition, reason=reason, detail=f"{len(files)} files"
        )
        recorded = self._record_ledger([(dataset, partition)])
        self.audit.record(
            "rewrite_accepted",
            dataset=dataset,
            partition=partition,
            intent=intent,
            reason=reason,
            cells=sum(now.values()),
            detail=f"{recorded} files recorded in the protection ledger",
        )
        return recorded

    def _record_ledger(self, partitions: Sequence[tuple[str, str | None]]) -> int:
        """Verify every protected cell of each partition, then record its protected files in the ledger as
        they are now (a deliberate restore or adoption); returns the files recorded."""
        recorded = 0
        for dataset, partition in partitions:
            spec, attributes = self._dataset(dataset)
            files = self.files(dataset, partition)
            self._verify_cells(dataset, partition, files)
            protected = {a.ciphertext_column for a in attributes}
            entries = {}
            for rel in files:
                with open_parquet(self.store, rel) as parquet:
                    written = bool(protected & set(parquet.schema_arrow.names))
                if written or is_marked(self.store, rel):
                    entries[rel] = entry_of(self.store, rel, spec, attributes)
            self.ledger.record(dataset, partition, entries)
            recorded += len(entries)
        return recorded


def _canonical_row_keys(row_keys: Sequence[str], schema: pa.Schema, column: str, dataset: str) -> list[str]:
    """Typed primary-key values as text, in the canonical form cells bind (`007` -> `7` for an integer key);
    a named error for a value the key column's type cannot hold (`abc` for an int64 key)."""
    index = schema.get_field_index(column)
    if index < 0:
        raise InputError(f"{dataset}: primary-key column {column!r} not found")
    key_type = schema.field(index).type
    try:
        typed = pa.array(list(row_keys), pa.string()).cast(key_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = [key for key in row_keys if not _fits(key, key_type)]
        raise InputError(
            f"row key {', '.join(bad[:5]) or '?'} is not a {key_type} value: the primary key {column!r} of "
            f"{dataset} is {key_type}"
        ) from None
    return [str(value) for value in typed.to_pylist()]


def _fits(key: str, key_type: pa.DataType) -> bool:
    try:
        pa.array([key], pa.string()).cast(key_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True
