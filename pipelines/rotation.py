"""Master-key rotation jobs: start a campaign, rotate partitions, prove completion; optionally on a schedule.

Each workspace has its own (names prefixed `<workspace>__`, assets/scope.py): a campaign of
workspace A touches A's files and calls A's key only, and its runs carry A's workspace tag.

A campaign by hand (docs/OPERATIONS.md, "Rotation"):
  1. `start_key_rotation` (launchpad; local: a new key version, aws-kms: `to_kms_key_arn`);
  2. a backfill of the rotation assets over every partition (`rotate_keys` or the assets);
  3. `complete_key_rotation`: scans every partition, fails listing those still under the old
     key, otherwise marks the campaign complete and retires the old key.

Scheduled rotation (optional, both STOPPED by default): `scheduled_key_rotation` runs
`start_key_rotation` for a local key on FIELDCRYPT_ROTATION_CRON (default: quarterly), and
the `key_rotation_driver` sensor (pipelines/rotation_driver.py) does steps 2 and 3 for
whatever campaign is in progress.
"""

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from pydantic import Field

from assets import DatasetAssets
from assets.rotation import rotation_asset_name
from assets.scope import WorkspaceScope
from fieldcrypt import FieldcryptError, PolicyError
from fieldcrypt.keys.binding import Campaign
from fieldcrypt.keys.providers.local import PROVIDER_ID as LOCAL
from pipelines.campaign_partitions import show_campaign_partitions
from pipelines.rotation_driver import key_rotation_driver_sensor

DEFAULT_ROTATION_CRON = "0 3 1 1,4,7,10 *"  # 03:00 UTC on the first day of each quarter


class StartKeyRotationConfig(dg.Config):
    to_kms_key_arn: str | None = Field(
        default=None,
        description=(
            "aws-kms only: the ARN of the new master key, checked with DescribeKey before the campaign starts. "
            "Leave empty for the local provider: a new key version is created."
        ),
    )


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
