"""Master-key rotation as assets: `rotated_<dataset>_keys`, partitioned like the data it rewraps.

A partition of `rotated_<dataset>_keys` is "every wrapped data key in the dataset's files
of that partition is under the current master key". Materializing it calls the core's
`Workspace.rotate`, which rewraps each distinct data key not yet under the current key
once, rewrites only the wrapped-key columns, verifies and replaces atomically; a file
already under the current key is skipped without being rewritten. So a rotation
campaign's bulk work is a backfill of these assets over every partition: partitions run
in parallel (one run each), bounded by the `kms` pool and the run queue, and a failed
or interrupted backfill is resumed by launching it again.

A partition with no stored file has nothing to rotate: it materializes at once with
`stored: false`, so a backfill over the whole partition range needs no hand-picking.
"""

import warnings
from collections.abc import Iterator
from typing import Any

import dagster as dg

from assets.protection import KMS_POOL, partition_of
from fieldcrypt import ThrottledError, Workspace
from fieldcrypt.layout import DatasetLayout, partition_label
from fieldcrypt.rotate import RotateReport
from resources import FieldcryptResource

NO_OLD_WRAPPED_KEYS = "no_old_wrapped_keys"


def rotation_asset_name(dataset: str) -> str:
    return f"rotated_{dataset}_keys"


def rotated_keys(layout: DatasetLayout, partitions_def: dg.PartitionsDefinition | None) -> dg.AssetsDefinition:
    """The asset `rotated_<dataset>_keys`: one run per partition, KMS use bounded by the `kms` pool."""
    with warnings.catch_warnings():
        # `backfill_policy` is beta in Dagster 1.13; multi_run(1) is what we mean (see assets/protection.py).
        warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)
        return _rotation_asset(layout.name, rotation_asset_name(layout.name), partitions_def)


def _rotation_asset(
    dataset: str, asset_name: str, partitions_def: dg.PartitionsDefinition | None
) -> dg.AssetsDefinition:
    @dg.asset(
        name=asset_name,
        description=(
            f"Every wrapped data key of the {dataset} snapshot of the partition is under the current master key. "
            "Materializing rewraps each data key left under the old key once (KMS calls scale with distinct "
            "data keys, not rows), "
            "rewrites only the wrapped-key columns (ciphertext byte-identical), verifies, replaces atomically. "
            "A partition already under the current key is skipped without rewriting."
        ),
        deps=[f"protected_{dataset}"],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.multi_run(1) if partitions_def is not None else None,
        pool=KMS_POOL,
        retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL),
        check_specs=[
            dg.AssetCheckSpec(
                NO_OLD_WRAPPED_KEYS,
                asset=asset_name,
                description="No wrapped data key in the partition's file is under a master key other than the current.",
            )
        ],
        group_name="rotation",
        kinds={"parquet"},
    )
    def rotate_partition(
        context: dg.AssetExecutionContext, fieldcrypt: FieldcryptResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        partition = partition_of(context)
        label = partition_label(partition)
        workspace = fieldcrypt.workspace(actor=f"dagster:{context.run.run_id}")
        try:
            stored = bool(workspace.files(dataset, partition))
        except Exception as exc:
            raise rotation_failure(dataset, label, exc) from exc
        if not stored:
            context.log.info(f"{dataset} {label}: no stored file, nothing to rotate")
            yield dg.MaterializeResult(metadata={"partition": label, "stored": False, "rewritten": False})
            yield dg.AssetCheckResult(check_name=NO_OLD_WRAPPED_KEYS, passed=True, metadata={"partition": label})
            return
        try:
            report = workspace.rotate(dataset, partition)
        except Exception as exc:
            raise rotation_failure(dataset, label, exc) from exc
        context.log.info(
            f"{dataset} {label}: {report.files} files, "
            f"{report.rewrapped} of {report.distinct_data_keys} data keys rewrapped, "
            f"{report.kms_calls} KMS calls, rewritten={report.rewritten}"
        )
        yield dg.MaterializeResult(metadata=rotation_metadata(workspace, report, partition))
        yield _no_old_wrapped_keys(workspace, dataset, partition)

    return rotate_partition


def rotation_failure(dataset: str, partition: str, exc: Exception) -> dg.Failure:
    """Only throttling is retried by the asset's retry policy. Anything else (access denied, a file that
    does not verify, a lost connection) fails the partition with its file intact: re-launching it is safe,
    and is left to the operator or the rotation driver. fieldcrypt's messages name no secret."""
    return dg.Failure(
        description=f"rotating {dataset} partition {partition} failed: {type(exc).__name__}: {exc}",
        allow_retries=isinstance(exc, ThrottledError),
    )


def rotation_metadata(workspace: Workspace, report: RotateReport, partition: str | None) -> dict[str, Any]:
    """Counts and key ids only: never a value, never key bytes."""
    binding = workspace.bindings.load()
    campaign = binding.active_campaign if binding else None
    return {
        "partition": partition_label(partition),
        "path": report.path,
        "stored": True,
        "files": report.files,
        "files_rewritten": report.files_rewritten,
        "campaign_id": campaign.campaign_id if campaign else "(none in progress)",
        "master_key_id": binding.current.ref if binding else "(lake not bound)",
        "distinct_data_keys": report.distinct_data_keys,
        "rewrapped": report.rewrapped,
        "already_current": report.distinct_data_keys - report.rewrapped,
        "skipped": not report.rewritten,  # already under the current key: the file was not rewritten
        "rewritten": report.rewritten,
        "kms_calls": report.kms_calls,
        "cells_under_rewrapped_keys": report.cells_under_rewrapped_keys,
        "master_keys_before": dg.MetadataValue.json(report.master_keys_before),  # key id -> distinct data keys
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

