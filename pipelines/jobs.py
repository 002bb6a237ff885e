"""Jobs: protect snapshots by partition, and enable an attribute (irreversible) from the launchpad."""

from enum import Enum

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from pydantic import Field

from assets import DatasetAssets
from assets.scope import WorkspaceScope
from fieldcrypt import FieldcryptError
from fieldcrypt.policy.policy import MASKS

# The launchpad offers the core's masks as a drop-down.
MaskStyle = Enum("MaskStyle", {mask: mask for mask in MASKS})  # type: ignore[misc]


def protect_jobs(assets: DatasetAssets) -> list[UnresolvedAssetJobDefinition]:
    """One job per partition group: `<workspace>__protect_snapshots` when every dataset shares one partitioning."""
    scope = assets.scope
    return [
        dg.define_asset_job(
            scope.job_name(f"protect_snapshots{group.suffix}"),
            selection=dg.AssetSelection.assets(*(assets.protected[name] for name in group.datasets)),
            description=(
                f"Protect one partition of {', '.join(group.datasets)} (workspace {scope.name}), with its checks."
            ),
            tags=scope.tags("protect"),
        )
        for group in assets.groups
    ]


class EnableAttributeConfig(dg.Config):
    dataset: str = Field(description="Dataset whose attribute to protect, as declared in the catalog.")
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
    allow_absent_key: bool = Field(
        default=False,
        description=(
            "For a map key (props['email']): enable it although no row of the newest partition has that key "
            "(a key of data not landed yet). Without it such a key is refused as a likely typo."
        ),
    )


def enable_attribute_job(assets: DatasetAssets) -> dg.JobDefinition:
    scope = assets.scope

    @dg.op(
        name=scope.job_name("record_enablement"),
        description="Record the enablement in the workspace policy, as `fieldcrypt enable` does.",
        required_resource_keys={scope.resource_key},
    )
    def record_enablement(context: dg.OpExecutionContext, config: EnableAttributeConfig) -> None:
        if not config.acknowledge_irreversible:
            raise dg.Failure(
                description=(
                    f"enabling {config.dataset}.{config.attribute} is irreversible and rows ingested before now "
                    "stay unencrypted; set acknowledge_irreversible: true in the op config to confirm both"
                ),
                allow_retries=False,
            )
        workspace = scope.resource(context).workspace(actor=f"dagster:{context.run.run_id}")
        try:
            entry = workspace.enable(
                f"{config.dataset}.{config.attribute}",
                config.mask.value,
                acknowledge_irreversible=config.acknowledge_irreversible,
                blind_index=config.blind_index,
                allow_absent_key=config.allow_absent_key,
            )
        except FieldcryptError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        enabled_at = entry.enabled_at.isoformat()
        context.log.info(f"{entry.name}: enabled at {enabled_at} with mask {entry.mask}; earlier rows stay as they are")
        protected = assets.protected.get(entry.dataset)
        if protected is not None:
            context.log_event(
                dg.AssetObservation(
                    asset_key=protected.key,
                    metadata={"enabled_attribute": entry.name, "mask": entry.mask, "enabled_at": enabled_at},
                )
            )

    @dg.job(
        name=scope.job_name("enable_attribute"),
        description=(
            f"Enable encryption of one attribute of workspace {scope.name} from now on. IRREVERSIBLE: needs "
            "acknowledge_irreversible=true; rows ingested before now stay unencrypted."
        ),
        tags={**scope.tags("enable"), "fieldcrypt/irreversible": "true"},
    )
    def enable_attribute() -> None:
        record_enablement()

    return enable_attribute


class EncryptHistoryConfig(dg.Config):
    dataset: str = Field(description="Dataset of the attribute, as declared in the catalog.")
    attribute: str = Field(description="An enabled attribute of the dataset, e.g. email.")
    acknowledge_irreversible: bool = Field(
        default=False,
        description=(
            "Set to true to confirm: from now on rows ingested before the enablement are encrypted too, which "
            "cannot be undone, and copies outside the lake (old S3 object versions, snapshots, backups) stay as "
            "they are. Then backfill the protection assets over the partitions to encrypt."
        ),
    )


def encrypt_history_job(scope: WorkspaceScope) -> dg.JobDefinition:
    @dg.op(
        name=scope.job_name("record_history_encryption"),
        description="As `fieldcrypt encrypt-history` does.",
        required_resource_keys={scope.resource_key},
    )
    def record_history_encryption(context: dg.OpExecutionContext, config: EncryptHistoryConfig) -> None:
        attribute = f"{config.dataset}.{config.attribute}"
        if not config.acknowledge_irreversible:
            raise dg.Failure(
                description=(
                    f"encrypting the history of {attribute} is irreversible; set acknowledge_irreversible: true "
                    "in the op config to confirm"
                ),
                allow_retries=False,
            )
        try:
            entry = (
                scope.resource(context)
                .workspace(actor=f"dagster:{context.run.run_id}")
                .encrypt_history(attribute, acknowledge_irreversible=True)
            )
        except FieldcryptError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        context.log.info(
            f"{entry.name}: rows ingested before {entry.enabled_at.isoformat()} are encrypted from now on; "
            "backfill the protection assets over the partitions to encrypt"
        )

    @dg.job(
        name=scope.job_name("encrypt_attribute_history"),
        description=(
            f"Opt in to encrypting an attribute's rows ingested before its enablement (workspace {scope.name}). "
            "IRREVERSIBLE: needs acknowledge_irreversible=true; then a protection backfill over the chosen range "
            "encrypts them."
        ),
        tags={**scope.tags("encrypt_history"), "fieldcrypt/irreversible": "true"},
    )
    def encrypt_attribute_history() -> None:
        record_history_encryption()

    return encrypt_attribute_history
