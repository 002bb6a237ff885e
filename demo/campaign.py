"""`campaign_dispatch`: an example Dagster asset sending a campaign the way a campaign sender would.

It reads the segment's real e-mail addresses and phone numbers through fieldcrypt's dispatch
reader (`fieldcrypt.reads.dispatch.dispatch_segment`: only the segment's rows are decrypted, in memory,
audited with the run id and a reason) and "sends" them by counting and hashing: nothing is written,
logged or put in metadata but counts. `make demo` materializes it for today's partition.
"""

import hashlib
from typing import Any

import dagster as dg
import pyarrow as pa

from assets.scope import WorkspaceScope
from fieldcrypt.reads.dispatch import dispatch_segment

DATASET = "users"  # the demo's catalog entry (fieldcrypt.yaml)
ATTRIBUTES = ["email", "phone"]


def campaign_dispatch_asset(
    scope: WorkspaceScope, partitions_def: dg.PartitionsDefinition | None
) -> dg.AssetsDefinition:
    @dg.asset(
        name="campaign_dispatch",
        key_prefix=scope.key_prefix,
        partitions_def=partitions_def,
        deps=[scope.asset_key(f"protected_{DATASET}")],
        pool=scope.pool,
        required_resource_keys={scope.resource_key},
        group_name="campaigns",
        description="Send a campaign to a segment (demo: every third user): real values in memory only, counts out.",
    )
    def campaign_dispatch(context: dg.AssetExecutionContext) -> dg.MaterializeResult[Any]:
        workspace = scope.resource(context).workspace(f"dagster:{context.run.run_id}")
        segment = pa.array(range(0, 5_000, 3), pa.int64())  # the audience
        sent = hashlib.sha256()

        def send(batch: pa.RecordBatch) -> None:  # stand-in for the e-mail/SMS provider: deliver and forget
            for column in batch.columns:
                sent.update(repr(column.to_pylist()).encode())

        report = dispatch_segment(
            workspace,
            DATASET,
            segment,
            ATTRIBUTES,
            send,
            reason=f"campaign run {context.run.run_id}",
            partition=context.partition_key if partitions_def is not None else None,
        )
        return dg.MaterializeResult(
            metadata={
                "rows_sent": report.rows,
                "segment_keys": report.segment_keys,
                "cells_decrypted": sum(report.cells.values()),
                "row_groups_read": report.row_groups_read,
                "row_groups_skipped": report.row_groups_skipped,
            }
        )

    return campaign_dispatch
