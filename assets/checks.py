"""Asset checks of a protected snapshot, evaluated per partition right after it is written.

Dagster 1.13 shows one status per check and asset ("Partition —"): a partitioned check
(`AssetCheckSpec(partitions_def=...)`) is a preview feature that warns on every load, so
the checks stay unpartitioned (`check_specs` on the asset, results yielded by the asset)
and a failing partition is made impossible to miss another way:

- each check is evaluated for every partition of the run; the run yields one result per
  check, failed if any partition failed, with `failing_partitions` in its metadata;
- a partition whose checks fail gets no materialization (an `AssetObservation` on that
  partition carries the failed checks and their metadata instead), so it shows as failed
  in the asset's partitions and "missing and failed" in the launch dialog selects it;
- the run fails with a `dg.Failure` naming each failing check and partition.

The exception is `no_undeclared_pii` (WARN severity, assets.discovery): PII found in a column
that is not enabled is for a person to decide about, so it warns and blocks nothing (the
partition is materialized, the run succeeds).

The data was already written safely when a check fails: these checks observe, they do
not guard. What guards the data (read back, decrypt a sample, compare untouched columns)
runs inside the core before the atomic replace, so a failed check never has a
half-written file to undo, and failing the run after the write is the honest report: the
partition's files are intact, and what is wrong with them needs a person. Re-checking a
partition is re-materializing it, which is cheap: nothing pending means nothing rewritten.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg

from fieldcrypt import FieldcryptError, Workspace
from fieldcrypt.engine.protect import ProtectReport
from fieldcrypt.policy.layout import partition_label

NO_PLAINTEXT_AFTER_ENABLEMENT = "no_plaintext_after_enablement"
DATA_KEYS_UNWRAP = "data_keys_unwrap"
ROW_COUNT_PRESERVED = "row_count_preserved"


def protection_check_specs(asset: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            NO_PLAINTEXT_AFTER_ENABLEMENT,
            asset=asset,
            description=(
                "No row ingested at or after an attribute's enablement still holds its plaintext (no row at all, "
                "once the attribute's history is encrypted: fieldcrypt encrypt-history)."
            ),
        ),
        dg.AssetCheckSpec(
            DATA_KEYS_UNWRAP,
            asset=asset,
            description=(
                "Every distinct wrapped data key unwraps under a current master key and decrypts its cells, and the "
                "partition passes verify's read rule (masks, blind indexes, no removed ciphertext, no primary key "
                "on protected rows of two files)."
            ),
        ),
        dg.AssetCheckSpec(
            ROW_COUNT_PRESERVED,
            asset=asset,
            description="The partition's files hold as many rows as before protection.",
        ),
    ]


def evaluate_protection_checks(
    workspace: Workspace, dataset: str, partition: str | None, protected: ProtectReport
) -> Iterator[dg.AssetCheckResult]:
    """Check the partition as stored now; with a fresh data-key cache in `workspace`, unwraps reach the KMS."""
    try:
        stored = workspace.status(dataset, partition)
    except FieldcryptError as exc:
        for name in (NO_PLAINTEXT_AFTER_ENABLEMENT, ROW_COUNT_PRESERVED):
            yield _failed(name, partition, exc)
    else:
        counts: dict[str, int] = {}
        for name, attribute in stored.attributes.items():
            counts[f"pending.{attribute_path(name)}"] = attribute.pending
            counts[f"historical_plaintext.{attribute_path(name)}"] = attribute.historical_plaintext
        yield dg.AssetCheckResult(
            check_name=NO_PLAINTEXT_AFTER_ENABLEMENT,
            passed=all(a.pending == 0 for a in stored.attributes.values()),
            # temporary files of live runs (possibly plaintext copies) that a sweep could not remove yet
            metadata={"partition": partition_label(partition), **counts, "temp_files_left": stored.temp_files_left},
        )
        yield dg.AssetCheckResult(
            check_name=ROW_COUNT_PRESERVED,
            passed=stored.rows == protected.rows,
            metadata={
                "partition": partition_label(partition),
                "rows_before": protected.rows,
                "rows_after": stored.rows,
            },
        )
    yield _data_keys_unwrap(workspace, dataset, partition, protected)


def _data_keys_unwrap(
    workspace: Workspace, dataset: str, partition: str | None, protected: ProtectReport
) -> dg.AssetCheckResult:
    if not protected.attributes:  # nothing enabled: no data key to unwrap, and no reason to reach the KMS
        return dg.AssetCheckResult(
            check_name=DATA_KEYS_UNWRAP,
            passed=True,
            metadata={"partition": partition_label(partition), "attributes_enabled": 0},
        )
    try:
        decrypted = workspace.verify(dataset, partition)
    except FieldcryptError as exc:
        return _failed(DATA_KEYS_UNWRAP, partition, exc)
    return dg.AssetCheckResult(
        check_name=DATA_KEYS_UNWRAP,
        passed=True,
        metadata={
            "partition": partition_label(partition),
            "kms_calls": workspace.key_cache().calls.total,
            **{f"decrypted_cells.{attribute_path(name)}": count for name, count in decrypted.items()},
        },
    )


def _failed(check_name: str, partition: str | None, exc: FieldcryptError) -> dg.AssetCheckResult:
    # fieldcrypt error messages name the file, attribute or key, never a value or key bytes.
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=False,
        metadata={"partition": partition_label(partition), "error": f"{type(exc).__name__}: {exc}"},
    )


def failed_check_names(results: list[dg.AssetCheckResult]) -> list[str]:
    """The failed checks that fail their partition: a failed WARN check (a finding for a person) does not."""
    return [
        result.check_name or ""
        for result in results
        if not result.passed and result.severity != dg.AssetCheckSeverity.WARN
    ]


def aggregate_check_results(
    by_partition: dict[str | None, list[dg.AssetCheckResult]],
) -> list[dg.AssetCheckResult]:
    """One result per check for the run: failed if any partition failed, naming the failing partitions.

    A run of one partition keeps that partition's metadata as it is; a run of several
    gives how many were checked and which failed (each failing partition's own metadata
    is on its observation)."""
    names: dict[str, None] = {}
    for results in by_partition.values():
        names.update((result.check_name or "", None) for result in results)
    aggregated = []
    for name in names:
        per_partition = {p: r for p, rs in by_partition.items() for r in rs if r.check_name == name}
        failing = sorted(partition_label(p) for p, result in per_partition.items() if not result.passed)
        if len(per_partition) == 1:
            (only,) = per_partition.values()
            metadata: dict[str, Any] = dict(only.metadata)
        else:
            labels = sorted(partition_label(p) for p in per_partition)
            metadata = {"partition": f"{labels[0]} .. {labels[-1]}", "partitions_checked": len(per_partition)}
        metadata["failing_partitions"] = dg.MetadataValue.json(failing)
        severity = next(iter(per_partition.values())).severity  # a check's severity is the same in every partition
        aggregated.append(
            dg.AssetCheckResult(check_name=name, passed=not failing, metadata=metadata, severity=severity)
        )
    return aggregated


def attribute_path(attribute_name: str) -> str:
    """`customers.email` -> `email`, `clicks.properties.email` -> `properties.email`."""
    return attribute_name.partition(".")[2]
