"""Master-key rotation jobs: start a campaign, rotate partitions, prove completion; optionally on a schedule.

Each workspace has its own (names prefixed `<workspace>__`, assets/scope.py): a campaign of
workspace A touches A's files and calls A's key only, and its runs carry A's workspace tag.

A campaign by hand (docs/OPERATIONS.md, "Rotation"):
  1. `start_key_rotation` (launchpad; local: a new key version, aws-kms: `to_kms_key_arn`);
  2. a backfill of the rotation assets over every partition (`rotate_keys` or the assets);
  3. `complete_key_rotation`: scans every partition, fails listing those still under the old
     key, otherwise marks the campaign complete and retires the old key.

Scheduled rotation (optional, both STOPPED by default): `scheduled_key_rotation` runs
`start_key_rotation` for a local key on FIELDCRYPT_ROTATION_CRON (default: quarterly),
and the `key_rotation_driver` sensor does steps 2 and 3 for whatever campaign is in
progress. Each tick it lists the lake, reads the wrapped-key columns (no KMS call, 8
partitions at once) of every partition not already found clean with unchanged files (its
cursor keeps, per campaign, each clean partition's fingerprint of file names, sizes and
modification times; a rewritten file changes it), and
requests one `rotate_keys` run per partition still holding old wrapped keys, with run key
`<campaign id>/<date>`, so a partition is requested once per campaign however many ticks
see it; when nothing remains it requests `complete_key_rotation` (run key
`<campaign id>/complete`). Why a sensor of run requests rather than a sensor that launches
a backfill: `RunRequest.for_asset_graph_subset` is private in Dagster 1.13, while run
requests with run keys are the public, documented pattern, and the run queue and `kms`
pool bound them exactly as they bound a backfill's runs. The price: a partition whose run
failed is not requested again in the same campaign (its run key is spent); re-execute it
from the UI and the driver moves on.
"""

import base64
import json
import os
import warnings
import zlib
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from pydantic import Field

from assets import DatasetAssets
from assets.rotation import rotation_asset_name, rotation_campaigns, rotation_partition_key
from assets.scope import WorkspaceScope
from fieldcrypt import ConfigError, FieldcryptError, PolicyError
from fieldcrypt.binding import Campaign
from fieldcrypt.providers.local import PROVIDER_ID as LOCAL

# When Definitions binds the code location's resources to complete_key_rotation, Dagster 1.13 copies
# key_rotation_driver (SensorDefinition.with_attributes) passing its own `owners` argument and warns
# that the argument is beta. Nothing of ours uses it; only that warning is silenced.
warnings.filterwarnings(
    "ignore", message="Parameter `owners` of initializer `SensorDefinition", category=dg.BetaWarning
)

DEFAULT_ROTATION_CRON = "0 3 1 1,4,7,10 *"  # 03:00 UTC on the first day of each quarter
CAMPAIGN_TAG = "fieldcrypt/rotation_campaign"
DRIVER_MAX_READS_ENV = "FIELDCRYPT_DRIVER_MAX_READS"
DEFAULT_DRIVER_MAX_READS = 2000


class StartKeyRotationConfig(dg.Config):
    to_kms_key_arn: str | None = Field(
        default=None,
        description=(
            "aws-kms only: the ARN of the new master key, checked with DescribeKey before the campaign starts. "
            "Leave empty for the local provider: a new key version is created."
        ),
    )


def campaign_partition_requests(
    scope: WorkspaceScope, instance: dg.DagsterInstance, campaign_id: str
) -> list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest]:
    """What makes `campaign_id` the only campaign of the workspace's `campaign` dimension (nothing when it is)."""
    campaigns = rotation_campaigns(scope)
    shown = instance.get_dynamic_partitions(campaigns.name)
    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if campaign_id not in shown:
        requests.append(campaigns.build_add_request([campaign_id]))
    earlier = [key for key in shown if key != campaign_id]
    if earlier:
        requests.append(campaigns.build_delete_request(earlier))
    return requests


