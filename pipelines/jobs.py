"""Jobs: protect snapshots by partition, and enable an attribute (irreversible) from the launchpad."""

from enum import Enum

import dagster as dg
from pydantic import Field

from assets import PROTECTED_ASSETS
from fieldcrypt import FieldcryptError
from fieldcrypt.policy import MASKS, DatasetSpec
from resources import FieldcryptResource

protect_snapshots = dg.define_asset_job(
    "protect_snapshots",
    selection=dg.AssetSelection.assets(*PROTECTED_ASSETS),  # partitioned like them: daily snapshots
    description="Protect one daily partition of every dataset (users and events), with its checks.",
)

# The launchpad offers the core's masks as a drop-down.
MaskStyle = Enum("MaskStyle", {mask: mask for mask in MASKS})  # type: ignore[misc]


class EnableAttributeConfig(dg.Config):
    dataset: str = Field(description="Dataset whose attribute to protect, e.g. users or events.")
    attribute: str = Field(description="Column or struct field inside the dataset, e.g. email or properties.email.")
    mask: MaskStyle = Field(
        description="What analysts see instead: full (****), email (****@domain), last4 (****1234)."
    )
    acknowledge_irreversible: bool = Field(
        default=False,
        description=(
            "Set to true to confirm: enabling cannot be undone, and rows ingested before now stay "
            "unencrypted (historical plaintext)."
        ),
    )
    blind_index: bool = Field(
        default=False,
        description="Also write a keyed blind index (<attribute>__fc_bidx) so analysts can join and count distinct.",
    )
    ingested_at: str | None = Field(
        default=None, description="Ingestion-time column, only for a dataset not declared yet (not users/events)."
    )
    primary_key: str | None = Field(
        default=None, description="Primary-key column, only for a dataset not declared yet (optional)."
    )


@dg.op(description="Record the enablement in the workspace policy, as `fieldcrypt enable` does.")
def record_enablement(
    context: dg.OpExecutionContext, config: EnableAttributeConfig, fieldcrypt: FieldcryptResource
) -> None:
    if config.primary_key and not config.ingested_at:
        raise dg.Failure(description="primary_key declares a new dataset, which also needs ingested_at")
    spec = DatasetSpec(config.dataset, config.ingested_at, config.primary_key) if config.ingested_at else None
    workspace = fieldcrypt.workspace(actor=f"dagster:{context.run.run_id}")
    try:
        entry = workspace.enable(
            f"{config.dataset}.{config.attribute}",
            config.mask.value,
            acknowledge_irreversible=config.acknowledge_irreversible,
            dataset_spec=spec,
            blind_index=config.blind_index,
        )
    except FieldcryptError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    enabled_at = entry.enabled_at.isoformat()
    context.log.info(f"{entry.name}: enabled at {enabled_at} with mask {entry.mask}; earlier rows stay as they are")
    if any(asset.key == dg.AssetKey(f"protected_{entry.dataset}") for asset in PROTECTED_ASSETS):
        context.log_event(
            dg.AssetObservation(
                asset_key=f"protected_{entry.dataset}",
                metadata={"enabled_attribute": entry.name, "mask": entry.mask, "enabled_at": enabled_at},
            )
        )


@dg.job(
    name="enable_attribute",
    description=(
        "Enable encryption of one attribute from now on. IRREVERSIBLE: needs acknowledge_irreversible=true; "
        "rows ingested before now stay unencrypted."
    ),
    tags={"fieldcrypt/irreversible": "true"},
)
def enable_attribute() -> None:
    record_enablement()


defs = dg.Definitions(jobs=[protect_snapshots, enable_attribute])
