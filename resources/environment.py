"""The one place that picks resources from the environment: local by default, S3 + KMS by configuration.

Settings are the CLI's environment variables (see `fieldcrypt.cli`) plus a few for Dagster:

    FIELDCRYPT_WORKSPACE             workspace (customer) name; default demo
    FIELDCRYPT_LAKE                  local folder or s3://bucket/prefix; default <repo>/demo-workspace/lake
    FIELDCRYPT_S3_ENDPOINT_URL       S3-compatible endpoint (optional)
    FIELDCRYPT_KEY_PROVIDER          local (default) or aws-kms
    FIELDCRYPT_KEYSTORE              local keystore file; default <repo>/demo-workspace/keys/keystore.json
    FIELDCRYPT_KMS_KEY               aws-kms: the customer's key ARN (required for aws-kms)
    FIELDCRYPT_KMS_ENDPOINT_URL      KMS-compatible endpoint (optional)
    FIELDCRYPT_KMS_RETRY_MODE        standard (default) or adaptive
    FIELDCRYPT_KMS_MAX_ATTEMPTS      botocore total attempts per KMS call; default 5
    FIELDCRYPT_DATA_KEY_TTL_SECONDS  data-key cache lifetime, at most (and by default) 1800
    AWS_REGION / AWS_DEFAULT_REGION  region of the lake bucket and the key (optional)

At import only the provider, the TTL and which variables are set are read: the values
reach the resources as `dg.EnvVar`, resolved when a run starts, so the UI shows the
variables' names, not their values. Credentials come from the standard AWS chain, never
from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from fieldcrypt.cache import MAX_TTL_SECONDS
from fieldcrypt.errors import KeyProviderError
from fieldcrypt.providers.aws_kms import PROVIDER_ID as AWS_KMS
from fieldcrypt.providers.local import PROVIDER_ID as LOCAL
from resources.fieldcrypt_resource import FieldcryptResource, KeyProviderResource, LakeResource

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = PROJECT_ROOT / "demo-workspace"
DEFAULT_WORKSPACE = "demo"
DEFAULT_LAKE = str(DEMO_DIR / "lake")
DEFAULT_KEYSTORE = str(DEMO_DIR / "keys" / "keystore.json")


def _setting(name: str, default: Any = None) -> Any:
    """`dg.EnvVar(name)` when the variable is set, else the default (Dagster refuses an unset EnvVar)."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def _region() -> Any:
    return _setting("AWS_REGION") or _setting("AWS_DEFAULT_REGION")


def key_provider_from_env() -> KeyProviderResource:
    provider = os.environ.get("FIELDCRYPT_KEY_PROVIDER", LOCAL)
    if provider == LOCAL:
        return KeyProviderResource(provider=LOCAL, keystore_path=_setting("FIELDCRYPT_KEYSTORE", DEFAULT_KEYSTORE))
    if provider == AWS_KMS:
        if not os.environ.get("FIELDCRYPT_KMS_KEY"):
            raise KeyProviderError("FIELDCRYPT_KEY_PROVIDER=aws-kms needs FIELDCRYPT_KMS_KEY (the key ARN)")
        return KeyProviderResource(
            provider=AWS_KMS,
            kms_key_arn=dg.EnvVar("FIELDCRYPT_KMS_KEY"),
            kms_region=_region(),
            kms_endpoint_url=_setting("FIELDCRYPT_KMS_ENDPOINT_URL"),
            kms_retry_mode=_setting("FIELDCRYPT_KMS_RETRY_MODE", "standard"),
            kms_max_attempts=(
                dg.EnvVar.int("FIELDCRYPT_KMS_MAX_ATTEMPTS") if os.environ.get("FIELDCRYPT_KMS_MAX_ATTEMPTS") else 5
            ),
        )
    raise KeyProviderError(f"FIELDCRYPT_KEY_PROVIDER={provider!r} is not one of {LOCAL}, {AWS_KMS}")


def lake_from_env() -> LakeResource:
    return LakeResource(
        uri=_setting("FIELDCRYPT_LAKE", DEFAULT_LAKE),
        s3_endpoint_url=_setting("FIELDCRYPT_S3_ENDPOINT_URL"),
        s3_region=_region(),
    )


def fieldcrypt_from_env() -> FieldcryptResource:
    ttl = os.environ.get("FIELDCRYPT_DATA_KEY_TTL_SECONDS")
    return FieldcryptResource(
        workspace_name=_setting("FIELDCRYPT_WORKSPACE", DEFAULT_WORKSPACE),
        lake=lake_from_env(),
        key=key_provider_from_env(),
        data_key_ttl_seconds=float(ttl) if ttl else MAX_TTL_SECONDS,
    )


def resources_from_env() -> dict[str, Any]:
    """The resources of the code location, keyed as the assets and ops ask for them."""
    return {"fieldcrypt": fieldcrypt_from_env()}
