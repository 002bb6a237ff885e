"""The two assets every declared dataset has: its landed snapshot, and the protection of that snapshot.

The landed snapshot is an external asset: an upstream job (Spark, DuckDB, pandas, ...)
writes the partition's Parquet files under the dataset's path in the lake; this code
location only reads them, and observes a data version per partition (assets/landed.py) so that
protection made before new plaintext landed shows as stale. The protected snapshot is the same files after the core's
`Workspace.protect` rewrote each in place (encrypt, mask, verify, atomic replace). The
asset function only builds the workspace, calls the core, and reports counts and ids as
metadata. Both are generated from the catalog (`assets.build_assets`).
"""

import warnings
from collections.abc import Iterator
from typing import Any

import dagster as dg

from assets.checks import attribute_path, evaluate_protection_checks, failed_check_names, protection_check_specs
from assets.discovery import discovery_check_spec, evaluate_discovery_check
from assets.landed import (
    consumed_version_tags,
    landed_changed_condition,
    observe_dataset,
    report_protected_version,
)
from assets.partitions import partition_key
from assets.ranged import OncePerRun, PartitionDone, ranged_asset, report_partitions, run_dataset_partitions
from assets.scope import WorkspaceScope
from fieldcrypt import FieldcryptError, ThrottledError
from fieldcrypt.engine.protect import ProtectReport
from fieldcrypt.policy.layout import DatasetLayout, partition_label


def layout_description(layout: DatasetLayout) -> str:
    """Where the dataset's files are, as the catalog declares it."""
    if layout.source is not None:
        return f"{layout.kind} table <lake>/{layout.path}: partitions and files from its log"
    levels = "/".join(f"{level.key}={level.format}" for level in layout.partitioning.levels)
    return f"<lake>/{layout.path}/{levels + '/' if levels else ''}*.parquet (any file names, nested folders)"


def landed_snapshot(
    scope: WorkspaceScope, layout: DatasetLayout, partitions_def: dg.PartitionsDefinition | None
) -> dg.AssetsDefinition:
    """The landed snapshot, observable: "Observe" in the UI (or the workspace's `observe_landed_snapshots`
    sensor) records a data version per partition (assets/landed.py), so protection made before plaintext
    landed shows as stale."""
    spec = layout.spec
    dataset = layout.name
    asset_key = scope.asset_key(dataset)

    def observe(context: dg.OpExecutionContext) -> None:
        workspace = scope.resource(context).workspace(f"dagster:{context.run.run_id}")
        for observation in observe_dataset(
            workspace, context.instance, asset_key, dataset, partition_keys(partitions_def, context.instance)
        ):
            context.log_event(observation)

    with warnings.catch_warnings():
        # `multi_observable_source_asset` is marked beta in Dagster 1.13; an observable AssetSpec is what we mean.
        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        observable = dg.multi_observable_source_asset(
            specs=[
                dg.AssetSpec(
                    key=asset_key,
                    description=(
                        f"Snapshot of {dataset} landed by the upstream ingestion job (ingestion time "
                        f"{spec.ingested_at}, primary key {spec.primary_key or 'none'}). Observed: its data version "
                        "changes when a file lands or is replaced upstream, or the policy of the dataset changes."
                    ),
                    partitions_def=partitions_def,
                    group_name="landed",
                    kinds={"parquet"},
                    metadata={"layout": layout_description(layout)},
                )
            ],
            name=scope.job_name(f"observe_{dataset}"),
            partitions_def=partitions_def,
            required_resource_keys={scope.resource_key},
        )
        definition: dg.AssetsDefinition = observable(observe)
    return definition


def partition_keys(partitions_def: dg.PartitionsDefinition | None, instance: dg.DagsterInstance) -> set[str] | None:
    """The asset's partition keys (a table's dynamic partitions: as the instance holds them)."""
    if partitions_def is None:
        return None
    return set(partitions_def.get_partition_keys(dynamic_partitions_store=instance))


