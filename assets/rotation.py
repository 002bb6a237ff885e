"""Master-key rotation as assets: `rotated_<dataset>_keys`, partitioned by campaign and snapshot partition.

A partition of `rotated_<dataset>_keys` is "in campaign C, every wrapped data key in the
dataset's files of snapshot partition D is under C's new master key": its key is the
multi-partition key `C|D` (dimensions `campaign`, a dynamic partitions definition, and
`snapshot`, the dataset's own partitions; an unpartitioned Hive dataset has the campaign
alone, an unpartitioned table the snapshot `(unpartitioned)`). Materializing it calls the
core's `Workspace.rotate`, which rewraps each distinct data key not yet under the current
key once, rewrites only the wrapped-key columns,
verifies and replaces atomically; a file already under the current key is skipped
without being rewritten.

Why the campaign is part of the partition key: Dagster keeps a partition materialized
for good (OSS storage cannot wipe a partition's history, and a new code version makes a
partition stale, not missing; the launch dialog only offers "missing and failed"). With
one partition per campaign and snapshot, a new campaign's partitions are all missing
until rotated under it, so the asset's partition bar shows exactly what is under the
current key (green) and what still needs work (missing or failed), "missing and failed"
in the launch dialog selects exactly that, and each green partition's metadata names the
campaign and the key it was rotated to. The `campaign` dimension holds the current
campaign only: `start_key_rotation` (and the `key_rotation_driver` sensor, for a campaign
started with the CLI) add it and drop the previous one, so the launch dialog's default
range is the current campaign's; earlier campaigns stay in the runs (tag
`fieldcrypt/rotation_campaign`), the assets' observations and the audit log.

A partition with no stored file has nothing to rotate: it materializes at once with
`stored: false`, so a backfill over the whole partition range needs no hand-picking.
Runs cover ranges of partitions like the protection assets (assets/ranged.py).
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from assets.partitions import dataset_partition
from assets.ranged import (
    OncePerRun,
    Outcome,
    PartitionDone,
    ranged_asset,
    report_partitions,
    run_keys,
    run_partitions,
)
from assets.scope import WorkspaceScope
from fieldcrypt import ThrottledError, Workspace
from fieldcrypt.engine.rotate import RotateReport
from fieldcrypt.keys.binding import Campaign, KeyBinding
from fieldcrypt.policy.layout import DatasetLayout, partition_label

NO_OLD_WRAPPED_KEYS = "no_old_wrapped_keys"
CAMPAIGN_DIMENSION = "campaign"
SNAPSHOT_DIMENSION = "snapshot"


def rotation_campaigns(scope: WorkspaceScope) -> dg.DynamicPartitionsDefinition:
    """The workspace's `campaign` dimension: `<workspace>__rotation_campaign`, its current campaign only."""
    return dg.DynamicPartitionsDefinition(name=scope.job_name("rotation_campaign"))


def rotation_asset_name(dataset: str) -> str:
    return f"rotated_{dataset}_keys"


def rotation_partitions(
    scope: WorkspaceScope, snapshot_partitions: dg.PartitionsDefinition | None
) -> dg.PartitionsDefinition:
    """Campaign x snapshot partition; the campaign alone for an unpartitioned dataset."""
    campaigns = rotation_campaigns(scope)
    if snapshot_partitions is None:
        return campaigns
    return dg.MultiPartitionsDefinition({CAMPAIGN_DIMENSION: campaigns, SNAPSHOT_DIMENSION: snapshot_partitions})


def rotation_partition_key(campaign_id: str, snapshot: str | None) -> str:
    """The rotation assets' partition key of the Dagster snapshot partition key `snapshot` (None: the dataset's
    assets have no partitions; an unpartitioned table's is `(unpartitioned)`, assets.partitions.partition_key)
    in campaign `campaign_id`."""
    if snapshot is None:
        return campaign_id
    return dg.MultiPartitionKey({CAMPAIGN_DIMENSION: campaign_id, SNAPSHOT_DIMENSION: snapshot})


def split_rotation_key(key: str, partitioned: bool) -> tuple[str, str | None]:
    """(campaign id, the core's snapshot partition, None when unpartitioned) of a rotation partition key."""
    if not partitioned:
        return key, None
    campaign, separator, snapshot = key.partition("|")  # dimensions in name order: campaign|snapshot
    if not separator:
        raise dg.Failure(description=f"rotation partition key {key!r} is not <campaign>|<partition>")
    return campaign, dataset_partition(snapshot)


def latest_campaign(binding: KeyBinding | None) -> Campaign | None:
    """The campaign in progress, else the last one completed: the one whose partitions the UI shows."""
    if binding is None:
        return None
    return binding.active_campaign or (binding.campaigns[-1] if binding.campaigns else None)


