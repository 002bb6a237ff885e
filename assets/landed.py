"""The landed snapshot as an observed asset: a data version per partition that changes when plaintext lands
(a new file, a file replaced by an upstream re-run) or when the policy changes for the dataset (`enable`,
`encrypt-history` from the CLI), and not when fieldcrypt's own protection rewrites the files in place.

A partition's data version is a digest of two parts:

- the dataset's policy part: each enabled attribute's path, mask, enablement time, history flag and
  blind-index settings (what decides which cells are pending);
- the files part: per data file of the partition, its name below the partition and the attributes its
  footer's `fieldcrypt` metadata says are protected in it (one ranged read of the footer per file).
  A landed file names none; a protected one names every attribute enabled when it was protected.

Protection changes the files part once (a file's footer comes to name the attributes), so the protection
asset reports the landed version it leaves behind (`report_protected_version`) and records it as the
version it consumed: its materialization is then not stale, and the next observation of an unchanged
partition finds the same version. It reports only when every file names every enabled attribute; a file
that landed while the partition was being protected keeps the partition stale.

Cost of an observation pass (`observe_dataset`): one listing of the dataset's files, one query of the
Dagster instance for the partitions' last observations and one per 1,000 of them for their tags (only the
data version tag is indexed by partition), and footer reads only for the partitions
whose listing (names, sizes, modification times) changed since they were last observed; a policy change
alone re-derives every partition's version from the stored files part without reading a file. A pass
over 10,000 unchanged partitions reads no footer and records nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from dagster._core.events import DagsterEventType

from assets.partitions import dataset_partition, partition_key
from fieldcrypt import Workspace
from fieldcrypt.lake.parquet_io import open_parquet
from fieldcrypt.lake.store import FileVersion
from fieldcrypt.policy.policy import AttributePolicy
from fieldcrypt.policy.select import declared_attributes

LISTING_TAG = "fieldcrypt/landed_listing"  # digest of the partition's file names, sizes, modification times
FILES_TAG = "fieldcrypt/landed_files"  # digest of the files part of the data version
POLICY_TAG = "fieldcrypt/landed_policy"  # digest of the policy part
VERSION_FORMAT = 1


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def policy_part(attributes: Iterable[AttributePolicy]) -> str:
    """What of the policy decides a dataset's pending cells."""
    return _digest(
        sorted(
            [a.path, a.mask, a.enabled_at.isoformat(), a.encrypt_history, a.blind_index, a.normalize, a.pad_to]
            for a in attributes
        )
    )


def listing_part(base: str, files: Mapping[str, FileVersion | None]) -> str:
    return _digest(
        sorted(
            [rel[len(base) :], v.size if v else None, v.mtime_ns if v else None, v.identity if v else None]
            for rel, v in files.items()
        )
    )


def data_version(policy: str, files: str) -> str:
    return _digest([VERSION_FORMAT, policy, files])


@dataclass(frozen=True)
class LandedVersion:
    """One partition's landed state: its data version and the parts it is made of."""

    partition: str | None  # the core's (None: unpartitioned)
    listing: str
    files: str
    policy: str
    file_count: int
    unprotected: int  # files whose footer does not name every enabled attribute (their cells may be pending)

    @property
    def version(self) -> str:
        return data_version(self.policy, self.files)

    def tags(self) -> dict[str, str]:
        return {
            DATA_VERSION_TAG: self.version,
            LISTING_TAG: self.listing,
            FILES_TAG: self.files,
            POLICY_TAG: self.policy,
        }

    def observation(self, asset_key: dg.AssetKey, partitioned: bool) -> dg.AssetObservation:
        """The observation of the landed asset (`partitioned`: it has a partitions definition)."""
        return dg.AssetObservation(
            asset_key=asset_key,
            partition=partition_key(self.partition, partitioned),
            tags=self.tags(),
            metadata={
                "files": self.file_count,
                # -1: not re-read (only the policy changed since the files' footers were last read)
                "files_not_protected": self.unprotected,
            },
        )


def read_landed_version(
    workspace: Workspace,
    dataset: str,
    partition: str | None,
    attributes: list[AttributePolicy],
    files: Mapping[str, FileVersion | None],
) -> LandedVersion:
    """The partition's version from its files' footers (one ranged read per file)."""
    base = workspace.layout(dataset).partition_dir(partition) + "/"
    enabled = {a.name for a in attributes}
    declared: dict[str, list[str]] = {}
    for rel in sorted(files):
        with open_parquet(workspace.store, rel) as parquet:
            declared[rel[len(base) :]] = sorted(declared_attributes(parquet.schema_arrow, workspace.store.display(rel)))
    return LandedVersion(
        partition=partition,
        listing=listing_part(base, files),
        files=_digest(declared),
        policy=policy_part(attributes),
        file_count=len(files),
        unprotected=sum(not enabled <= set(names) for names in declared.values()),
    )


def _partition_listing(workspace: Workspace, dataset: str, partition: str | None) -> dict[str, FileVersion | None]:
    inventory = workspace.layout(dataset).inventory(workspace.store, partition)
    return {entry.rel: entry.version for entry in inventory.of_kind("data")}


