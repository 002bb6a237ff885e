"""The rotation driver sensor: rotate a campaign in progress by itself, in ranges of partitions, then complete it.

Scheduled rotation (optional, both STOPPED by default): `scheduled_key_rotation` runs
`start_key_rotation` for a local key on FIELDCRYPT_ROTATION_CRON (default: quarterly),
and the `key_rotation_driver` sensor does steps 2 and 3 for whatever campaign is in
progress. Each tick it lists the lake, reads the wrapped-key columns (no KMS call, 8
partitions at once) of every partition not already found clean with unchanged files (its
cursor keeps, per campaign, each clean partition's fingerprint of file names, sizes and
modification times; a rewritten file changes it), and requests `rotate_keys` runs over
RANGES of consecutive partitions still holding old wrapped keys, so 10,000 partitions are
ceil(10,000 / N) run start-ups, not 10,000:

- the partitions definition is cut into aligned blocks of N consecutive keys (N: the
  rotation assets' `BackfillPolicy.multi_run(N)`, FIELDCRYPT_MAX_PARTITIONS_PER_RUN); a
  block holding any partition still under the old key is one run, over the span from its
  first to its last such partition (the clean ones between are rotated too: a no-op).
  The run carries Dagster's partition-range tags `dagster/asset_partition_range_start` /
  `_end` (`<campaign>|<first date>` .. `<campaign>|<last date>`), exactly as a multi_run
  backfill tags its runs, and inside it each partition materializes (or fails) on its own
  (assets/ranged.py);
- the run key is `<campaign id>/<block's first date>+<N>` and the run is tagged
  `fieldcrypt/rotation_range: <block's first date>+<N>`. Blocks are fixed by the partitions
  definition, not by what remains, so a range keeps its run key while its partitions are
  rotated one by one: a tick never requests the same work twice;
- a range whose run finished (failed, canceled; or succeeded while a partition still holds an
  old key) and still holds old keys is requested again, with run key `.../attempt-<k>`,
  narrowed to the partitions still under the old key, up to FIELDCRYPT_DRIVER_MAX_ATTEMPTS
  runs per range (default 3; the asset's retry policy already retries throttling inside a
  run). Its earlier runs are found by their tags, one run query per tick; while one is queued
  or in progress nothing more is requested for it. After the last attempt the driver stops
  requesting it and says so every tick (a warning naming the ranges and their last run ids,
  and the skip reason when nothing else is requested): fix the cause, then re-execute the
  last run or backfill the rotation assets with "missing and failed"; the driver sees the
  partitions clean and requests completion.

When nothing remains it requests `complete_key_rotation` (run key `<campaign id>/complete`).
Why a sensor of run requests rather than a sensor that launches a backfill:
`RunRequest.for_asset_graph_subset` is private in Dagster 1.13, while run requests with run
keys (and partition-range tags, which Dagster's own automation requests use for multi_run
assets) are public, and the run queue and `kms` pool bound them exactly as they bound a
backfill's runs.
"""

import base64
import json
import os
import sys
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from assets import DatasetAssets
from assets.partitions import partition_key
from assets.rotation import rotation_asset_name, rotation_partition_key
from assets.scope import WorkspaceScope
from fieldcrypt import ConfigError
from pipelines.campaign_partitions import CAMPAIGN_TAG, campaign_partition_requests

# When Definitions binds the code location's resources to complete_key_rotation, Dagster 1.13 copies
# key_rotation_driver (SensorDefinition.with_attributes) passing its own `owners` argument and warns
# that the argument is beta. Nothing of ours uses it; only that warning is silenced.
warnings.filterwarnings(
    "ignore", message="Parameter `owners` of initializer `SensorDefinition", category=dg.BetaWarning
)

DRIVER_MAX_READS_ENV = "FIELDCRYPT_DRIVER_MAX_READS"
DEFAULT_DRIVER_MAX_READS = 2000