def show_campaign_partitions(scope: WorkspaceScope, instance: dg.DagsterInstance, campaign_id: str) -> None:
    """From now on the workspace's rotation assets' partitions are this campaign's (all missing until rotated).

    Dropping an earlier campaign's key hides its partitions from the asset's partition bar
    and the launch dialog; its runs, observations and materialization events stay."""
    name = rotation_campaigns(scope).name
    for request in campaign_partition_requests(scope, instance, campaign_id):
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(name, key)


def start_key_rotation_job(scope: WorkspaceScope) -> dg.JobDefinition:
    @dg.op(
        name=scope.job_name("start_rotation_campaign"),
        description="Start a rotation campaign, as `fieldcrypt rotate start [--to ARN]` does.",
        required_resource_keys={scope.resource_key},
    )
    def start_rotation_campaign(context: dg.OpExecutionContext, config: StartKeyRotationConfig) -> None:
        workspace = scope.resource(context).workspace(actor=f"dagster:{context.run.run_id}")
        try:
            campaign = workspace.start_rotation(to_kms_key=config.to_kms_key_arn or None)
        except FieldcryptError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        show_campaign_partitions(scope, context.instance, campaign.campaign_id)
        context.log.info(
            f"{scope.name}: rotation {campaign.campaign_id} started: {campaign.old.ref} -> {campaign.new.ref}. New "
            "data keys wrap under the new key; both keys decrypt until the campaign completes. Next: backfill the "
            "rotation assets (their partitions of this campaign are all missing until rotated)."
        )
        _observe_rotation_assets(scope, context, campaign)

    @dg.job(
        name=scope.job_name("start_key_rotation"),
        description=(
            f"Start a master-key rotation campaign of workspace {scope.name}. local: creates a new key version; "
            "aws-kms: set to_kms_key_arn. From now on new data keys wrap under the new key; then backfill the "
            "rotation assets."
        ),
        tags=scope.tags("rotate"),
    )
    def start_key_rotation() -> None:
        start_rotation_campaign()

    return start_key_rotation


def rotate_jobs(assets: DatasetAssets) -> list[UnresolvedAssetJobDefinition]:
    """One job per partition group, like the protect jobs: `<workspace>__rotate_keys` when all datasets share one."""
    return [
        dg.define_asset_job(
            assets.scope.job_name(f"rotate_keys{group.suffix}"),
            selection=dg.AssetSelection.assets(*(assets.rotated[name] for name in group.datasets)),
            description=(
                f"Rewrap the data keys of one partition of {', '.join(group.datasets)} under the current master key."
            ),
            tags=assets.scope.tags("rotate"),
        )
        for group in assets.groups
    ]


def complete_key_rotation_job(scope: WorkspaceScope) -> dg.JobDefinition:
    @dg.op(
        name=scope.job_name("complete_rotation_campaign"),
        description=(
            "Prove no wrapped key under the old master key remains, then retire it (`fieldcrypt rotate complete`)."
        ),
        required_resource_keys={scope.resource_key},
    )
    def complete_rotation_campaign(context: dg.OpExecutionContext) -> None:
        workspace = scope.resource(context).workspace(actor=f"dagster:{context.run.run_id}")
        try:
            campaign = workspace.complete_rotation()
        except PolicyError as exc:
            remaining = workspace.rotation_status().remaining  # the core's message lists the first 20; this has all
            raise dg.Failure(
                description=str(exc),
                metadata={"remaining_partitions": len(remaining), "remaining": dg.MetadataValue.json(remaining)},
                allow_retries=False,
            ) from exc
        except FieldcryptError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        if campaign.old.provider == LOCAL:
            retired = f"local key version {campaign.old.key_version} is retired and no longer decrypts"
        else:
            retired = (
                f"the customer may now disable the old key {campaign.old.key_id}; "
                f"set the workspace's kms_key to {campaign.new.key_id} if not done yet"
            )
        context.log.info(
            f"{scope.name}: rotation {campaign.campaign_id} complete: no wrapped key under {campaign.old.ref} "
            f"remains; {retired}"
        )
        _observe_rotation_assets(scope, context, campaign)

    @dg.job(
        name=scope.job_name("complete_key_rotation"),
        description=(
            f"Scan every partition of workspace {scope.name}; fail listing those still holding wrapped keys under "
            "the old master key, otherwise mark the campaign complete and retire the old key."
        ),
        tags=scope.tags("rotate"),
    )
    def complete_key_rotation() -> None:
        complete_rotation_campaign()

    return complete_key_rotation


