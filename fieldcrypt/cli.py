"""`fieldcrypt` command line: keys, enablement, protection, status, verification, rotation.

Workspace settings come from flags or the environment (FIELDCRYPT_WORKSPACE,
FIELDCRYPT_LAKE, FIELDCRYPT_KEY_PROVIDER, FIELDCRYPT_KEYSTORE, FIELDCRYPT_KMS_KEY,
FIELDCRYPT_KMS_ENDPOINT_URL, FIELDCRYPT_S3_ENDPOINT_URL, AWS_REGION). Output is ids and
counts; no command prints plaintext or key material.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import date
from importlib.metadata import version as package_version
from pathlib import Path

from fieldcrypt.errors import FieldcryptError, PolicyError
from fieldcrypt.kernel import describe as describe_kernel
from fieldcrypt.keystore import Keystore, new_wrapping_key, parse_base64_key, unwrap_imported_key
from fieldcrypt.log_safety import silence_key_material_loggers
from fieldcrypt.policy import MASKS, DatasetSpec
from fieldcrypt.providers.aws_kms import key_policy_statements
from fieldcrypt.sample import land_sample_lake
from fieldcrypt.workspace import KeyConfig, Workspace, WorkspaceConfig

ACK_FLAG = "--i-understand-this-is-irreversible"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


class _VersionAction(argparse.Action):
    """`--version`: the package version and the cell kernel in use (fieldcrypt.kernel), then exit."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"fieldcrypt {package_version('fieldcrypt')}, {describe_kernel()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fieldcrypt", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--version", action=_VersionAction, help="print the version and the active cell kernel")
    parser.add_argument("--workspace", default=_env("FIELDCRYPT_WORKSPACE", "default"))
    parser.add_argument("--lake", default=_env("FIELDCRYPT_LAKE"), help="local folder or s3://bucket/prefix")
    parser.add_argument("--provider", default=_env("FIELDCRYPT_KEY_PROVIDER", "local"), choices=["local", "aws-kms"])
    parser.add_argument("--keystore", default=_env("FIELDCRYPT_KEYSTORE"), help="local keystore file")
    parser.add_argument("--kms-key", default=_env("FIELDCRYPT_KMS_KEY"), help="KMS key ARN or alias")
    parser.add_argument("--kms-endpoint-url", default=_env("FIELDCRYPT_KMS_ENDPOINT_URL"))
    parser.add_argument("--s3-endpoint-url", default=_env("FIELDCRYPT_S3_ENDPOINT_URL"))
    parser.add_argument("--region", default=_env("AWS_REGION", _env("AWS_DEFAULT_REGION")))
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
    enable.add_argument("attribute", help="dataset.column or dataset.struct.field")
    enable.add_argument("--mask", choices=MASKS, required=True)
    enable.add_argument("--ingested-at", help="ingestion-time column, for a dataset not yet declared")
    enable.add_argument("--primary-key", help="primary-key column, for a dataset not yet declared")
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
        sub.add_argument("--partition", action="append", help="YYYY-MM-DD (repeatable); default: all")

    rotate = commands.add_parser("rotate", help="master-key rotation campaign").add_subparsers(
        dest="rotate_command", required=True
    )
    start = rotate.add_parser("start", help="start a campaign: new data keys wrap under the new key")
    start.add_argument("--to", help="aws-kms: the new key ARN (local: a new key version is created)")
    rotate.add_parser("status", help="which partitions still hold wrapped keys under an old key")
    rotate.add_parser("complete", help="prove nothing is left under the old key, then retire it")

    commands.add_parser("audit", help="print the audit log (JSON lines)")

    sample = commands.add_parser("sample", help="land generated sample snapshots in the lake")
    sample.add_argument("--start", type=date.fromisoformat, required=True)
    sample.add_argument("--days", type=int, default=7)
    sample.add_argument("--users", type=int, default=1000)
    sample.add_argument("--events", type=int, default=3000)
    return parser


def _workspace(args: argparse.Namespace) -> Workspace:
    if not args.lake:
        raise FieldcryptError("no lake: pass --lake or set FIELDCRYPT_LAKE")
    key = KeyConfig(
        provider=args.provider,
        keystore_path=args.keystore,
        kms_key=args.kms_key,
        kms_region=args.region,
        kms_endpoint_url=args.kms_endpoint_url,
    )
    config = WorkspaceConfig(
        args.workspace, args.lake, key, s3_endpoint_url=args.s3_endpoint_url, s3_region=args.region
    )
    return Workspace(config, actor=f"cli:{getpass.getuser()}")


def _keystore_path(args: argparse.Namespace) -> Path:
    if not args.keystore:
        raise FieldcryptError("no keystore: pass --keystore or set FIELDCRYPT_KEYSTORE")
    return Path(args.keystore)


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _run_key(args: argparse.Namespace) -> None:
    path = _keystore_path(args)
    wrapping_private = path.with_name(path.name + ".wrapping-key.pem")
    if args.key_command == "init":
        store = Keystore.create(path, args.workspace)
    elif args.key_command == "wrapping-key":
        args.out.write_bytes(new_wrapping_key(wrapping_private))
        print(f"wrote RSA public wrapping key to {args.out}; see docs/OPERATIONS.md for the openssl command")
        return
    elif args.key_command == "import":
        if args.wrapped:
            key = unwrap_imported_key(wrapping_private, args.wrapped.read_bytes())
            store = Keystore.create(path, args.workspace, key, origin="imported-wrapped")
            wrapping_private.unlink()
        else:
            store = Keystore.create(path, args.workspace, parse_base64_key(sys.stdin.read()), origin="imported")
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
        print(key_policy_statements(args.key_arn, args.role_arn, args.workspace))
        return 0
    workspace = _workspace(args)
    if args.command == "sample":
        written = land_sample_lake(workspace.store, args.start, args.days, args.users, args.events)
        print(f"landed {len(written)} snapshot files in {workspace.store.uri}")
    elif args.command == "enable":
        if not args.acknowledged:  # the library's refusal cannot know the flag's name
            raise PolicyError(
                f"enabling {args.attribute} is irreversible and rows ingested before now stay unencrypted; "
                f"pass {ACK_FLAG} to confirm both"
            )
        spec = (
            DatasetSpec(args.attribute.partition(".")[0], args.ingested_at, args.primary_key)
            if args.ingested_at
            else None
        )
        entry = workspace.enable(
            args.attribute,
            args.mask,
            acknowledge_irreversible=args.acknowledged,
            dataset_spec=spec,
            blind_index=args.blind_index,
        )
        print(
            f"{entry.name}: enabled at {entry.enabled_at.isoformat()} with mask {entry.mask}; "
            "rows ingested earlier stay as they are"
        )
    elif args.command in ("protect", "status", "verify", "rotate-partition"):
        action = {
            "protect": workspace.protect,
            "status": workspace.status,
            "verify": workspace.verify,
            "rotate-partition": workspace.rotate,
        }[args.command]
        for partition in args.partition or workspace.partitions(args.dataset):
            result = action(args.dataset, partition)
            _print({"partition": partition, **(asdict(result) if not isinstance(result, dict) else result)})  # type: ignore[call-overload]
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
    elif args.command == "audit":
        for event in workspace.audit.events():
            print(json.dumps(event, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        sys.exit(run(argv))
    except FieldcryptError as exc:
        print(f"fieldcrypt: error: {exc}", file=sys.stderr)
        sys.exit(2)
