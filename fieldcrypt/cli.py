"""`fieldcrypt` command line: keys, enablement, protection, status, verification, rotation, erasure.

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
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from fieldcrypt.catalog import CATALOG_ENV, WORKSPACE_ENV, Catalog
from fieldcrypt.cli_output import Output, history_line
from fieldcrypt.detectors import DEFAULT_PHONE_REGIONS
from fieldcrypt.discovery import DEFAULT_SAMPLE, ColumnFinding, DiscoveryReport
from fieldcrypt.errors import ConfigError, FieldcryptError, InputError, KeyProviderError, PolicyError
from fieldcrypt.format.kernel import describe as describe_kernel
from fieldcrypt.keys.blind_index import NORMALIZATIONS
from fieldcrypt.keys.keystore import Keystore, new_wrapping_key, parse_base64_key, unwrap_imported_key
from fieldcrypt.keys.providers.aws_kms import key_policy_statements
from fieldcrypt.log_safety import silence_key_material_loggers
from fieldcrypt.policy.enable_checks import ALLOW_ABSENT_KEY
from fieldcrypt.policy.erasure import DEFAULT_EXPIRY_DAYS, ErasureRequest
from fieldcrypt.policy.layout import partition_label
from fieldcrypt.policy.policy import MASKS
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


class _VersionAction(argparse.Action):
    """`--version`: the package version and the cell kernel in use (fieldcrypt.format.kernel), then exit."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"fieldcrypt {package_version('fieldcrypt')}, {describe_kernel()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fieldcrypt", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--version", action=_VersionAction, help="print the version and the active cell kernel")
    parser.add_argument("--catalog", help=f"catalog file (default: ${CATALOG_ENV} or ./fieldcrypt.yaml)")
    parser.add_argument("--workspace", help=f"workspace of the catalog (default: ${WORKSPACE_ENV} or its default)")
    parser.add_argument("--lake", help="override: local folder or s3://bucket/prefix")
    parser.add_argument("--provider", choices=["local", "aws-kms", "pkcs11"], help="override: key provider")
    parser.add_argument("--keystore", help="override: local keystore file")
    parser.add_argument("--kms-key", help="override: KMS key ARN")
    parser.add_argument("--kms-endpoint-url", help="override: KMS-compatible endpoint")
    parser.add_argument("--s3-endpoint-url", help="override: S3-compatible endpoint")
    parser.add_argument("--region", help="override: AWS region of the lake and key")
    parser.add_argument("--json", action="store_true", help="print JSON lines (one object per row, then a summary)")
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
        "--pad-to",
        type=int,
        default=0,
        metavar="BYTES",
        help="pad cells to a multiple of BYTES (16..4096, a power of two) so ciphertext hides exact value lengths",
    )
    enable.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        default="none",
        help="with --blind-index: index values trimmed (trim), trimmed and lower-cased (email) or as E.164 (e164)",
    )
    enable.add_argument(
        ALLOW_ABSENT_KEY,
        dest="allow_absent_key",
        action="store_true",
        help="for a map key (col['key']): enable it although no row of the newest partition has that key yet",
    )
    enable.add_argument(
        ACK_FLAG,
        dest="acknowledged",
        action="store_true",
        help="confirm: this cannot be undone, and rows ingested before now stay unencrypted",
    )

    history = commands.add_parser(
        "encrypt-history",
        help="also encrypt the attribute's rows ingested before its enablement (irreversible; then run protect)",
    )
    history.add_argument("attribute", help="an enabled attribute, dataset.column")
    history.add_argument(
        ACK_FLAG,
        dest="acknowledged",
        action="store_true",
        help="confirm: this cannot be undone, and copies outside the lake (old S3 versions, backups) stay as they are",
    )

    for name, text in (
        ("protect", "encrypt pending rows"),
        ("status", "count protected and plaintext rows"),
        ("verify", "decrypt every protected cell, print counts only"),
        ("rotate-partition", "rewrap the data keys of partitions under the current master key"),
        ("reindex-partition", "recompute the blind indexes of partitions under the new index key"),
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
    start.add_argument(
        "--to", help="aws-kms: the new key ARN; pkcs11:<label>: a key in the configured token (local: a new version)"
    )
    rotate.add_parser("status", help="which partitions still hold wrapped keys under an old key")
    rotate.add_parser("complete", help="prove nothing is left under the old key, then retire it")

    reindex = commands.add_parser("reindex", help="blind-index re-index campaign (new index key)").add_subparsers(
        dest="reindex_command", required=True
    )
    for name, text in (
        ("start", "give the attribute a new index key; new rows are indexed under it"),
        ("complete", "prove every index is under the new key, then forget the old one"),
    ):
        reindex.add_parser(name, help=text).add_argument("attribute", help="dataset.path of a blind-indexed attribute")

    discover = commands.add_parser(
        "discover", help="find emails, phones, card numbers, IBANs and IPs in a partition's text columns (counts only)"
    )
    discover.add_argument("dataset")
    discover.add_argument(
        "--partition", action="append", help="partition key (repeatable); default: the latest partition with data"
    )
    discover.add_argument(
        "--sample", type=int, default=DEFAULT_SAMPLE, metavar="N", help="non-null values sampled per column"
    )
    discover.add_argument(
        "--phone-region",
        action="append",
        metavar="CC",
        help=f"region whose national phone forms are detected (repeatable; default: {' '.join(DEFAULT_PHONE_REGIONS)})",
    )
    discover.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON lines")

    erase_reindex = commands.add_parser(
        "erase-reindex",
        help="rebuild a dataset's index of active erasure requests from the requests on file (audited): after the "
        "index was removed or damaged, or on a lake from before the index",
    )
    erase_reindex.add_argument("dataset")
    erase_reindex.add_argument("--reason", required=True, help="why (recorded in the audit log)")

    erase = commands.add_parser(
        "erase",
        help="forget rows: null the protected cells and historical plaintext of the given primary keys in every "
        "partition (an erasure request, audited; keys kept only as keyed hashes)",
    )
    erase.add_argument("dataset")
    erase.add_argument(
        "--keys",
        type=Path,
        required=True,
        help="file of primary keys: one per line, or CSV with a header naming the key columns (composite keys, "
        "or any .csv file); a malformed line is an error naming it",
    )
    erase.add_argument("--reason", required=True, help="why (the request's ticket id); recorded with the request")
    erase.add_argument(
        "--expires-in-days",
        type=int,
        default=DEFAULT_EXPIRY_DAYS,
        metavar="DAYS",
        help=f"protection runs keep erasing these keys from snapshots landed later for DAYS (default "
        f"{DEFAULT_EXPIRY_DAYS})",
    )

    reveal = commands.add_parser(
        "reveal", help="print the plaintext of chosen rows (support, dispatch); audited with a required reason"
    )
    reveal.add_argument("dataset")
    reveal.add_argument("--partition", help="partition key (required for a partitioned dataset)")
    reveal.add_argument("--attribute", action="append", required=True, help="attribute to reveal (repeatable)")
    rows = reveal.add_mutually_exclusive_group(required=True)
    rows.add_argument("--row-key", action="append", help="primary-key value of a row to reveal (repeatable)")
    rows.add_argument("--row-keys-file", type=Path, help="file with one primary-key value per line")
    reveal.add_argument("--reason", required=True, help="why (a ticket id): recorded in the audit log with your user")
    reveal.add_argument("--out", type=Path, help="write to this file (created 0600) instead of stdout")

    commands.add_parser("datasets", help="list the workspace's declared datasets and their partitions")
    audit = commands.add_parser("audit", help="print the audit log (JSON lines)")
    audit.add_argument(
        "--unconfirmed", action="store_true", help="only intents never confirmed (a run died around a replace)"
    )
    audit.add_argument(
        "--verify",
        action="store_true",
        help="check every record (sequence, chain, MAC); names the first missing, edited or truncated one",
    )
    audit.add_argument("--operation", action="append", help="only these operations (repeatable: reveal, encrypt...)")
    audit.add_argument("--dataset", help="only records of this dataset")
    audit.add_argument("--actor", help="only records of this actor (`cli:<user>`, `dagster:<run id>`)")
    audit.add_argument("--since", type=_utc_time, help="only records at or after this UTC time (ISO 8601)")
    audit.add_argument("--until", type=_utc_time, help="only records before this UTC time (ISO 8601)")
    audit.add_argument(
        "--summary", action="store_true", help="counts per operation (records, cells) instead of the records"
    )

    restore = commands.add_parser(
        "restore-accept",
        help="accept a deliberate restore of _fieldcrypt/ (policy, ledger) from a backup, after checking the lake",
    )
    restore.add_argument("--reason", required=True, help="why (ticket id); written to the audit log")

    rewrite = commands.add_parser(
        "accept-rewrite",
        help="accept a partition an engine rewrote (a compaction), after checking every cell; audited",
    )
    rewrite.add_argument("dataset")
    rewrite.add_argument("--partition", action="append", help="partition key (repeatable; required if partitioned)")
    rewrite.add_argument("--reason", required=True, help="why (ticket id); written to the audit log")

    purge = commands.add_parser(
        "purge-history",
        help="delete a Delta table's old versions (VACUUM and log cleanup): their files still hold plaintext; audited",
    )
    purge.add_argument("dataset", help="a dataset declared kind: delta")
    purge.add_argument(
        "--older-than",
        required=True,
        type=_duration_hours,
        help="retention: versions older than this stop being readable (e.g. 7d, 24h, 0h); the table's own "
        "retention check is disabled for it",
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
    try:
        return Catalog.load(args.catalog, environ).workspace_config()
    except ConfigError as exc:
        if args.workspace:  # the catalog names the variable the flag was passed through; the user typed the flag
            raise ConfigError(str(exc).replace(f"({WORKSPACE_ENV})", "(--workspace)")) from None
        raise


def _workspace(args: argparse.Namespace) -> Workspace:
    return Workspace(_config(args), actor=f"cli:{getpass.getuser()}")


def _keystore_path(config: WorkspaceConfig) -> Path:
    if config.key.provider != "local" or not config.key.keystore_path:
        provider = config.key.provider
        raise KeyProviderError(f"workspace {config.name!r} uses the {provider} provider, not a local keystore")
    return Path(config.key.keystore_path)


def _print(obj: object, compact: bool = False) -> None:
    print(json.dumps(obj, default=str) if compact else json.dumps(obj, indent=2, default=str))


def _run_key(args: argparse.Namespace) -> None:
    config = _config(args)
    path = _keystore_path(config)
    wrapping_private = path.with_name(path.name + ".wrapping-key.pem")
    if args.key_command == "init":
        store = Keystore.create(path, config.name)
    elif args.key_command == "wrapping-key":
        args.out.write_bytes(new_wrapping_key(wrapping_private))
        print(
            f"wrote RSA public wrapping key to {args.out}; the customer wraps their key with the openssl "
            'command of docs/OPERATIONS.md, "Importing a customer key"'
        )
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
        },
        compact=args.json,
    )


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    silence_key_material_loggers()
    if args.command == "key":
        _run_key(args)
        return 0
    if args.command == "kms-policy":
        # The statements name the workspace (the encryption-context condition); the customer's lake need not exist yet.
        workspace_name = args.workspace or Catalog.load(args.catalog).workspace_config().name
        print(key_policy_statements(_key_arn(args.key_arn), args.role_arn, workspace_name))
        return 0
    workspace = _workspace(args)
    if args.command == "enable":
        if not args.acknowledged:  # the library's refusal cannot know the flag's name
            raise PolicyError(
                f"enabling {args.attribute} is irreversible and rows ingested before now stay unencrypted; "
                f"pass {ACK_FLAG} to confirm both"
            )
        entry = workspace.enable(
            args.attribute,
            args.mask,
            acknowledge_irreversible=args.acknowledged,
            blind_index=args.blind_index,
            pad_to=args.pad_to,
            normalize=args.normalize,
            allow_absent_key=args.allow_absent_key,
        )
        print(
            f"{entry.name}: enabled at {entry.enabled_at.isoformat()} with mask {entry.mask}; "
            "rows ingested earlier stay as they are"
        )
    elif args.command == "encrypt-history":
        if not args.acknowledged:
            raise PolicyError(
                f"encrypting the history of {args.attribute} is irreversible and does not reach copies outside the "
                f"lake (old S3 object versions, snapshots, backups); pass {ACK_FLAG} to confirm"
            )
        entry = workspace.encrypt_history(args.attribute, acknowledge_irreversible=True)
        print(
            f"{entry.name}: rows ingested before {entry.enabled_at.isoformat()} will be encrypted too; run "
            f"`fieldcrypt protect {entry.dataset}` (or a Dagster backfill) over the partitions to encrypt them"
        )
    elif args.command in PARTITION_COMMANDS:
        return _each_partition(workspace, args.command, args.dataset, args.partition, Output(args.json))
    elif args.command == "discover":
        _discover(workspace, args)
    elif args.command == "reveal":
        _reveal(workspace, args)
    elif args.command == "erase":
        return _erase(workspace, args)
    elif args.command == "erase-reindex":
        active = workspace.rebuild_erasure_index(args.dataset, args.reason)
        print(f"erasure index of {args.dataset} rebuilt: {active} active requests")
    elif args.command == "rotate":
        _rotate(workspace, args)
    elif args.command == "reindex":
        if args.reindex_command == "start":
            workspace.start_reindex(args.attribute)
            print(f"{args.attribute}: new blind-index key; run `fieldcrypt reindex-partition`, then `reindex complete`")
        else:
            checked = workspace.complete_reindex(args.attribute)
            print(f"{args.attribute}: every blind index is under the new key ({checked} partitions); old key forgotten")
    elif args.command == "datasets":
        out = Output(args.json, ["dataset", "path", "partitioning", "primary_key", "partitions", "enabled"])
        policy = workspace.policy()
        for dataset in workspace.datasets:
            layout = workspace.layout(dataset)
            out.row(
                {
                    "dataset": dataset,
                    "path": workspace.store.display(layout.path),
                    "partitioning": layout.partitioning.granularity,
                    "primary_key": ", ".join(layout.spec.primary_key) or "-",
                    "partitions": len(workspace.partitions(dataset)),
                    "enabled": ", ".join(a.path for a in policy.for_dataset(dataset)) or "-",
                }
            )
        out.finish(f"{len(workspace.datasets)} datasets declared in workspace {workspace.name}")
    elif args.command == "audit" and args.verify:
        chain = workspace.verify_audit()
        head = f"seq {chain.head.seq}, digest {chain.head.digest}" if chain.head else "none"
        print(
            f"audit log of workspace {workspace.name}: {chain.records} chained records authentic, in sequence and "
            f"unbroken ({chain.legacy_records} earlier records without chain fields before them); head: {head}, "
            "pinned in the lake's binding"
        )
    elif args.command == "audit":
        events = workspace.audit.unconfirmed() if args.unconfirmed else workspace.audit.events()
        chosen = (event for event in events if _audit_wanted(event, args))
        if args.summary:
            _print_audit_summary(chosen, Output(args.json, ["operation", "records", "cells"]))
        else:
            for event in chosen:
                print(json.dumps(event, sort_keys=True))
    elif args.command == "restore-accept":
        was, now, files, indexes = workspace.accept_restore(args.reason)
        print(
            f"restore accepted: policy.json version {was} is now version {now}; "
            f"{files} protected files verified and recorded in the protection ledger"
            + (f"; erasure indexes rebuilt from the requests on file: {', '.join(indexes)}" if indexes else "")
        )
    elif args.command == "accept-rewrite":
        for partition in args.partition or [None]:
            files = workspace.accept_rewrite(args.dataset, partition, args.reason)
            print(
                f"{args.dataset} {partition_label(partition)}: rewrite accepted; {files} files verified and recorded "
                "in the protection ledger"
            )
    elif args.command == "purge-history":
        purge = workspace.purge_history(args.dataset, older_than_hours=args.older_than)
        print(
            f"{args.dataset}: purged history older than {purge.retention_hours:g} h: {purge.files_deleted} data "
            f"files and {purge.log_files_deleted} log files deleted (audited); copies outside the table (clones, "
            "backups, S3 non-current object versions) are not reached: docs/OPERATIONS.md"
        )
    elif args.command == "policy":
        adopted = workspace.adopt_policy()
        print(
            f"policy of workspace {workspace.name} authenticated under the master key: "
            f"{len(adopted.attributes)} enabled attributes ({', '.join(sorted(adopted.attributes)) or 'none'})"
        )
    return 0


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhm])")


