"""Per-partition asset checks of a protected snapshot, evaluated right after it is written.

Why inline checks (`check_specs` on the asset, results yielded by the asset) rather than
`@asset_check(partitions_def=...)`: in Dagster 1.13 a partitioned check is a preview
feature (it warns on every load), while an inline check on a partitioned asset is stable
and Dagster ties each result to the materialization of the partition that was just
written. The partition is also in each result's metadata. Re-checking a partition is
re-materializing it, which is cheap: a partition with nothing pending is not rewritten.
The price: the UI shows each check's latest result, not a status per partition, and
Dagster 1.13 still records a per-partition "planned" execution for each run that the
result (stored without a partition) does not close; the history lists it as skipped.
Moving to partitioned checks later is one argument, `partitions_def=snapshot_partitions`
on each spec below.

These checks observe; they do not guard. What guards the data (read back, decrypt a
sample, compare untouched columns) runs inside the core before the atomic replace, so a
failed check here never has a half-written file to undo.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg

from fieldcrypt import FieldcryptError, Workspace
from fieldcrypt.layout import partition_label
from fieldcrypt.protect import ProtectReport

NO_PLAINTEXT_AFTER_ENABLEMENT = "no_plaintext_after_enablement"
DATA_KEYS_UNWRAP = "data_keys_unwrap"
ROW_COUNT_PRESERVED = "row_count_preserved"


def protection_check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            NO_PLAINTEXT_AFTER_ENABLEMENT,
            asset=asset,
            description="No row ingested at or after an attribute's enablement still holds its plaintext.",
        ),
        dg.AssetCheckSpec(
            DATA_KEYS_UNWRAP,
            asset=asset,
            description="Every distinct wrapped data key unwraps under a current master key and decrypts its cells.",
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
            metadata={"partition": partition_label(partition), **counts},
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


def attribute_path(attribute_name: str) -> str:
    """`customers.email` -> `email`, `clicks.properties.email` -> `properties.email`."""
    return attribute_name.partition(".")[2]
