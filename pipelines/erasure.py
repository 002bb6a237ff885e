"""Erasure jobs: record an erasure request from the launchpad, and erase partitions (a backfill).

An erasure from Dagster (docs/OPERATIONS.md, "Erasure"):
  1. `<workspace>__record_erasure_request` (launchpad): the dataset, the path of a keys file the run
     worker can read, a reason and an expiry. The keys never go into the run config (Dagster keeps run
     configs in its database): the op reads the file, records the request (keys as keyed tags,
     fieldcrypt.policy.erasure) and logs its id;
  2. a backfill of `<workspace>__erase_rows` (the `erased_<dataset>` assets) over every partition of the
     dataset: each partition's files are rewritten without the keys' cells and the request's progress
     records it. Protection runs erase the keys from partitions landed later, until the request expires.
"""

from pathlib import Path

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from pydantic import Field

from assets import DatasetAssets
from assets.scope import WorkspaceScope
from fieldcrypt import FieldcryptError
from fieldcrypt.policy.erasure import DEFAULT_EXPIRY_DAYS


class RecordErasureRequestConfig(dg.Config):
    dataset: str = Field(description="Dataset whose rows to erase, as declared in the catalog.")
    keys_file: str = Field(
        description=(
            "Path, readable by the run worker, of the primary keys to erase: one per line, or CSV with a header "
            "naming the key columns. Never paste keys here: run configs are kept in Dagster's database."
        )
    )
    reason: str = Field(description="Why (the request's ticket id); recorded with the request and audited.")
    expires_in_days: int = Field(
        default=DEFAULT_EXPIRY_DAYS,
        description="Protection runs keep erasing these keys from snapshots landed later for this many days.",
    )


def record_erasure_request_job(scope: WorkspaceScope) -> dg.JobDefinition:
    @dg.op(
        name=scope.job_name("record_erasure"),
        description="Record an erasure request (keys kept as keyed hashes only), as `fieldcrypt erase` does first.",
        required_resource_keys={scope.resource_key},
    )
    def record_erasure(context: dg.OpExecutionContext, config: RecordErasureRequestConfig) -> None:
        workspace = scope.resource(context).workspace(actor=f"dagster:{context.run.run_id}")
        try:
            keys = workspace.erasure_keys(config.dataset, Path(config.keys_file))
            request = workspace.request_erasure(
                config.dataset, keys, config.reason, expires_in_days=config.expires_in_days
            )
        except FieldcryptError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        context.log.info(
            f"{config.dataset}: erasure request {request.request_id} recorded ({request.keys} keys, "
            f"{len(request.partitions)} partitions, expires {request.expires_at.isoformat()}). Next: backfill "
            f"{scope.job_name('erase_rows')} over the dataset's partitions; the keys file can be deleted."
        )

    @dg.job(
        name=scope.job_name("record_erasure_request"),
        description=(
            f"Record an erasure request of workspace {scope.name} (GDPR article 17, CCPA deletion): the keys of a "
            "keys file, as keyed hashes. Then backfill the erasure assets over the dataset's partitions."
        ),
        tags=scope.tags("erase"),
    )
    def record_erasure_request() -> None:
        record_erasure()

    return record_erasure_request


def erase_jobs(assets: DatasetAssets) -> list[UnresolvedAssetJobDefinition]:
    """One job per partition group, like the protect jobs: `<workspace>__erase_rows` when all datasets share one."""
    return [
        dg.define_asset_job(
            assets.scope.job_name(f"erase_rows{group.suffix}"),
            selection=dg.AssetSelection.assets(*(assets.erased[name] for name in group.datasets)),
            description=(f"Erase the keys of open erasure requests from one partition of {', '.join(group.datasets)}."),
            tags=assets.scope.tags("erase"),
        )
        for group in assets.groups
    ]


def build_erasure_definitions(assets: DatasetAssets) -> dg.Definitions:
    return dg.Definitions(jobs=[record_erasure_request_job(assets.scope), *erase_jobs(assets)])