def rotated_keys(
    scope: WorkspaceScope, layout: DatasetLayout, snapshot_partitions: dg.PartitionsDefinition | None
) -> dg.AssetsDefinition:
    """The asset `<workspace>/rotated_<dataset>_keys`: ranges of partitions per run, KMS use bounded by the
    workspace's pool."""
    dataset = layout.name
    asset_name = rotation_asset_name(dataset)
    partitioned = snapshot_partitions is not None

    @ranged_asset(
        scope,
        rotation_partitions(scope, snapshot_partitions),
        name=asset_name,
        description=(
            f"In the current rotation campaign, every wrapped data key of the {dataset} snapshot of the partition "
            "is under the campaign's new master key. Partitions are <campaign>|<snapshot partition>: a new "
            "campaign's partitions are missing until rotated. Materializing rewraps each data key left under "
            "the old key once (KMS calls scale with distinct data keys, not rows), rewrites only the wrapped-key "
            "columns (ciphertext byte-identical), verifies, replaces atomically. A partition already under the "
            "current key is skipped without rewriting."
        ),
        # Dagster infers the mapping to the snapshot dimension (campaign C, date D depends on D).
        deps=[scope.asset_key(f"protected_{dataset}")],
        check_specs=[
            dg.AssetCheckSpec(
                NO_OLD_WRAPPED_KEYS,
                asset=scope.asset_key(asset_name),
                description="No wrapped data key in the partition's file is under a master key other than the current.",
            )
        ],
        group_name="rotation",
    )
    def rotate_partitions(context: dg.AssetExecutionContext) -> Iterator[dg.AssetCheckResult]:
        actor = f"dagster:{context.run.run_id}"
        fieldcrypt = scope.resource(context)

        def label(key: str | None) -> str:
            return partition_label(None if key is None else split_rotation_key(key, partitioned)[1])

        shared = OncePerRun(lambda: fieldcrypt.workspace(actor))  # one data-key cache for the run's partitions

        def work(key: str | None) -> PartitionDone:
            campaign_id, partition = split_rotation_key(key or "", partitioned)
            workspace = shared.get()
            campaign = latest_campaign(workspace.bindings.load())
            if campaign is None or campaign.campaign_id != campaign_id:
                current = campaign.campaign_id if campaign else "none"
                raise RotationCampaignMismatch(
                    f"partition {key} belongs to rotation campaign {campaign_id}, but the current campaign is "
                    f"{current}: launch the current campaign's partitions"
                )
            return rotate_one(context, workspace, dataset, partition, campaign)

        outcomes: list[Outcome] = run_partitions(run_keys(context), label, work)
        yield from report_partitions(context, "rotating", dataset, outcomes, rotation_retryable)

    return rotate_partitions


class RotationCampaignMismatch(Exception):
    """A partition of a campaign other than the current one was launched; it names both campaigns."""


def rotate_one(
    context: dg.AssetExecutionContext, workspace: Workspace, dataset: str, partition: str | None, campaign: Campaign
) -> PartitionDone:
    label = partition_label(partition)
    if not workspace.files(dataset, partition):
        context.log.info(f"{dataset} {label}: no stored file, nothing to rotate")
        check = dg.AssetCheckResult(check_name=NO_OLD_WRAPPED_KEYS, passed=True, metadata={"partition": label})
        return PartitionDone(
            {"partition": label, "campaign_id": campaign.campaign_id, "stored": False, "rewritten": False}, [check]
        )
    report = workspace.rotate(dataset, partition)
    context.log.info(
        f"{dataset} {label}: {report.files} files, "
        f"{report.rewrapped} of {report.distinct_data_keys} data keys rewrapped, "
        f"{report.kms_calls} KMS calls, rewritten={report.rewritten}"
    )
    return PartitionDone(
        rotation_metadata(workspace, report, partition, campaign), [_no_old_wrapped_keys(workspace, dataset, partition)]
    )


def rotation_retryable(exc: Exception) -> bool:
    """Only throttling is retried by the asset's retry policy. Anything else (access denied, a file that
    does not verify, a lost connection) fails the partition with its file intact: re-launching it is safe,
    and is left to the operator or the rotation driver. fieldcrypt's messages name no secret."""
    return isinstance(exc, ThrottledError)


def rotation_metadata(
    workspace: Workspace, report: RotateReport, partition: str | None, campaign: Campaign
) -> dict[str, Any]:
    """Counts and key ids only: never a value, never key bytes."""
    binding = workspace.bindings.load()
    return {
        "partition": partition_label(partition),
        "path": report.path,
        "stored": True,
        "files": report.files,
        "files_rewritten": report.files_rewritten,
        "campaign_id": campaign.campaign_id,
        "master_key_id": binding.current.ref if binding else "(lake not bound)",
        "distinct_data_keys": report.distinct_data_keys,
        "rewrapped": report.rewrapped,
        "already_current": report.distinct_data_keys - report.rewrapped,
        "skipped": not report.rewritten,  # already under the current key: the file was not rewritten
        "rewritten": report.rewritten,
        "kms_calls": report.kms_calls,
        "cells_under_rewrapped_keys": report.cells_under_rewrapped_keys,
        "summary_files_removed": dg.MetadataValue.json(report.summary_files_removed),
        "master_keys_before": dg.MetadataValue.json(report.master_keys_before),  # key id -> distinct data keys
        # splice: untouched column chunks copied as bytes; full: every column rewritten (docs/FORMAT.md)
        "rewrite_path": report.rewrite_path or "(not rewritten)",
        "duration_s": dg.MetadataValue.float(round(report.seconds, 3)),
    }


def _no_old_wrapped_keys(workspace: Workspace, dataset: str, partition: str | None) -> dg.AssetCheckResult:
    """The partition's share of the completion scan (`Workspace.rotation_status`), read back from the stored file."""
    binding = workspace.bindings.load()
    current = binding.current.ref if binding else None
    old = workspace.old_key_refs(dataset, partition)
    return dg.AssetCheckResult(
        check_name=NO_OLD_WRAPPED_KEYS,
        passed=not old,
        metadata={
            "partition": partition_label(partition),
            "master_key_id": current or "(lake not bound)",
            "old_master_keys": dg.MetadataValue.json(old),
        },
    )