def protected_snapshot(
    scope: WorkspaceScope, layout: DatasetLayout, partitions_def: dg.PartitionsDefinition | None
) -> dg.AssetsDefinition:
    """The asset `<workspace>/protected_<dataset>`: ranges of partitions per run (assets/ranged.py), in the
    workspace's KMS pool."""
    dataset = layout.name
    asset_name = f"protected_{dataset}"
    asset_key = scope.asset_key(asset_name)
    landed_key = scope.asset_key(dataset)
    partitioned = partitions_def is not None  # the landed asset's too

    @ranged_asset(
        scope,
        partitions_def,
        name=asset_name,
        description=(
            f"The {dataset} snapshot with every enabled attribute encrypted for rows ingested at or after its "
            "enablement: ciphertext and wrapped data-key columns added, a mask in the original column. Each "
            "file is rewritten in place, verified before an atomic replace; a re-run with nothing pending is "
            "a no-op. A partition that fails, or whose checks fail, is not materialized and the run fails "
            "naming it."
        ),
        deps=[landed_key],
        check_specs=[*protection_check_specs(asset_key), discovery_check_spec(asset_key)],
        # Evaluated only while the workspace's `protect_when_landed_changes` sensor runs (stopped by default).
        automation_condition=landed_changed_condition(),
        group_name="protected",
        metadata={"layout": layout_description(layout)},
    )
    def protect_partitions(context: dg.AssetExecutionContext) -> Iterator[dg.AssetCheckResult]:
        actor = f"dagster:{context.run.run_id}"
        fieldcrypt = scope.resource(context)
        protector = OncePerRun(lambda: fieldcrypt.workspace(actor))
        # A second workspace for the checks, its data-key cache empty when the run starts: the checks
        # unwrap each distinct data key through the KMS, not from the cache that wrapped it.
        checker = OncePerRun(lambda: fieldcrypt.workspace(actor))

        def work(partition: str | None) -> PartitionDone:
            report = protector.get().protect(dataset, partition)
            context.log.info(
                f"{dataset} {partition_label(partition)}: {report.files} files, {report.rows} rows, "
                f"{report.newly_encrypted} cells newly encrypted, {report.kms_calls} KMS calls, "
                f"{report.files_rewritten} files rewritten"
            )
            checks = list(evaluate_protection_checks(checker.get(), dataset, partition, report))
            discovered = evaluate_discovery_check(checker.get(), dataset, partition)
            metadata = protection_metadata(report, partition)
            if not discovered.passed:  # a warning: the partition's own findings, kept on its materialization
                findings = {k: v for k, v in discovered.metadata.items() if k != "partition"}
                metadata |= {f"{discovered.check_name}.{k}": v for k, v in findings.items()}
            consumed = None
            if not failed_check_names(checks):
                # The landed version this protection leaves behind, recorded as what it consumed (assets/landed.py).
                consumed = report_protected_version(
                    protector.get(), context.instance, landed_key, dataset, partition, partitioned
                )
            key = partition_key(partition, partitioned)
            tags = consumed_version_tags(landed_key, consumed, context.instance, key, context.run.run_id)
            return PartitionDone(metadata, [*checks, discovered], tags)

        outcomes = run_dataset_partitions(context, work)
        yield from report_partitions(context, "protecting", dataset, outcomes, protection_retryable)

    return protect_partitions


def protection_retryable(exc: Exception) -> bool:
    """Throttling, and errors that are not fieldcrypt's (a dropped connection); never bad input."""
    return isinstance(exc, ThrottledError) or not isinstance(exc, FieldcryptError)


def protection_metadata(report: ProtectReport, partition: str | None) -> dict[str, Any]:
    """Counts and ids only: never a value, never key bytes."""
    metadata: dict[str, Any] = {
        "partition": partition_label(partition),
        "path": report.path,
        "files": report.files,
        "empty": report.files == 0,
        "files_rewritten": report.files_rewritten,
        "rows": report.rows,
        "newly_encrypted": report.newly_encrypted,
        "rewritten": report.rewritten,
        "data_keys": report.data_keys,
        "kms_calls": report.kms_calls,
        # Stale once a file below them was replaced: removed before it was (fieldcrypt.lake.summary_files).
        "summary_files_removed": dg.MetadataValue.json(report.summary_files_removed),
        "master_key_id": report.master_key or "(none used)",
        # splice: untouched column chunks copied as bytes; full: every column rewritten (docs/FORMAT.md)
        "rewrite_path": report.rewrite_path or "(not rewritten)",
        "duration_s": dg.MetadataValue.float(round(report.seconds, 3)),
        # Keys of open erasure requests found in the partition (a snapshot landed later), erased before protecting.
        "erasure_files_rewritten": report.erasure_files_rewritten,
        "erasure_cells": report.erasure_cells,
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
