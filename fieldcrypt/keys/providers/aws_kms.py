"""The `aws-kms` provider: data keys generated, decrypted and re-encrypted by AWS KMS.

The master key is a customer-managed symmetric key, in the customer's account
(cross-account, named by ARN) or the platform's. Every call carries the encryption
context {fieldcrypt:workspace, fieldcrypt:dataset, fieldcrypt:attribute}, so it shows
up recognisably in the key owner's CloudTrail. Rewrap uses ReEncrypt: the plaintext
data key never leaves KMS during rotation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from fieldcrypt.errors import AccessDeniedError, IntegrityError, KeyProviderError, ThrottledError
from fieldcrypt.format.cell import DEK_SIZE
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys.providers.base import EncryptionContext, KeyProvider, MasterKeyInfo
from fieldcrypt.log_safety import silence_key_material_loggers

PROVIDER_ID = "aws-kms"
RETRY_MODES = ("standard", "adaptive")

# DescribeKey property -> accepted values. Checked before first use; anything else is refused.
REQUIRED_KEY_PROPERTIES: dict[str, tuple[object, ...]] = {
    "KeySpec": ("SYMMETRIC_DEFAULT",),
    "KeyUsage": ("ENCRYPT_DECRYPT",),
    "Origin": ("AWS_KMS", "EXTERNAL"),
    "MultiRegion": (False,),
    "KeyState": ("Enabled",),
}
_ACCESS_DENIED = {"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"}
_THROTTLED = {"ThrottlingException", "Throttling", "LimitExceededException", "RequestLimitExceeded"}
_WRONG_KEY = {"InvalidCiphertextException", "IncorrectKeyException"}


def kms_client(region: str | None, endpoint_url: str | None, retry_mode: str, max_attempts: int) -> Any:
    """A KMS client on the standard credential chain with botocore's own retries."""
    silence_key_material_loggers()
    if retry_mode not in RETRY_MODES:
        raise KeyProviderError(f"KMS retry mode {retry_mode!r} is not one of {', '.join(RETRY_MODES)}")
    mode: Literal["standard", "adaptive"] = "adaptive" if retry_mode == "adaptive" else "standard"
    config = Config(retries={"mode": mode, "total_max_attempts": max_attempts}, connect_timeout=5, read_timeout=30)
    return boto3.client("kms", region_name=region, endpoint_url=endpoint_url, config=config)


class AwsKmsProvider(KeyProvider):
    provider_id = PROVIDER_ID

    def __init__(self, key: str, workspace: str, client: Any, also_decrypt: Iterable[str] = ()) -> None:
        """`key` is a key ARN, key id or alias; it is described and validated here."""
        self._client = client
        self._workspace = workspace
        self._key_arn = validate_kms_key(client, key)
        self._decrypt_arns = {self._key_arn} | {
            validate_kms_key(client, k, require_enabled=False) for k in also_decrypt
        }

    def __repr__(self) -> str:
        return f"AwsKmsProvider(key={self._key_arn!r})"

    def describe(self) -> MasterKeyInfo:
        return MasterKeyInfo(PROVIDER_ID, self._key_arn, "")

    def generate_data_key(self, context: EncryptionContext) -> tuple[bytes, WrappedKey]:
        response = _call(
            self._client.generate_data_key,
            "GenerateDataKey",
            self._key_arn,
            KeyId=self._key_arn,
            KeySpec="AES_256",
            EncryptionContext=context.as_kms_context(),
        )
        dek = response["Plaintext"]
        if len(dek) != DEK_SIZE:
            raise KeyProviderError(f"KMS key {self._key_arn} returned a {len(dek)}-byte data key, expected {DEK_SIZE}")
        return dek, WrappedKey(PROVIDER_ID, self._key_arn, "", response["CiphertextBlob"])

    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> bytes:
        self._check_own(wrapped)
        response = _call(
            self._client.decrypt,
            "Decrypt",
            wrapped.key_id,
            CiphertextBlob=wrapped.wrapped,
            KeyId=wrapped.key_id,
            EncryptionContext=context.as_kms_context(),
        )
        if response.get("KeyId") != wrapped.key_id:
            raise IntegrityError(f"KMS decrypted a data key with {response.get('KeyId')}, expected {wrapped.key_id}")
        dek: bytes = response["Plaintext"]
        return dek

    def rewrap(self, wrapped: WrappedKey, context: EncryptionContext) -> WrappedKey:
        self._check_own(wrapped)
        kms_context = context.as_kms_context()
        response = _call(
            self._client.re_encrypt,
            "ReEncrypt",
            f"{wrapped.key_id} -> {self._key_arn}",
            CiphertextBlob=wrapped.wrapped,
            SourceKeyId=wrapped.key_id,
            DestinationKeyId=self._key_arn,
            SourceEncryptionContext=kms_context,
            DestinationEncryptionContext=kms_context,
        )
        return WrappedKey(PROVIDER_ID, self._key_arn, "", response["CiphertextBlob"])

    def _check_own(self, wrapped: WrappedKey) -> None:
        if wrapped.provider != PROVIDER_ID or wrapped.key_id not in self._decrypt_arns:
            raise KeyProviderError(
                f"data key is wrapped by {wrapped.provider} master key {wrapped.key_id}, which is not a master key "
                f"of this workspace (current: {self._key_arn})"
            )