def key_rotation_driver_sensor(
    assets: DatasetAssets, rotate: list[UnresolvedAssetJobDefinition], complete: dg.JobDefinition
) -> dg.SensorDefinition:
    """The driver of a campaign: rotate runs over ranges of partitions still under the old key, then the completion."""
    scope = assets.scope
    job_of = {name: job for group, job in zip(assets.groups, rotate, strict=True) for name in group.datasets}
    partitions_of = {name: group.partitions_def for group in assets.groups for name in group.datasets}
    # Partitions per ranged run: the N of the group's BackfillPolicy.multi_run(N), so a driver run covers what a
    # backfill run covers.
    range_size = {
        job.name: min(partitions_per_run(assets.rotated[name].backfill_policy) for name in group.datasets)
        for group, job in zip(assets.groups, rotate, strict=True)
    }
    max_attempts = driver_max_attempts()

    @dg.sensor(
        name=scope.job_name("key_rotation_driver"),
        jobs=[*rotate, complete],
        minimum_interval_seconds=300,  # each tick reads the wrapped-key columns of every partition
        default_status=dg.DefaultSensorStatus.STOPPED,
        required_resource_keys={scope.resource_key},
        description=(
            f"While a rotation campaign of workspace {scope.name} is in progress: request rotate_keys runs over "
            "ranges of consecutive partitions still holding old wrapped keys (up to the backfill policy's "
            "partitions per run; a range whose run failed is requested again, a bounded number of times), then "
            "complete_key_rotation when none remain."
        ),
    )
    def key_rotation_driver(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        workspace = scope.resource(context).workspace(actor="dagster:key_rotation_driver")
        binding = workspace.bindings.load()
        if binding is None or binding.active_campaign is None:
            return dg.SkipReason("no rotation campaign in progress")
        known_clean = read_driver_cursor(context.cursor, binding.active_campaign.campaign_id)
        status = workspace.rotation_status(known_clean=known_clean, max_reads=driver_max_reads())
        campaign = status.campaign
        if campaign is None:  # completed between the two reads
            return dg.SkipReason("no rotation campaign in progress")
        context.update_cursor(driver_cursor(campaign.campaign_id, status.clean))
        context.log.info(
            f"{scope.name}: rotation {campaign.campaign_id}: {status.scanned} partitions listed, {status.read} read "
            f"(the others unchanged since found clean), {len(status.remaining)} still hold old wrapped keys, "
            f"{len(status.unread)} left for the next ticks ({DRIVER_MAX_READS_ENV})"
        )
        tags = {**scope.tags("rotate"), CAMPAIGN_TAG: campaign.campaign_id}
        # A campaign started with the CLI gets its partitions in the UI here.
        shown: list[PartitionsRequest] = [*campaign_partition_requests(scope, context.instance, campaign.campaign_id)]
        if status.complete:
            complete_request = dg.RunRequest(
                job_name=complete.name, run_key=f"{campaign.campaign_id}/complete", tags=tags
            )
            return dg.SensorResult(run_requests=[complete_request], dynamic_partitions_requests=shown)
        # job -> dataset -> Dagster snapshot partition keys still under the old key (None: the dataset's assets have
        # no partitions; an unpartitioned table's is `(unpartitioned)`)
        wanted: dict[str, dict[str, list[str | None]]] = {}
        elsewhere = []  # a dataset without rotation assets here, or a partition outside the definitions
        keys_of = SnapshotKeys(context.instance, partitions_of)
        for entry in sorted(status.remaining):
            dataset, _, key = entry.partition("/")
            partition = key or None
            if dataset in job_of and keys_of.covers(dataset, partition):
                wanted.setdefault(job_of[dataset].name, {}).setdefault(dataset, []).append(
                    keys_of.snapshot_key(dataset, partition)
                )
            else:
                elsewhere.append(entry)
        if elsewhere:
            context.log.warning(
                f"rotation {campaign.campaign_id}: {len(elsewhere)} partitions outside this code location's rotation "
                f"assets still hold old wrapped keys; rotate them with `fieldcrypt --workspace {scope.name} "
                f"rotate-partition <dataset> --partition <key>`: {', '.join(elsewhere[:20])}"
            )
        # A table partition found before the sync_table_partitions sensor added it: added here, rotated this tick.
        shown += keys_of.add_requests()
        ranges: list[tuple[str, PartitionRange]] = []
        for job_name, by_dataset in wanted.items():
            partitions_def = partitions_of[next(iter(by_dataset))]
            if partitions_def is None:
                ranges.append((job_name, PartitionRange(UNPARTITIONED, None, None, tuple(sorted(by_dataset)), 1)))
                continue
            partitioned = {dataset: [key for key in keys if key is not None] for dataset, keys in by_dataset.items()}
            ranges.extend(
                (job_name, found)
                for found in partition_ranges(partitioned, keys_of.keys(next(iter(by_dataset))), range_size[job_name])
            )
        earlier = earlier_range_runs(context.instance, scope, campaign.campaign_id) if ranges else {}
        requests: list[dg.RunRequest] = []
        given_up: list[str] = []
        for job_name, found in ranges:
            runs = earlier.get((job_name, range_label(found.block, range_size[job_name])), [])
            attempt = next_attempt([run.status for run in runs], max_attempts)
            if attempt is None and runs and runs[0].status in FINISHED_STATUSES:
                given_up.append(f"{found.describe(job_name)} (last run {runs[0].run_id})")
            if attempt is not None:
                requests.append(
                    range_run_request(scope, job_name, campaign.campaign_id, found, attempt, range_size[job_name], tags)
                )
        if given_up:
            context.log.warning(
                f"rotation {campaign.campaign_id}: {len(given_up)} partition ranges still hold old wrapped keys after "
                f"{max_attempts} runs each ({DRIVER_MAX_ATTEMPTS_ENV}); the driver requests them no more. Fix the "
                "cause named in the last run's failure, then re-execute that run or backfill the rotation assets "
                f'with "missing and failed": {"; ".join(given_up[:20])}'
            )
        if not requests:
            if shown:
                return dg.SensorResult(dynamic_partitions_requests=shown)
            if given_up:
                return dg.SkipReason(
                    f"rotation {campaign.campaign_id}: {len(given_up)} partition ranges failed {max_attempts} times "
                    f"and are left to the operator: {'; '.join(given_up[:5])}"
                )
            if ranges:
                return dg.SkipReason(
                    f"rotation {campaign.campaign_id}: the runs of {len(ranges)} partition ranges still holding old "
                    "wrapped keys are queued or in progress"
                )
            if status.unread:
                return dg.SkipReason(
                    f"rotation {campaign.campaign_id}: {len(status.unread)} partitions not read yet; the next ticks "
                    "read them"
                )
            return dg.SkipReason(f"rotation {campaign.campaign_id}: only partitions outside the code location remain")
        return dg.SensorResult(dynamic_partitions_requests=shown, run_requests=requests)

    return key_rotation_driver


PartitionsRequest = dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest


class SnapshotKeys:
    """The snapshot partition keys of each dataset's rotation assets, read once per tick.

    A Delta or Iceberg dataset's keys are dynamic partitions (assets/partitions.py) that the
    `sync_table_partitions` sensor fills from the table's log; a table partition holding old wrapped keys that
    it has not added yet is a key of the table all the same: the driver adds it (after the keys known, in the
    order found, as the instance appends them) and covers it in this tick's ranges. The instance is passed
    explicitly: the sensor daemon evaluates a tick outside any `partition_loading_context`."""

    def __init__(
        self, instance: dg.DagsterInstance, partitions_of: Mapping[str, dg.PartitionsDefinition | None]
    ) -> None:
        self._instance = instance
        self._partitions_of = partitions_of
        self._keys: dict[str, list[str]] = {}
        self._known: dict[str, set[str]] = {}
        self._added: dict[str, list[str]] = {}  # dynamic partitions definition name -> keys this tick adds

    def snapshot_key(self, dataset: str, partition: str | None) -> str | None:
        """The Dagster snapshot key of the core's `partition` (assets.partitions.partition_key)."""
        return partition_key(partition, self._partitions_of.get(dataset) is not None)

    def covers(self, dataset: str, partition: str | None) -> bool:
        """Whether the dataset's rotation assets have (or, for a table, get) a partition for the core's `partition`
        (None: unpartitioned, a table's `(unpartitioned)` key)."""
        partitions_def = self._partitions_of.get(dataset)
        if partitions_def is None:
            return partition is None
        key = partition_key(partition, True)
        assert key is not None  # a partitioned asset's key
        known = self._known_keys(dataset)
        if key in known:
            return True
        if not isinstance(partitions_def, dg.DynamicPartitionsDefinition) or partitions_def.name is None:
            return False
        self._added.setdefault(partitions_def.name, []).append(key)
        self._keys[dataset].append(key)
        known.add(key)
        return True

    def keys(self, dataset: str) -> list[str]:
        self._known_keys(dataset)
        return self._keys[dataset]

    def add_requests(self) -> list[PartitionsRequest]:
        return [dg.AddDynamicPartitionsRequest(name, keys) for name, keys in self._added.items()]

    def _known_keys(self, dataset: str) -> set[str]:
        if dataset not in self._known:
            partitions_def = self._partitions_of[dataset]
            assert partitions_def is not None  # callers check
            self._keys[dataset] = list(partitions_def.get_partition_keys(dynamic_partitions_store=self._instance))
            self._known[dataset] = set(self._keys[dataset])
        return self._known[dataset]


# -- the driver's ranged run requests --------------------------------------------------------------------------

RANGE_TAG = "fieldcrypt/rotation_range"
UNPARTITIONED = "all"
DRIVER_MAX_ATTEMPTS_ENV = "FIELDCRYPT_DRIVER_MAX_ATTEMPTS"
DEFAULT_DRIVER_MAX_ATTEMPTS = 3
FINISHED_STATUSES = frozenset({dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED})


@dataclass(frozen=True)
class PartitionRange:
    """Consecutive snapshot partitions that one rotate run covers.

    `block` names the range for the whole campaign: the first partition key of the aligned block of N
    consecutive keys of the partitions definition it lies in (N: partitions per run). `first` and `last`
    narrow it to the block's first and last partition still holding old wrapped keys (None: an unpartitioned
    dataset); the clean partitions between them are rotated too, a cheap no-op."""

    block: str
    first: str | None
    last: str | None
    datasets: tuple[str, ...]
    partitions: int  # (dataset, partition) pairs in the range still holding old wrapped keys

    def describe(self, job_name: str) -> str:
        span = "every partition" if self.first is None else f"{self.first}..{self.last}"
        return f"{job_name} {span} of {', '.join(self.datasets)}"


def partition_ranges(
    remaining: Mapping[str, Iterable[str]], partition_keys: Sequence[str], size: int
) -> list[PartitionRange]:
    """Group the partitions still holding old wrapped keys (dataset -> snapshot partition keys, all in
    `partition_keys`) into the ranges one run each covers: per aligned block of `size` consecutive keys of
    `partition_keys` (blocks start at key 0, size, 2*size, ...), the span from its first to its last
    partition still holding old keys, for the datasets holding any there.

    Blocks are fixed by the partitions definition, not by what remains, so a range keeps its identity
    (`block`) while its partitions are rotated one by one: the run key made of it is requested once."""
    if size < 1:
        raise ConfigError(f"partitions per run must be at least 1, got {size}")
    position = {key: index for index, key in enumerate(partition_keys)}
    by_block: dict[int, dict[str, list[int]]] = {}
    for dataset, keys in remaining.items():
        for key in keys:
            index = position[key]
            by_block.setdefault(index // size, {}).setdefault(dataset, []).append(index)
    ranges = []
    for block in sorted(by_block):
        by_dataset = by_block[block]
        indexes = [index for found in by_dataset.values() for index in found]
        ranges.append(
            PartitionRange(
                block=partition_keys[block * size],
                first=partition_keys[min(indexes)],
                last=partition_keys[max(indexes)],
                datasets=tuple(sorted(by_dataset)),
                partitions=len(indexes),
            )
        )
    return ranges


def partitions_per_run(policy: dg.BackfillPolicy | None) -> int:
    """What a backfill run of an asset with `policy` covers: N for multi_run(N), every partition for single_run,
    one without a policy."""
    if policy is None:
        return 1
    return policy.max_partitions_per_run or sys.maxsize


def next_attempt(earlier: Sequence[dg.DagsterRunStatus], max_attempts: int) -> int | None:
    """The attempt to request for a range still holding old wrapped keys, given the statuses of its earlier
    runs in the campaign (newest first): 1 when it has none; the next one when the last has finished (it failed,
    or a file under the old key appeared since) and fewer than `max_attempts` were made; None while the last is
    queued or in progress, or once `max_attempts` runs were made (the operator's turn)."""
    if not earlier:
        return 1
    if earlier[0] not in FINISHED_STATUSES or len(earlier) >= max_attempts:
        return None
    return len(earlier) + 1


def range_run_key(campaign_id: str, job_name: str, block: str, size: int, attempt: int) -> str:
    """Once per campaign, range (its block) and attempt. Campaign ids are random and a sensor's run keys are its
    own, so workspaces cannot collide; N is part of the key so a code location reloaded with another N does not
    reuse a key for other partitions."""
    job = "" if job_name.endswith("__rotate_keys") else f"{job_name}/"
    return f"{campaign_id}/{job}{range_label(block, size)}" + (f"/attempt-{attempt}" if attempt > 1 else "")


def range_label(block: str, size: int) -> str:
    """A range's name in its runs' `fieldcrypt/rotation_range` tag and run key: `<first key of its block>+<N>`."""
    return UNPARTITIONED if block == UNPARTITIONED else f"{block}+{size}"


def range_run_request(
    scope: WorkspaceScope,
    job_name: str,
    campaign_id: str,
    found: PartitionRange,
    attempt: int,
    size: int,
    tags: Mapping[str, str],
) -> dg.RunRequest:
    """A rotate run over `found`: Dagster's partition-range tags (as a multi_run backfill tags its runs) over
    the campaign's rotation partition keys `<campaign>|<first>` .. `<campaign>|<last>`."""
    asset_selection = [scope.asset_key(rotation_asset_name(dataset)) for dataset in found.datasets]
    run_tags = {**tags, RANGE_TAG: range_label(found.block, size)}
    run_key = range_run_key(campaign_id, job_name, found.block, size, attempt)
    if found.first is None or found.last is None:
        return dg.RunRequest(
            job_name=job_name,
            partition_key=rotation_partition_key(campaign_id, None),
            asset_selection=asset_selection,
            run_key=run_key,
            tags=run_tags,
        )
    return dg.RunRequest(
        job_name=job_name,
        asset_selection=asset_selection,
        run_key=run_key,
        tags={
            **run_tags,
            ASSET_PARTITION_RANGE_START_TAG: rotation_partition_key(campaign_id, found.first),
            ASSET_PARTITION_RANGE_END_TAG: rotation_partition_key(campaign_id, found.last),
        },
    )


def earlier_range_runs(
    instance: dg.DagsterInstance, scope: WorkspaceScope, campaign_id: str
) -> dict[tuple[str, str], list[dg.DagsterRun]]:
    """The campaign's runs per (job, range label), newest first: one query per tick, not one per range."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={**scope.tags(), CAMPAIGN_TAG: campaign_id}))
    by_range: dict[tuple[str, str], list[dg.DagsterRun]] = {}
    for run in runs:
        label = run.tags.get(RANGE_TAG)
        if label is not None:
            by_range.setdefault((run.job_name, label), []).append(run)
    return by_range


def driver_max_attempts() -> int:
    """Runs the driver requests per range and campaign at most (FIELDCRYPT_DRIVER_MAX_ATTEMPTS, default 3)."""
    return _positive_setting(DRIVER_MAX_ATTEMPTS_ENV, DEFAULT_DRIVER_MAX_ATTEMPTS)


def driver_max_reads() -> int:
    """Partitions one driver tick reads at most (FIELDCRYPT_DRIVER_MAX_READS, default 2,000): keeps a tick
    inside Dagster's sensor timeout on a large S3 lake; the rest are read by the next ticks."""
    return _positive_setting(DRIVER_MAX_READS_ENV, DEFAULT_DRIVER_MAX_READS)


def _positive_setting(name: str, default: int) -> int:
    raw = os.environ.get(name) or str(default)
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ConfigError(f"{name}={raw!r} is not a positive whole number")
    return int(raw)


def driver_cursor(campaign_id: str, clean: Mapping[str, str]) -> str:
    """The driver's cursor: the campaign, and each partition found clean with its files' fingerprint.
    Compressed JSON: about 16 bytes per partition (160 KB at 10,000 partitions, bench/scale.py)."""
    document = json.dumps({"campaign": campaign_id, "clean": dict(clean)}, separators=(",", ":"))
    return base64.b64encode(zlib.compress(document.encode(), 9)).decode()


def read_driver_cursor(cursor: str | None, campaign_id: str) -> dict[str, str]:
    """Partitions known clean in `campaign_id`; nothing (a full scan, always correct) for another campaign's
    cursor or one that does not parse."""
    if not cursor:
        return {}
    try:
        document = json.loads(zlib.decompress(base64.b64decode(cursor, validate=True)))
    except (ValueError, zlib.error):
        return {}
    if not isinstance(document, dict) or document.get("campaign") != campaign_id:
        return {}
    clean = document.get("clean")
    if not isinstance(clean, dict):
        return {}
    return {str(label): str(fingerprint) for label, fingerprint in clean.items()}