def _latest_tags(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitioned: bool
) -> dict[str | None, Mapping[str, str]]:
    """Each partition's tags of its last observation (by the core's partition): one query for the events' ids,
    one per 1,000 events."""
    if not partitioned:
        records = instance.fetch_observations(asset_key, limit=1).records
        event = records[0].asset_observation if records else None
        return {None: dict(event.tags or {})} if event is not None else {}
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset_key, DagsterEventType.ASSET_OBSERVATION
    )
    ids = sorted(latest.values())
    found: dict[str | None, Mapping[str, str]] = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        records = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=chunk), limit=len(chunk)
        ).records
        for record in records:
            event = record.asset_observation
            if event is not None and event.partition is not None:
                found[dataset_partition(event.partition)] = dict(event.tags or {})
    return found


def observe_dataset(
    workspace: Workspace,
    instance: dg.DagsterInstance,
    asset_key: dg.AssetKey,
    dataset: str,
    partition_keys: set[str] | None,
    budget: int | None = None,
) -> list[dg.AssetObservation]:
    """An observation of every partition whose landed version changed since its last observation, newest
    partition first, at most `budget` of them (the others are found again by the next pass).

    `partition_keys`: the asset's Dagster partition keys (None: unpartitioned); partitions of the lake
    outside them are not observed (Dagster has no such partition)."""
    attributes = workspace.policy().for_dataset(dataset)
    policy = policy_part(attributes)
    layout = workspace.layout(dataset)
    by_partition: dict[str | None, dict[str, FileVersion | None]] = {}
    for entry in layout.inventory(workspace.store).of_kind("data"):
        by_partition.setdefault(entry.partition, {})[entry.rel] = entry.version
    last = _latest_tags(instance, asset_key, partition_keys is not None)
    observations: list[dg.AssetObservation] = []
    for partition, files in sorted(by_partition.items(), key=lambda item: item[0] or "", reverse=True):
        if budget is not None and len(observations) >= budget:
            break
        if partition_keys is not None and partition_key(partition, True) not in partition_keys:
            continue
        base = layout.partition_dir(partition) + "/"
        listing = listing_part(base, files)
        seen = last.get(partition, {})
        if seen.get(LISTING_TAG) == listing and FILES_TAG in seen:
            if seen.get(POLICY_TAG) == policy:
                continue  # nothing changed: no footer read, no event
            unprotected = -1  # not re-read: the files part is unchanged, only the policy part moved
            landed = LandedVersion(partition, listing, seen[FILES_TAG], policy, len(files), unprotected)
        else:
            landed = read_landed_version(workspace, dataset, partition, attributes, files)
        observations.append(landed.observation(asset_key, partition_keys is not None))
    return observations


def report_protected_version(
    workspace: Workspace,
    instance: dg.DagsterInstance,
    asset_key: dg.AssetKey,
    dataset: str,
    partition: str | None,
    partitioned: bool,
) -> tuple[str, int] | None:
    """After protecting a partition (the core's; `partitioned`: the landed asset has a partitions definition):
    record its landed version as observed and return (version, storage id) for the protection's
    materialization to name as consumed; None when a file does not name every enabled attribute (it landed
    during the run): the partition then stays stale until protected again."""
    attributes = workspace.policy().for_dataset(dataset)
    landed = read_landed_version(
        workspace, dataset, partition, attributes, _partition_listing(workspace, dataset, partition)
    )
    if landed.unprotected:
        return None
    instance.report_runless_asset_event(landed.observation(asset_key, partitioned))
    key = partition_key(partition, partitioned)
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[key] if key else None), limit=5
    ).records
    for record in records:  # newest first: ours, or an observer's of the same state
        event = record.asset_observation
        ours = event is not None and event.partition == key
        if ours and event is not None and (event.tags or {}).get(DATA_VERSION_TAG) == landed.version:
            return landed.version, record.storage_id
    return None


def consumed_version_tags(
    landed_key: dg.AssetKey,
    consumed: tuple[str, int] | None,
    instance: dg.DagsterInstance,
    key: str | None,
    code_version: str,
) -> dict[str, str]:
    """Provenance tags of a protection materialization of the Dagster partition `key` (None: the asset has no
    partitions): the landed version it consumed and the event that recorded it, as Dagster writes them for an
    asset's inputs (its staleness compares them with the landed partition's later observations)."""
    from dagster._core.definitions.data_version import (
        CODE_VERSION_TAG,
        DataVersion,
        compute_logical_data_version,
        get_input_data_version_tag,
        get_input_event_pointer_tag,
    )

    if consumed is None:
        # Nothing reported: point at the landed partition's last observation, so any later different
        # observation makes the protection stale; with none, at the first event id (all later ones count).
        records = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=landed_key, asset_partitions=[key] if key else None), limit=1
        ).records
        if records and records[0].asset_observation is not None:
            tags = records[0].asset_observation.tags or {}
            consumed = (tags.get(DATA_VERSION_TAG, "INITIAL"), records[0].storage_id)
        else:
            consumed = ("INITIAL", 1)
    version, storage_id = consumed
    return {
        CODE_VERSION_TAG: code_version,
        get_input_data_version_tag(landed_key): version,
        get_input_event_pointer_tag(landed_key): str(storage_id),
        DATA_VERSION_TAG: compute_logical_data_version(code_version, {landed_key: DataVersion(version)}).value,
    }


def landed_changed_condition() -> dg.AutomationCondition[dg.AssetKey | dg.AssetCheckKey]:
    """A protection partition whose landed partition's data version changed since it was last requested or
    protected (a file landed, the policy changed), once nothing of it is in progress. Protection's own
    report of the version it leaves lands in the same evaluation as its materialization, which resets it."""
    return (
        dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed()).since_last_handled()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("landed snapshot changed since protected")
