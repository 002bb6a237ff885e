"""`fieldcrypt` command line: keys, enablement, protection, status, verification, rotation.

Settings come from the catalog (`fieldcrypt.yaml` in the current folder, or --catalog /
FIELDCRYPT_CATALOG), the same file the Dagster code location reads; flags and the
environment (FIELDCRYPT_WORKSPACE, FIELDCRYPT_LAKE, FIELDCRYPT_KEY_PROVIDER,
FIELDCRYPT_KEYSTORE, FIELDCRYPT_KMS_KEY, ...) override the selected workspace's entry.
Output is ids and counts; no command prints plaintext or key material.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fieldcrypt.catalog import CATALOG_ENV, WORKSPACE_ENV, Catalog
from fieldcrypt.errors import FieldcryptError, InputError, KeyProviderError, PolicyError
from fieldcrypt.keystore import Keystore, new_wrapping_key, parse_base64_key, unwrap_imported_key
from fieldcrypt.layout import partition_label
from fieldcrypt.log_safety import silence_key_material_loggers
from fieldcrypt.policy import MASKS
from fieldcrypt.providers.aws_kms import key_policy_statements
from fieldcrypt.workspace import Workspace, WorkspaceConfig

ACK_FLAG = "--i-understand-this-is-irreversible"
# Flags that override the selected workspace's catalog entry, as the environment variable would.
_OVERRIDE_FLAGS = {
    "lake": "FIELDCRYPT_LAKE",
    "provider": "FIELDCRYPT_KEY_PROVIDER",
    "keystore": "FIELDCRYPT_KEYSTORE",
    "kms_key": "FIELDCRYPT_KMS_KEY",
    "kms_endpoint_url": "FIELDCRYPT_KMS_ENDPOINT_URL",
    "s3_endpoint_url": "FIELDCRYPT_S3_ENDPOINT_URL",
    "region": "FIELDCRYPT_REGION",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fieldcrypt", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--catalog", help=f"catalog file (default: ${CATALOG_ENV} or ./fieldcrypt.yaml)")
    parser.add_argument("--workspace", help=f"workspace of the catalog (default: ${WORKSPACE_ENV} or its default)")
    parser.add_argument("--lake", help="override: local folder or s3://bucket/prefix")
    parser.add_argument("--provider", choices=["local", "aws-kms"], help="override: key provider")
    parser.add_argument("--keystore", help="override: local keystore file")
    parser.add_argument("--kms-key", help="override: KMS key ARN")
    parser.add_argument("--kms-endpoint-url", help="override: KMS-compatible endpoint")
    parser.add_argument("--s3-endpoint-url", help="override: S3-compatible endpoint")
    parser.add_argument("--region", help="override: AWS region of the lake and key")
    commands = parser.add_subparsers(dest="command", required=True)

    key = commands.add_parser("key", help="local master key").add_subparsers(dest="key_command", required=True)
    key.add_parser("init", help="create a keystore with a random 256-bit key")
    imported = key.add_parser("import", help="create a keystore from a customer key (base64 on stdin)")
    imported.add_argument("--wrapped", type=Path, help="file with the key encrypted by RSA-OAEP-SHA256")
    exported = key.add_parser("wrapping-key", help="export an RSA public key to wrap a customer key with")
    exported.add_argument("--out", type=Path, required=True)
    key.add_parser("describe", help="show the master key id and versions (never the key)")

    kms = commands.add_parser("kms-policy", help="print the key-policy statements a customer adds to their key")
    kms.add_argument("--key-arn", required=True)
    kms.add_argument("--role-arn", required=True, help="the platform role that runs fieldcrypt")

    enable = commands.add_parser("enable", help="protect an attribute from now on (irreversible)")
    enable.add_argument("attribute", help="dataset.column or dataset.struct.field (dataset declared in the catalog)")
    enable.add_argument("--mask", choices=MASKS, required=True)
    enable.add_argument(
        "--blind-index", action="store_true", help="also write a keyed index for joins and distinct counts"
    )
    enable.add_argument(
        ACK_FLAG,
        dest="acknowledged",
        action="store_true",
        help="confirm: this cannot be undone, and rows ingested before now stay unencrypted",
    )

    for name, text in (
        ("protect", "encrypt pending rows"),
        ("status", "count protected and plaintext rows"),
        ("verify", "decrypt every protected cell, print counts only"),
        ("rotate-partition", "rewrap the data keys of partitions under the current master key"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("dataset")
        sub.add_argument(
            "--partition",
            action="append",
            help="partition key, e.g. 2026-11-28 (daily), 2026-11-28T13 (hourly), 2026-11 (monthly); "
            "repeatable; default: every partition with data",
        )

    rotate = commands.add_parser("rotate", help="master-key rotation campaign").add_subparsers(
        dest="rotate_command", required=True
    )
    start = rotate.add_parser("start", help="start a campaign: new data keys wrap under the new key")
    start.add_argument("--to", help="aws-kms: the new key ARN (local: a new key version is created)")
    rotate.add_parser("status", help="which partitions still hold wrapped keys under an old key")
    rotate.add_parser("complete", help="prove nothing is left under the old key, then retire it")

    commands.add_parser("datasets", help="list the workspace's declared datasets and their partitions")
    audit = commands.add_parser("audit", help="print the audit log (JSON lines)")
    audit.add_argument(
        "--unconfirmed", action="store_true", help="only intents never confirmed (a run died around a replace)"
    )

    policy = commands.add_parser("policy", help="the workspace policy").add_subparsers(
        dest="policy_command", required=True
    )
    policy.add_parser(
        "adopt",
        help="authenticate a legacy (unauthenticated) policy after checking it against every stored file",
    )
    return parser


def _config(args: argparse.Namespace) -> WorkspaceConfig:
    environ = dict(os.environ)
    if args.workspace:
        environ[WORKSPACE_ENV] = args.workspace
    for flag, variable in _OVERRIDE_FLAGS.items():
        if getattr(args, flag):
            environ[variable] = getattr(args, flag)
    return Catalog.load(args.catalog, environ).workspace_config()


def _workspace(args: argparse.Namespace) -> Workspace:
    return Workspace(_config(args), actor=f"cli:{getpass.getuser()}")


def _keystore_path(config: WorkspaceConfig) -> Path:
    if config.key.provider != "local" or not config.key.keystore_path:
        provider = config.key.provider
        raise KeyProviderError(f"workspace {config.name!r} uses the {provider} provider, not a local keystore")
    return Path(config.key.keystore_path)


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _run_key(args: argparse.Namespace) -> None:
    config = _config(args)
    path = _keystore_path(config)
    wrapping_private = path.with_name(path.name + ".wrapping-key.pem")
    if args.key_command == "init":
        store = Keystore.create(path, config.name)
    elif args.key_command == "wrapping-key":
        args.out.write_bytes(new_wrapping_key(wrapping_private))
        print(f"wrote RSA public wrapping key to {args.out}; see docs/OPERATIONS.md for the openssl command")
        return
    elif args.key_command == "import":
        if args.wrapped:
            key = unwrap_imported_key(wrapping_private, args.wrapped.read_bytes())
            store = Keystore.create(path, config.name, key, origin="imported-wrapped")
            wrapping_private.unlink()
        else:
            store = Keystore.create(path, config.name, parse_base64_key(sys.stdin.read()), origin="imported")
    else:
        store = Keystore.load(path)
    _print(
        {
            "keystore": str(store.path),
            "workspace": store.workspace,
            "key_id": store.key_id,
            "current": store.current,
            "versions": [
                {"version": v.version, "origin": v.origin, "state": v.state, "created_at": v.created_at}
                for v in store.versions.values()
            ],
        }
    )


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    silence_key_material_loggers()
    if args.command == "key":
        _run_key(args)
        return 0
    if args.command == "kms-policy":
        # The statements name the workspace (the encryption-context condition); the customer's lake need not exist yet.
        workspace_name = args.workspace or Catalog.load(args.catalog).selected
        print(key_policy_statements(args.key_arn, args.role_arn, workspace_name))
        return 0
    workspace = _workspace(args)
    if args.command == "enable":
        if not args.acknowledged:  # the library's refusal cannot know the flag's name
            raise PolicyError(
                f"enabling {args.attribute} is irreversible and rows ingested before now stay unencrypted; "
                f"pass {ACK_FLAG} to confirm both"
            )
        entry = workspace.enable(
            args.attribute, args.mask, acknowledge_irreversible=args.acknowledged, blind_index=args.blind_index
        )
        print(
            f"{entry.name}: enabled at {entry.enabled_at.isoformat()} with mask {entry.mask}; "
            "rows ingested earlier stay as they are"
        )
    elif args.command in ("protect", "status", "verify", "rotate-partition"):
        action: Callable[[str, str | None], Any] = {
            "protect": workspace.protect,
            "status": workspace.status,
            "verify": workspace.verify,
            "rotate-partition": workspace.rotate,
        }[args.command]
        return _each_partition(workspace, args.dataset, args.partition, action)
    elif args.command == "rotate":
        if args.rotate_command == "start":
            _print(asdict(workspace.start_rotation(args.to)))
        elif args.rotate_command == "status":
            status = workspace.rotation_status()
            _print(
                {
                    "campaign": asdict(status.campaign) if status.campaign else None,
                    "scanned": status.scanned,
                    "remaining": status.remaining,
                    "complete": status.complete,
                }
            )
        else:
            _print(asdict(workspace.complete_rotation()))
    elif args.command == "datasets":
        for dataset in workspace.datasets:
            layout = workspace.layout(dataset)
            partitions = workspace.partitions(dataset)
            _print(
                {
                    "dataset": dataset,
                    "path": workspace.store.display(layout.path),
                    "partitioning": layout.partitioning.granularity,
                    "partitions_with_data": len(partitions),
                }
            )
    elif args.command == "audit":
        for event in workspace.audit.unconfirmed() if args.unconfirmed else workspace.audit.events():
            print(json.dumps(event, sort_keys=True))
    elif args.command == "policy":
        adopted = workspace.adopt_policy()
        print(
            f"policy of workspace {workspace.name} authenticated under the master key: "
            f"{len(adopted.attributes)} enabled attributes ({', '.join(sorted(adopted.attributes)) or 'none'})"
        )
    return 0


def _each_partition(
    workspace: Workspace, dataset: str, chosen: list[str] | None, action: Callable[[str, str | None], Any]
) -> int:
    """Run `action` on each chosen partition (default: all with data); every partition is tried."""
    layout = workspace.layout(dataset)
    partitions: list[str | None]
    if chosen:
        for key in chosen:
            layout.check_partition(key)
        partitions = [*chosen]
    else:
        partitions = workspace.partitions(dataset)
        if not partitions:
            raise InputError(f"dataset {dataset} has no data files under {workspace.store.display(layout.path)}")
    failed = 0
    for partition in partitions:
        try:
            result = action(dataset, partition)
        except FieldcryptError as exc:
            failed += 1
            print(f"fieldcrypt: error: {dataset} {partition_label(partition)}: {exc}", file=sys.stderr)
            continue
        fields = result if isinstance(result, dict) else asdict(result)
        _print({"partition": partition, **fields})
    if failed:
        print(f"fieldcrypt: {failed} of {len(partitions)} partitions failed", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        sys.exit(run(argv))
    except FieldcryptError as exc:
        print(f"fieldcrypt: error: {exc}", file=sys.stderr)
        sys.exit(2)