def validate_kms_key(client: Any, key: str, require_enabled: bool = True) -> str:
    """DescribeKey and check every required property; returns the key ARN."""
    metadata = _call(client.describe_key, "DescribeKey", key, KeyId=key)["KeyMetadata"]
    arn: str = metadata["Arn"]
    for name, accepted in REQUIRED_KEY_PROPERTIES.items():
        if name == "KeyState" and not require_enabled:
            continue
        actual = metadata.get(name, False if name == "MultiRegion" else None)
        if actual not in accepted:
            wanted = " or ".join(str(a) for a in accepted)
            raise KeyProviderError(f"KMS key {arn} is refused: {name} is {actual}, must be {wanted}")
    return arn


def key_policy_statements(key_arn: str, platform_role_arn: str, workspace: str) -> str:
    """The key-policy statements the customer adds to their key for the platform role.

    Data-key operations are limited to this workspace's encryption context; DescribeKey
    carries no context, so it gets its own statement.
    """
    statements = [
        {
            "Sid": "FieldcryptDataKeys",
            "Effect": "Allow",
            "Principal": {"AWS": platform_role_arn},
            "Action": ["kms:GenerateDataKey", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo"],
            "Resource": key_arn,
            "Condition": {"StringEquals": {"kms:EncryptionContext:fieldcrypt:workspace": workspace}},
        },
        {
            "Sid": "FieldcryptDescribeKey",
            "Effect": "Allow",
            "Principal": {"AWS": platform_role_arn},
            "Action": "kms:DescribeKey",
            "Resource": key_arn,
        },
    ]
    return json.dumps(statements, indent=2)


def _call(method: Any, operation: str, key: str, **kwargs: Any) -> Any:
    """One KMS call with errors translated into fieldcrypt errors that name key and operation."""
    try:
        return method(**kwargs)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        where = f"KMS {operation} with key {key}"
        if code in _ACCESS_DENIED:
            raise AccessDeniedError(f"{where}: access denied ({code}); check the key policy and IAM role") from None
        if code in _THROTTLED:
            raise ThrottledError(f"{where}: throttled ({code}) after all retries") from None
        if code in _WRONG_KEY:
            raise IntegrityError(
                f"{where}: wrapped data key rejected ({code}): tampered, wrong key or wrong context"
            ) from None
        if code in ("DisabledException", "KMSInvalidStateException"):
            raise KeyProviderError(f"{where}: key is disabled or pending deletion ({code})") from None
        if code == "NotFoundException":
            raise KeyProviderError(f"{where}: key not found ({code})") from None
        raise KeyProviderError(f"{where}: failed ({code})") from None
    except BotoCoreError as exc:
        raise KeyProviderError(f"KMS {operation} with key {key}: {type(exc).__name__}") from None