def _observe_rotation_assets(scope: WorkspaceScope, context: dg.OpExecutionContext, campaign: Campaign) -> None:
    """The campaign's start or end on each of the workspace's rotation assets' page (ids and times only)."""
    metadata: Mapping[str, Any] = {
        "campaign_id": campaign.campaign_id,
        "status": campaign.status,
        "old_master_key_id": campaign.old.ref,
        "new_master_key_id": campaign.new.ref,
        "started_at": campaign.started_at,
        "finished_at": campaign.finished_at or "",
    }
    for dataset in scope.datasets:
        context.log_event(
            dg.AssetObservation(asset_key=scope.asset_key(rotation_asset_name(dataset)), metadata=dict(metadata))
        )


# -- scheduled rotation (optional) -------------------------------------------------------------


def scheduled_key_rotation_schedule(scope: WorkspaceScope, start: dg.JobDefinition) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=scope.job_name("scheduled_key_rotation"),
        cron_schedule=os.environ.get("FIELDCRYPT_ROTATION_CRON") or DEFAULT_ROTATION_CRON,
        execution_timezone="UTC",
        job=start,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        required_resource_keys={scope.resource_key},
        description=(
            f"Start a rotation campaign of workspace {scope.name} to a new local key version "
            "(FIELDCRYPT_ROTATION_CRON, default quarterly). Turn on its key_rotation_driver too: it rotates the "
            "partitions and completes the campaign."
        ),
    )
    def scheduled_key_rotation(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        fieldcrypt = scope.resource(context)
        provider = fieldcrypt.config().key.provider
        if provider != LOCAL:
            return dg.SkipReason(
                f"scheduled rotation is for a local master key; workspace {scope.name} uses {provider}, "
                "whose key owner starts a rotation with a new key ARN (start_key_rotation)"
            )
        binding = fieldcrypt.workspace(actor="dagster:scheduled_key_rotation").bindings.load()
        if binding is None:
            return dg.SkipReason("the lake is not bound to a master key yet: nothing is protected, nothing to rotate")
        if binding.active_campaign is not None:
            return dg.SkipReason(f"rotation {binding.active_campaign.campaign_id} is still in progress")
        return dg.RunRequest(tags={**scope.tags("rotate"), "fieldcrypt/rotation": "scheduled"})

    return scheduled_key_rotation


def key_rotation_driver_sensor(
    assets: DatasetAssets, rotate: list[UnresolvedAssetJobDefinition], complete: dg.JobDefinition
) -> dg.SensorDefinition:
    """The driver of a campaign: one rotate run per partition still under the old key, then the completion."""
    scope = assets.scope
    job_of = {name: job for group, job in zip(assets.groups, rotate, strict=True) for name in group.datasets}
    partitions_of = {name: group.partitions_def for group in assets.groups for name in group.datasets}

    @dg.sensor(
        name=scope.job_name("key_rotation_driver"),
        jobs=[*rotate, complete],
        minimum_interval_seconds=300,  # each tick reads the wrapped-key columns of every partition
        default_status=dg.DefaultSensorStatus.STOPPED,
        required_resource_keys={scope.resource_key},
        description=(
            f"While a rotation campaign of workspace {scope.name} is in progress: request one rotate_keys run per "
            "partition still holding old wrapped keys (once per campaign), then complete_key_rotation when none "
            "remain."
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
        shown = campaign_partition_requests(scope, context.instance, campaign.campaign_id)
        if status.complete:
            complete_request = dg.RunRequest(
                job_name=complete.name, run_key=f"{campaign.campaign_id}/complete", tags=tags
            )
            return dg.SensorResult(run_requests=[complete_request], dynamic_partitions_requests=shown)
        # (job, partition) -> datasets to rotate in one run
        wanted: dict[tuple[str, str | None], list[str]] = {}
        elsewhere = []  # a dataset without rotation assets here, or a partition outside the definitions
        for entry in sorted(status.remaining):
            dataset, _, key = entry.partition("/")
            partition = key or None
            partitions_def = partitions_of.get(dataset)
            in_range = partition is None if partitions_def is None else (
                partition is not None and partitions_def.has_partition_key(partition)
            )
            if dataset in job_of and in_range:
                wanted.setdefault((job_of[dataset].name, partition), []).append(dataset)
            else:
                elsewhere.append(entry)
        if elsewhere:
            context.log.warning(
                f"rotation {campaign.campaign_id}: {len(elsewhere)} partitions outside this code location's rotation "
                f"assets still hold old wrapped keys; rotate them with `fieldcrypt --workspace {scope.name} "
                f"rotate-partition <dataset> --partition <key>`: {', '.join(elsewhere[:20])}"
            )
        if not wanted:
            if shown:
                return dg.SensorResult(dynamic_partitions_requests=shown)
            if status.unread:
                return dg.SkipReason(
                    f"rotation {campaign.campaign_id}: {len(status.unread)} partitions not read yet; the next ticks "
                    "read them"
                )
            return dg.SkipReason(f"rotation {campaign.campaign_id}: only partitions outside the code location remain")
        return dg.SensorResult(
            dynamic_partitions_requests=shown,
            run_requests=[
                dg.RunRequest(
                    job_name=job_name,
                    partition_key=rotation_partition_key(campaign.campaign_id, partition),
                    asset_selection=[scope.asset_key(rotation_asset_name(dataset)) for dataset in datasets],
                    run_key=_run_key(campaign.campaign_id, job_name, partition),
                    tags=tags,
                )
                for (job_name, partition), datasets in wanted.items()
            ],
        )

    return key_rotation_driver


def driver_max_reads() -> int:
    """Partitions one driver tick reads at most (FIELDCRYPT_DRIVER_MAX_READS, default 2,000): keeps a tick
    inside Dagster's sensor timeout on a large S3 lake; the rest are read by the next ticks."""
    raw = os.environ.get(DRIVER_MAX_READS_ENV) or str(DEFAULT_DRIVER_MAX_READS)
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ConfigError(f"{DRIVER_MAX_READS_ENV}={raw!r} is not a positive whole number")
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


def _run_key(campaign_id: str, job_name: str, partition: str | None) -> str:
    """Once per campaign and partition (and partition group, when there are several). Campaign ids are
    random and a sensor's run keys are its own, so workspaces cannot collide."""
    if job_name.endswith("__rotate_keys") and partition is not None:
        return f"{campaign_id}/{partition}"
    return f"{campaign_id}/{job_name}/{partition or 'all'}"


def build_rotation_definitions(assets: DatasetAssets) -> dg.Definitions:
    """One workspace's rotation: its start and complete jobs, its rotate jobs, schedule and driver sensor."""
    scope = assets.scope
    start = start_key_rotation_job(scope)
    complete = complete_key_rotation_job(scope)
    rotate = rotate_jobs(assets)
    return dg.Definitions(
        jobs=[start, *rotate, complete],
        schedules=[scheduled_key_rotation_schedule(scope, start)],
        sensors=[key_rotation_driver_sensor(assets, rotate, complete)],
    )