def _duration_hours(value: str) -> float:
    """`7d`, `24h`, `30m` as hours; a named error for anything else."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 7d, 24h or 30m")
    amount, unit = float(match.group(1)), match.group(2)
    return amount * {"d": 24.0, "h": 1.0, "m": 1 / 60}[unit]


_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+")


def _key_arn(value: str) -> str:
    """A KMS key named by its full key ARN; an alias (or alias ARN) does not work across accounts."""
    if ":alias/" in value or value.startswith("alias/"):
        raise InputError(
            f"{value} is an alias; key policies and cross-account access need the key's ARN "
            "(arn:aws:kms:<region>:<account>:key/<id>)"
        )
    if not _KEY_ARN.fullmatch(value):
        raise InputError(f"{value!r} is not a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)")
    return value


PARTITION_COMMANDS = ("protect", "status", "verify", "rotate-partition", "reindex-partition")


def _each_partition(workspace: Workspace, command: str, dataset: str, chosen: list[str] | None, out: Output) -> int:
    """Run `command` on each chosen partition (default: all with data); every partition is tried."""
    layout = workspace.layout(dataset)
    partitions: list[str | None]
    if chosen:
        for key in chosen:
            layout.check_partition(key)
            workspace.landed_files(dataset, key)  # a named partition that holds nothing is an error, not "0 cells"
        partitions = [*chosen]
    else:
        partitions = workspace.partitions(dataset)
        if not partitions:
            raise InputError(f"dataset {dataset} has no data files under {workspace.store.display(layout.path)}")
    row_of, out.columns, totals = _COMMANDS[command]
    failed = 0
    summed: dict[str, int] = {}
    rows_seen: list[dict[str, Any]] = []
    for partition in out.progress(partitions, f"{command} {dataset}"):
        try:
            rows = row_of(workspace, dataset, partition)
        except FieldcryptError as exc:
            failed += 1
            print(f"fieldcrypt: error: {dataset} {partition_label(partition)}: {_named(exc)}", file=sys.stderr)
            continue
        for row in rows:
            rows_seen.append(row)
            out.row(row)
            for key in totals:
                summed[key] = summed.get(key, 0) + int(row.get(key) or 0)
    done = len(partitions) - failed
    summary = _summary(command, done, summed, failed) + _summary_files_note(rows_seen)
    temps_left = sum({row["partition"]: row.get("temp_files_left", 0) for row in rows_seen}.values())
    if command == "status" and temps_left:
        summary += (
            f"\n{temps_left:,} temporary files of runs still under way are left (they may hold plaintext "
            "copies); run status again once those runs end"
        )
    history = workspace.table_history(dataset) if command == "status" and layout.kind != "hive" else None
    if history is not None and history.holds_plaintext:
        summary += f"\n{history_line(dataset, layout.kind, history)}"
    requests: list[dict[str, Any]] = []
    if command == "status":  # erasure requests of the dataset: ids and counts, never a key
        requests = [_request_row(request) for request in workspace.erasure_requests(dataset)]
        summary += "".join(f"\n{_request_line(row)}" for row in requests)
    if command == "status" and not failed and not temps_left:
        fully = sorted(_fully_protected(rows_seen))
        if history is not None and history.holds_plaintext:
            fully = []  # the current version is, its older versions are not
        if any(row.get("summary_files") for row in rows_seen):  # their statistics are not read
            summary += "".join(f"\n{name}: every data file fully protected" for name in fully)
        else:
            summary += "".join(f"\n{name}: fully protected, no plaintext left" for name in fully)
    out.finish(
        summary,
        {"partitions": done, "failed": failed, **summed, **({"erasure_requests": requests} if requests else {})},
    )
    if failed:
        print(f"fieldcrypt: {failed} of {len(partitions)} partitions failed", file=sys.stderr)
        return 2
    return 0


ERASE_COLUMNS = [
    "partition",
    "files",
    "files_rewritten",
    "files_skipped_by_statistics",
    "rows_matched",
    "cells_erased",
]


def _erase(workspace: Workspace, args: argparse.Namespace) -> int:
    """Record an erasure request for the keys file, then erase its keys from every partition (each is tried)."""
    keys = workspace.erasure_keys(args.dataset, args.keys)
    request = workspace.request_erasure(args.dataset, keys, args.reason, expires_in_days=args.expires_in_days)
    out = Output(args.json, ERASE_COLUMNS)
    partitions = workspace.partitions(args.dataset)
    failed = 0
    for partition in out.progress(partitions, f"erase {args.dataset}"):
        try:
            report = workspace.erase_partition(args.dataset, partition, keys, request)
        except FieldcryptError as exc:
            failed += 1
            print(f"fieldcrypt: error: {args.dataset} {partition_label(partition)}: {_named(exc)}", file=sys.stderr)
            continue
        out.row(
            {
                "partition": partition_label(partition),
                "files": report.files,
                "files_rewritten": report.files_rewritten,
                "files_skipped_by_statistics": report.files_skipped_by_statistics,
                "rows_matched": report.rows_matched,
                "cells_erased": report.cells,
            }
        )
    row = _request_row(workspace.erasures.load(args.dataset, request.request_id))
    kind = workspace.layout(args.dataset).kind
    tail = (
        f"\nthe older versions of the {kind} table still hold the erased rows (time travel): run "
        f"fieldcrypt purge-history {args.dataset} --older-than <retention> (docs/OPERATIONS.md)"
        if kind != "hive" and row.get("files_rewritten")
        else ""
    )
    out.finish(
        f"{_request_line(row)}; {keys.lines:,} lines read{tail}",
        {"failed": failed, "lines": keys.lines, **row},
    )
    if failed:
        print(
            f"fieldcrypt: {failed} of {len(partitions)} partitions failed; run `fieldcrypt erase` again with the "
            "same keys file (the request is reused), or `protect` them",
            file=sys.stderr,
        )
        return 2
    return 0


def _request_row(request: ErasureRequest) -> dict[str, Any]:
    return {
        "request": request.request_id,
        "dataset": request.dataset,
        "state": request.state(),
        "reason": request.reason,
        "keys": request.keys,
        "created_at": request.created_at.isoformat(),
        "expires_at": request.expires_at.isoformat(),
        "partitions": len(request.partitions),
        "partitions_done": request.partitions_done,
        "partitions_checked": len(request.progress),
        "files_rewritten": request.files_rewritten,
        "files_skipped_by_statistics": request.files_skipped_by_statistics,
        "cells_erased": request.cells_erased,
        # JSON only: per partition, what the run that erased it did
        "progress": {
            label: {k: v for k, v in progress.to_doc().items() if k != "format"}
            for label, progress in sorted(request.progress.items())
        },
    }


def _request_line(row: dict[str, Any]) -> str:
    return (
        f"erasure request {row['request']} ({row['reason']}): {row['state']}, {row['keys']:,} keys, "
        f"{row['partitions_done']:,} of {row['partitions']:,} partitions done, {row['cells_erased']:,} cells erased "
        f"in {row['files_rewritten']:,} files ({row['files_skipped_by_statistics']:,} skipped by their key "
        f"statistics), expires {row['expires_at']}"
    )


def _summary_files_note(rows: list[dict[str, Any]]) -> str:
    """Summary files a run removed, or (status) found: by name (fieldcrypt.lake.summary_files)."""
    removed = sorted({name for row in rows for name in row.get("summary_files_removed", ())})
    present = sorted({name for row in rows for name in row.get("summary_files", ())})
    note = ""
    if removed:
        note += f"\nremoved summary files (stale once a file below them was rewritten): {', '.join(removed)}"
    if present:
        note += (
            f"\nsummary files present: {', '.join(present)}; the next protect, rotate or re-index run that "
            "rewrites a file below them removes them (their statistics may hold plaintext until then)"
        )
    return note


def _fully_protected(rows: list[dict[str, Any]]) -> set[str]:
    """Attributes with no pending and no historical plaintext cell in any partition of a status."""
    left: dict[str, int] = {}
    for row in rows:
        if "pending" in row:
            left[row["attribute"]] = left.get(row["attribute"], 0) + row["pending"] + row["historical_plaintext"]
    return {name for name, count in left.items() if count == 0}


def _protect_rows(workspace: Workspace, dataset: str, partition: str | None) -> list[dict[str, Any]]:
    report = workspace.protect(dataset, partition)
    return [
        {
            "partition": partition_label(partition),
            "attribute": name,
            "files": report.files,
            "files_rewritten": report.files_rewritten,
            "rows": report.rows,
            "newly_encrypted": counts.newly_encrypted,
            "already_protected": counts.already_protected,
            "historical_plaintext": counts.historical_plaintext,
            "kms_calls": report.kms_calls,
            "summary_files_removed": report.summary_files_removed,
        }
        for name, counts in report.attributes.items()
    ] or [_no_attribute_row(report, partition)]


def _status_rows(workspace: Workspace, dataset: str, partition: str | None) -> list[dict[str, Any]]:
    report = workspace.status(dataset, partition)
    return [
        {
            "partition": partition_label(partition),
            "attribute": name,
            "files": report.files,
            "rows": report.rows,
            "protected": counts.already_protected,
            "pending": counts.pending,
            "historical_plaintext": counts.historical_plaintext,
            "null": counts.null_values,
            "temp_files_left": report.temp_files_left,
            "summary_files": report.summary_files_present,
        }
        for name, counts in report.attributes.items()
    ] or [_no_attribute_row(report, partition)]


def _no_attribute_row(report: Any, partition: str | None) -> dict[str, Any]:
    return {
        "partition": partition_label(partition),
        "attribute": "(none enabled)",
        "files": report.files,
        "rows": report.rows,
        "summary_files": report.summary_files_present,
    }


def _verify_rows(workspace: Workspace, dataset: str, partition: str | None) -> list[dict[str, Any]]:
    listed = workspace.files(dataset, partition)
    counts = workspace.verify(dataset, partition, listed)
    files = len(listed)
    return [
        {"partition": partition_label(partition), "attribute": name, "files": files, "cells_verified": cells}
        for name, cells in counts.items()
    ] or [{"partition": partition_label(partition), "attribute": "(none enabled)", "files": files, "cells_verified": 0}]


def _rotate_rows(workspace: Workspace, dataset: str, partition: str | None) -> list[dict[str, Any]]:
    report = workspace.rotate(dataset, partition)
    return [
        {
            "partition": partition_label(partition),
            "files": report.files,
            "files_rewritten": report.files_rewritten,
            "rows": report.rows,
            "data_keys": report.distinct_data_keys,
            "rewrapped": report.rewrapped,
            "kms_calls": report.kms_calls,
            "summary_files_removed": report.summary_files_removed,
        }
    ]


def _reindex_rows(workspace: Workspace, dataset: str, partition: str | None) -> list[dict[str, Any]]:
    report = workspace.reindex(dataset, partition)
    names = sorted(set(report.reindexed) | set(report.already)) or ["(none)"]
    return [
        {
            "partition": partition_label(partition),
            "attribute": name,
            "files": report.files,
            "files_rewritten": report.files_rewritten,
            "reindexed": report.reindexed.get(name, 0),
            "already": report.already.get(name, 0),
            "summary_files_removed": report.summary_files_removed,
        }
        for name in names
    ]


_COMMANDS: dict[str, tuple[Callable[[Workspace, str, str | None], list[dict[str, Any]]], list[str], list[str]]] = {
    "protect": (
        _protect_rows,
        [
            "partition",
            "attribute",
            "files",
            "files_rewritten",
            "rows",
            "newly_encrypted",
            "already_protected",
            "historical_plaintext",
            "kms_calls",
        ],
        ["newly_encrypted", "files_rewritten"],
    ),
    "status": (
        _status_rows,
        [
            "partition",
            "attribute",
            "files",
            "rows",
            "protected",
            "pending",
            "historical_plaintext",
            "null",
            "temp_files_left",
        ],
        ["protected", "pending", "historical_plaintext"],
    ),
    "verify": (_verify_rows, ["partition", "attribute", "files", "cells_verified"], ["cells_verified"]),
    "rotate-partition": (
        _rotate_rows,
        ["partition", "files", "files_rewritten", "rows", "data_keys", "rewrapped", "kms_calls"],
        ["rewrapped", "files_rewritten", "kms_calls"],
    ),
    "reindex-partition": (
        _reindex_rows,
        ["partition", "attribute", "files", "files_rewritten", "reindexed", "already"],
        ["reindexed", "files_rewritten"],
    ),
}


def _summary(command: str, done: int, summed: dict[str, int], failed: int) -> str:
    partitions = f"{done:,} partition{'s' if done != 1 else ''}"
    tail = f"; {failed} failed" if failed else ""
    if command == "protect":
        return (
            f"protected {partitions}: {summed.get('newly_encrypted', 0):,} cells newly encrypted, "
            f"{summed.get('files_rewritten', 0):,} files rewritten{tail}"
        )
    if command == "status":
        return (
            f"{partitions}: {summed.get('protected', 0):,} cells protected, {summed.get('pending', 0):,} pending, "
            f"{summed.get('historical_plaintext', 0):,} historical plaintext{tail}"
        )
    if command == "verify":
        verdict = "all authentic" if not failed else f"{failed} partitions FAILED"
        return f"verified {partitions}, {summed.get('cells_verified', 0):,} cells, {verdict}"
    if command == "reindex-partition":
        return (
            f"re-indexed {partitions}: {summed.get('reindexed', 0):,} blind indexes recomputed in "
            f"{summed.get('files_rewritten', 0):,} files{tail}"
        )
    return (
        f"rotated {partitions}: {summed.get('rewrapped', 0):,} data keys rewrapped in "
        f"{summed.get('files_rewritten', 0):,} files, {summed.get('kms_calls', 0):,} KMS calls{tail}"
    )


def _rotate(workspace: Workspace, args: argparse.Namespace) -> None:
    if args.rotate_command == "start":
        campaign = workspace.start_rotation(args.to)
        print(f"rotation {campaign.campaign_id} started: {campaign.old.ref} -> {campaign.new.ref}")
        print("new data keys wrap under the new key; both decrypt until `fieldcrypt rotate complete`")
    elif args.rotate_command == "complete":
        campaign = workspace.complete_rotation()
        print(f"rotation {campaign.campaign_id} complete at {campaign.finished_at}: {campaign.old.ref} retired")
    else:
        status = workspace.rotation_status()
        binding = workspace.bindings.load()
        last = binding.campaigns[-1] if binding and binding.campaigns else None
        if args.json:
            print(
                json.dumps(
                    {
                        "campaign": asdict(last) if last else None,
                        "scanned": status.scanned,
                        "remaining": status.remaining,
                        "complete": status.complete,
                    },
                    default=str,
                )
            )
            return
        if last is None:
            print("no rotation campaign yet")
        elif last.status == "complete":
            print(f"last campaign {last.campaign_id}: {last.old.ref} -> {last.new.ref}, complete at {last.finished_at}")
        else:
            print(f"campaign {last.campaign_id} in progress since {last.started_at}: {last.old.ref} -> {last.new.ref}")
        for where, refs in sorted(status.remaining.items()):
            print(f"  {where}: still under {', '.join(refs)}")
        scanned = f"{status.scanned} partition{'' if status.scanned == 1 else 's'}"
        print(f"{scanned} scanned, {len(status.remaining)} still hold data keys under an old key")


DISCOVER_COLUMNS = [
    "partition",
    "column",
    "type",
    "sampled",
    "detector",
    "share",
    "enabled",
    "protected",
    "historical_plaintext",
    "finding",
]


def _discover(workspace: Workspace, args: argparse.Namespace) -> None:
    """PII per column of the chosen partitions (default: the latest); names and counts, never a value."""
    layout = workspace.layout(args.dataset)
    partitions: list[str | None] = list(args.partition or [])
    if not partitions:
        landed = workspace.partitions(args.dataset)
        if not landed:
            raise InputError(f"dataset {args.dataset} has no data files under {workspace.store.display(layout.path)}")
        partitions = [landed[-1]]
    regions = args.phone_region if args.phone_region is not None else DEFAULT_PHONE_REGIONS
    out = Output(args.json, DISCOVER_COLUMNS)
    undeclared: set[str] = set()
    columns = 0
    for partition in partitions:
        report = workspace.discover(args.dataset, partition, sample_rows=args.sample, phone_regions=regions)
        for finding in report.columns:
            columns += 1
            out.row(_discovery_row(report, finding))
        undeclared |= {f"{c.column} ({c.detector})" for c in report.undeclared_pii}
    where = ", ".join(partition_label(p) for p in partitions)
    summary = f"{columns} columns sampled in {args.dataset} {where}: "
    if undeclared:
        summary += f"{len(undeclared)} not enabled hold PII: {', '.join(sorted(undeclared))}"
    else:
        summary += "no column that is not enabled holds PII"
    out.finish(summary, {"partitions": len(partitions), "columns": columns, "undeclared_pii": len(undeclared)})


def _discovery_row(report: DiscoveryReport, finding: ColumnFinding) -> dict[str, Any]:
    row: dict[str, Any] = {
        "partition": partition_label(report.partition),
        "column": finding.column,
        "type": finding.value_type,
        "sampled": finding.sampled,
        "detector": finding.detector,
        "share": f"{finding.share:.1%}" if finding.detector else None,
        "enabled": finding.enabled,
        "protected": finding.protected,
        "historical_plaintext": finding.historical_plaintext,
        "finding": _finding(report, finding),
        # JSON only (the table shows the columns above): every detector's count, and more counts
        "matches": dict(finding.matches),
        "protected_sampled": finding.protected_sampled,
        "pending": finding.pending,
    }
    return row


def _finding(report: DiscoveryReport, finding: ColumnFinding) -> str:
    if finding in report.undeclared_pii:
        return "PII, not enabled"
    if finding.enabled or finding.protected:
        state = "protected" if finding.protected else "enabled, nothing protected yet"
        if finding.historical_plaintext:
            state += "; historical plaintext"
        return state
    if finding.detector:
        return f"few matches (under {report.min_share:.1%})"
    return "-"


def _reveal(workspace: Workspace, args: argparse.Namespace) -> None:
    """Plaintext of chosen rows, to stdout or a 0600 file; the audit log records who, why and how many cells."""
    keys = args.row_key or [line.strip() for line in args.row_keys_file.read_text().splitlines() if line.strip()]
    reason = args.reason.strip()
    if not reason:
        raise InputError("--reason must say why (a ticket id, a request): it is recorded in the audit log")
    batches = workspace.reveal(args.dataset, args.partition, args.attribute, row_keys=keys, reason=reason)
    sink = _private_output(args.out) if args.out else sys.stdout
    found = 0
    try:
        for batch in batches:
            for row in batch.to_pylist():
                sink.write(json.dumps(row, default=str) + "\n")
                found += 1
    finally:
        if sink is not sys.stdout:
            sink.close()
    print(f"revealed {found} of {len(keys)} rows; audited as {workspace.audit.actor}: {reason}", file=sys.stderr)


def _private_output(path: Path) -> Any:
    """A new file only its owner can read (plaintext); refuses to overwrite."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(f"{path} exists; reveal never overwrites a file") from None
    return os.fdopen(fd, "w")


