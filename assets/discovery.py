"""The PII-discovery check of each landed partition: `no_undeclared_pii`, WARN severity.

It is declared on the protected snapshot and evaluated in the protection run, right after the
partition's files were protected, for three reasons:
- the landed snapshot is an external asset this code location never materializes, and a
  check of it would need its own job and Dagster's partitioned checks (a preview feature that
  warns on every load, assets/checks.py); the protection asset already runs once per landed
  partition, schedules and backfills included;
- after protection, a protected attribute holds masks, so what the check reports as PII is
  what an analyst can still read as plaintext;
- it sits beside the other checks of the partition, in the same run.

Non-blocking: an undeclared column holding PII is a decision for a person (enable it,
drop it upstream, accept it), not a fault of the protection run, so a failed result is a
warning, the partition is materialized and the run succeeds (assets.checks.failed_check_names).
Its metadata holds column names and counts (fieldcrypt.discovery), never a value.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from fieldcrypt import FieldcryptError, Workspace
from fieldcrypt.discovery import DiscoveryReport
from fieldcrypt.policy.layout import partition_label

NO_UNDECLARED_PII = "no_undeclared_pii"
# Values sampled per column by the check: it runs in every protection run of every partition, and phone
# detection costs up to ~0.5 ms a value; 2,000 values still see a 0.5% share (`fieldcrypt discover` samples more).
CHECK_SAMPLE = 2_000


def discovery_check_spec(asset: dg.AssetKey) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        NO_UNDECLARED_PII,
        asset=asset,
        description=(
            "Warns (non-blocking) when a text column, struct field, list element or map key of the landed partition "
            "that is not enabled holds emails, phone numbers, card numbers, IBANs or IP addresses, with counts per "
            "column; also counts the historical plaintext of enabled attributes (fieldcrypt discover)."
        ),
    )


def evaluate_discovery_check(workspace: Workspace, dataset: str, partition: str | None) -> dg.AssetCheckResult:
    try:
        if not workspace.files(dataset, partition):  # nothing landed: nothing to find (discover refuses a named one)
            return dg.AssetCheckResult(
                check_name=NO_UNDECLARED_PII,
                passed=True,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"partition": partition_label(partition), "files": 0},
            )
        report = workspace.discover(dataset, partition, sample_rows=CHECK_SAMPLE)
    except FieldcryptError as exc:  # its messages name files and columns, never a value
        return dg.AssetCheckResult(
            check_name=NO_UNDECLARED_PII,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"partition": partition_label(partition), "error": f"{type(exc).__name__}: {exc}"},
        )
    return dg.AssetCheckResult(
        check_name=NO_UNDECLARED_PII,
        passed=not report.undeclared_pii,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=discovery_metadata(report),
    )


def discovery_metadata(report: DiscoveryReport) -> dict[str, Any]:
    """Column names, detector names and counts only."""
    undeclared = [
        {
            "column": c.column,
            "detector": c.detector,
            "matches": c.matched,
            "sampled": c.sampled,
            "share": round(c.share, 4),
        }
        for c in report.undeclared_pii
    ]
    lines = ["| column | detector | matches | sampled | share |", "|---|---|---|---|---|"]
    lines += [
        f"| {u['column']} | {u['detector']} | {u['matches']} | {u['sampled']} | {u['share']:.1%} |" for u in undeclared
    ]
    return {
        "partition": partition_label(report.partition),
        "files": report.files,
        "rows_read": report.rows_read,
        "columns_sampled": len(report.columns),
        "sample_per_column": report.sample,
        "undeclared_pii_columns": len(undeclared),
        "undeclared_pii": dg.MetadataValue.json(undeclared),
        "undeclared_pii_table": dg.MetadataValue.md("\n".join(lines) if undeclared else "none"),
        "historical_plaintext": dg.MetadataValue.json(
            {c.column: c.historical_plaintext for c in report.columns if c.historical_plaintext is not None}
        ),
    }
