"""The two assets every dataset has: its landed daily snapshot, and the protection of that snapshot.

The landed snapshot is an external asset: an upstream ingestion job writes
`<lake>/<dataset>/date=YYYY-MM-DD/part-0.parquet`; this code location only reads it.
The protected snapshot is the same file after the core's `Workspace.protect` rewrote it
in place (encrypt, mask, verify, atomic replace). The asset function only builds the
workspace, calls the core, and reports counts and ids as metadata.
"""

import warnings
from collections.abc import Iterator
from typing import Any

import dagster as dg

from assets.checks import attribute_path, evaluate_protection_checks, protection_check_specs
from assets.partitions import snapshot_partitions
from fieldcrypt import FieldcryptError, ThrottledError
from fieldcrypt.protect import ProtectReport
from resources import FieldcryptResource

LAYOUT = "<lake>/{dataset}/date=YYYY-MM-DD/part-0.parquet"
KMS_POOL = "kms"


def landed_snapshot(dataset: str, description: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=dataset,
        description=description,
        partitions_def=snapshot_partitions,
        group_name="landed",
        kinds={"parquet"},
        metadata={"layout": LAYOUT.format(dataset=dataset)},
    )


def protected_snapshot(dataset: str, description: str) -> dg.AssetsDefinition:
    """The asset `protected_<dataset>`: one run per partition, KMS use bounded by the `kms` pool."""
    asset_name = f"protected_{dataset}"
    with warnings.catch_warnings():
        # `backfill_policy` is marked beta in Dagster 1.13; multi_run(1) (one run per partition, so
        # partitions run in parallel and fail, retry and resume independently) is what we mean.
        warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)

        @dg.asset(
            name=asset_name,
            description=description,
            deps=[dataset],
            partitions_def=snapshot_partitions,
            backfill_policy=dg.BackfillPolicy.multi_run(1),
            pool=KMS_POOL,
            # Only throttling (and errors that are not fieldcrypt's, e.g. a dropped S3 connection) is
            # retried: a re-run is safe (nothing half-written, done rows are skipped); bad input is not.
            retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL),
            check_specs=protection_check_specs(asset_name),
            group_name="protected",
            kinds={"parquet"},
            metadata={"layout": LAYOUT.format(dataset=dataset)},
        )
        def protect_partition(
            context: dg.AssetExecutionContext, fieldcrypt: FieldcryptResource
        ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
            partition = context.partition_key
            actor = f"dagster:{context.run.run_id}"
            try:
                report = fieldcrypt.workspace(actor).protect(dataset, partition)
            except FieldcryptError as exc:
                raise dg.Failure(
                    description=f"protecting {dataset} partition {partition} failed: {exc}",
                    allow_retries=isinstance(exc, ThrottledError),
                ) from exc
            context.log.info(
                f"{dataset} {partition}: {report.rows} rows, {report.newly_encrypted} cells newly encrypted, "
                f"{report.kms_calls} KMS calls, rewritten={report.rewritten}"
            )
            yield dg.MaterializeResult(metadata=protection_metadata(report, partition))
            # A second workspace, with an empty data-key cache: the checks unwrap through the KMS.
            yield from evaluate_protection_checks(fieldcrypt.workspace(actor), dataset, partition, report)

    return protect_partition


def protection_metadata(report: ProtectReport, partition: str) -> dict[str, Any]:
    """Counts and ids only: never a value, never key bytes."""
    metadata: dict[str, Any] = {
        "partition": partition,
        "path": report.path,
        "rows": report.rows,
        "newly_encrypted": report.newly_encrypted,
        "rewritten": report.rewritten,
        "data_keys": report.data_keys,
        "kms_calls": report.kms_calls,
        "master_key_id": report.master_key or "(none used)",
        "duration_s": dg.MetadataValue.float(round(report.seconds, 3)),
    }
    lines = [
        "| attribute | newly encrypted | historical plaintext | already protected | null |",
        "|---|---|---|---|---|",
    ]
    for name, counts in report.attributes.items():
        attribute = attribute_path(name)
        metadata[f"newly_encrypted.{attribute}"] = counts.newly_encrypted
        metadata[f"historical_plaintext.{attribute}"] = counts.historical_plaintext
        metadata[f"already_protected.{attribute}"] = counts.already_protected
        lines.append(
            f"| {name} | {counts.newly_encrypted} | {counts.historical_plaintext} | "
            f"{counts.already_protected} | {counts.null_values} |"
        )
    metadata["attributes"] = dg.MetadataValue.md("\n".join(lines) if report.attributes else "no attribute enabled")
    return metadata
