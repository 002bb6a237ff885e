"""A workspace's configuration: its name, lake, master key and datasets, as the catalog declares them.

A record of its own, below the Workspace, so that what the Workspace hands its parts (master-key
access, campaigns) is this configuration rather than the Workspace itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fieldcrypt.errors import KeyProviderError
from fieldcrypt.keys.cache import MAX_TTL_SECONDS
from fieldcrypt.keys.providers.aws_kms import PROVIDER_ID as KMS
from fieldcrypt.keys.providers.aws_kms import RETRY_MODES
from fieldcrypt.keys.providers.local import PROVIDER_ID as LOCAL
from fieldcrypt.keys.providers.pkcs11 import PROVIDER_ID as PKCS11
from fieldcrypt.keys.providers.pkcs11 import Pkcs11Settings
from fieldcrypt.policy.layout import DatasetLayout


@dataclass(frozen=True)
class KeyConfig:
    """Where the master key lives. `local`: a keystore file; `aws-kms`: a key ARN or alias;
    `pkcs11`: a key label in an HSM token (`keystore_path`: the old local keystore while rotating from local)."""

    provider: str = LOCAL
    keystore_path: str | None = None
    kms_key: str | None = None
    kms_region: str | None = None
    kms_endpoint_url: str | None = None
    kms_retry_mode: str = "standard"
    kms_max_attempts: int = 5
    pkcs11_module: str | None = None
    pkcs11_token: str | None = None
    pkcs11_key_label: str | None = None
    pkcs11_pin_env: str | None = None  # the name of the variable holding the PIN, never the PIN
    pkcs11_pin_file: str | None = None

    def __post_init__(self) -> None:
        if self.provider not in (LOCAL, KMS, PKCS11):
            raise KeyProviderError(f"key provider {self.provider!r} is not one of {LOCAL}, {KMS}, {PKCS11}")
        if self.provider == PKCS11:
            self.pkcs11_settings()  # refuses a missing module, token or PIN source here
            if not self.pkcs11_key_label:
                raise KeyProviderError("the pkcs11 key provider needs a key label")
        if self.provider == LOCAL and not self.keystore_path:
            raise KeyProviderError("the local key provider needs a keystore path")
        if self.provider == KMS and not self.kms_key:
            raise KeyProviderError("the aws-kms key provider needs a key ARN or alias")
        # Refused here, not when the KMS client is first built mid-run.
        if self.kms_retry_mode not in RETRY_MODES:
            raise KeyProviderError(f"KMS retry mode {self.kms_retry_mode!r} is not one of {', '.join(RETRY_MODES)}")
        if self.kms_max_attempts < 1:
            raise KeyProviderError(f"KMS max attempts must be at least 1, got {self.kms_max_attempts}")

    def pkcs11_settings(self) -> Pkcs11Settings:
        return Pkcs11Settings(
            self.pkcs11_module or "", self.pkcs11_token or "", self.pkcs11_pin_env, self.pkcs11_pin_file
        )


@dataclass(frozen=True)
class WorkspaceConfig:
    name: str
    lake_uri: str
    key: KeyConfig
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    data_key_ttl_seconds: float = MAX_TTL_SECONDS
    datasets: Mapping[str, DatasetLayout] = field(default_factory=dict)  # the catalog's declarations
    file_workers: int = 2  # files of one partition processed at once
    kms_calls_per_second: float | None = None  # client-side budget of key-provider calls (None: unlimited)
    catalog_path: str | None = None  # the catalog file this configuration was read from (named in errors)
