"""Dagster resources for a fieldcrypt workspace: where its lake is and where its master key lives.

`FieldcryptResource` nests a `LakeResource` and a `KeyProviderResource` and builds the
core's `Workspace` for one run. Nothing here contacts S3 or a KMS when it is constructed
or when the code location is imported; the first KMS call happens when a run first needs
a data key (the core's `Workspace.key_cache`).
"""

from __future__ import annotations

import dagster as dg

from fieldcrypt import KeyConfig, Workspace, WorkspaceConfig
from fieldcrypt.cache import MAX_TTL_SECONDS
from fieldcrypt.log_safety import silence_key_material_loggers


class LakeResource(dg.ConfigurableResource):
    """The Parquet lake of one workspace: a local folder or `s3://bucket/prefix`."""

    uri: str
    s3_endpoint_url: str | None = None
    s3_region: str | None = None


class KeyProviderResource(dg.ConfigurableResource):
    """The workspace's master key: a `local` keystore file, or an `aws-kms` key ARN (cross-account or own)."""

    provider: str = "local"
    keystore_path: str | None = None
    kms_key_arn: str | None = None
    kms_region: str | None = None
    kms_endpoint_url: str | None = None
    kms_retry_mode: str = "standard"
    kms_max_attempts: int = 5

    def key_config(self) -> KeyConfig:
        """The core's key configuration; refuses a provider without its keystore or key ARN."""
        return KeyConfig(
            provider=self.provider,
            keystore_path=self.keystore_path,
            kms_key=self.kms_key_arn,
            kms_region=self.kms_region,
            kms_endpoint_url=self.kms_endpoint_url,
            kms_retry_mode=self.kms_retry_mode,
            kms_max_attempts=self.kms_max_attempts,
        )


class FieldcryptResource(dg.ConfigurableResource):
    """One workspace (customer): its name, lake and master key."""

    workspace_name: str
    lake: LakeResource
    key: KeyProviderResource
    data_key_ttl_seconds: float = MAX_TTL_SECONDS

    def workspace(self, actor: str) -> Workspace:
        """A `Workspace` whose audit events name `actor` (the Dagster run id); no KMS call yet."""
        silence_key_material_loggers()
        config = WorkspaceConfig(
            self.workspace_name,
            self.lake.uri,
            self.key.key_config(),
            s3_endpoint_url=self.lake.s3_endpoint_url,
            s3_region=self.lake.s3_region,
            data_key_ttl_seconds=self.data_key_ttl_seconds,
        )
        return Workspace(config, actor=actor)