def _utc_time(text: str) -> datetime:
    """An ISO 8601 time for the audit filters; one without a zone is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (like 2026-12-07T09:00)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _audit_wanted(event: dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether an audit record passes the command's filters (all of them)."""
    if args.operation and event.get("operation") not in args.operation:
        return False
    if args.dataset and event.get("dataset") != args.dataset:
        return False
    if args.actor and event.get("actor") != args.actor:
        return False
    if args.since or args.until:
        moment = _utc_time(str(event.get("time", "")).replace("Z", "+00:00"))
        if (args.since and moment < args.since) or (args.until and moment >= args.until):
            return False
    return True


def _print_audit_summary(events: Iterable[dict[str, Any]], out: Output) -> None:
    """Records and cells per operation, the operations in the order they first occur."""
    records: dict[str, int] = {}
    cells: dict[str, int] = {}
    for event in events:
        operation = str(event.get("operation"))
        records[operation] = records.get(operation, 0) + 1
        cells[operation] = cells.get(operation, 0) + int(event.get("cells") or 0)
    for operation, count in records.items():
        out.row({"operation": operation, "records": count, "cells": cells[operation]})
    total = sum(records.values())
    out.finish(f"{total:,} records, {len(records)} operations", {"records": total})


def _named(exc: FieldcryptError) -> str:
    """The error as Dagster shows it: its class (what a runbook or a script matches on), then its message."""
    return f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> None:
    try:
        sys.exit(run(argv))
    except FieldcryptError as exc:
        print(f"fieldcrypt: error: {_named(exc)}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, without a traceback at interpreter exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:
        # Storage the lake lives on failed (a missing bucket, no route to S3, a permission): pyarrow's and
        # the OS's messages name the bucket or path and never a value. The library lets these through
        # unwrapped so Dagster's retry policy can retry a dropped connection; a person gets one line.
        print(f"fieldcrypt: error: the lake's storage failed: {exc}", file=sys.stderr)
        sys.exit(2)
