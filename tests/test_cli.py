"""The `fieldcrypt` command line with the local provider: keys, enable, protect, status, verify, audit.

Sample snapshots are landed in 2030 so every row is ingested after an enablement made now.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from demo.sample_data import land_sample_lake, snapshot_path
from fieldcrypt.cli import ACK_FLAG, main, run
from fieldcrypt.keys.keystore import Keystore
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.policy import POLICY_PATH
from tests.catalogs import write_catalog

PARTITION = "2030-01-01"


@pytest.fixture(autouse=True)
def acme_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A catalog declaring workspace `acme` (the demo's datasets) in the test's folder, found by the CLI
    through FIELDCRYPT_CATALOG; no other setting comes from the environment."""
    for name in [n for n in os.environ if n.startswith("FIELDCRYPT_")]:
        monkeypatch.delenv(name)
    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", "lake", {"provider": "local", "keystore": "keystore.json"}
    )
    monkeypatch.setenv("FIELDCRYPT_CATALOG", str(catalog))
    return catalog


@pytest.fixture
def cli(tmp_path: Path) -> list[str]:
    """Global flags of a workspace whose keystore exists and whose lake holds one day of samples."""
    flags = ["--workspace", "acme", "--lake", str(tmp_path / "lake"), "--keystore", str(tmp_path / "keystore.json")]
    assert run([*flags, "key", "init"]) == 0
    land_sample_lake(LakeStore.from_uri(str(tmp_path / "lake")), date.fromisoformat(PARTITION), 1, 60, 120)
    return flags


def documents(text: str) -> list[Any]:
    """The JSON documents the CLI printed one after another."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        document, at = decoder.raw_decode(text, at)
        found.append(document)
    return found


def plaintext(lake: Path) -> set[str]:
    table = pq.read_table(lake / snapshot_path("users", PARTITION))
    return {v for column in ("email", "phone") for v in table.column(column).to_pylist() if v}


def test_key_init_creates_an_owner_only_keystore_and_prints_ids_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keystore.json"
    assert run(["--workspace", "acme", "--keystore", str(path), "key", "init"]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    printed = json.loads(capsys.readouterr().out)
    keystore = Keystore.load(path)
    assert (printed["key_id"], printed["current"], printed["workspace"]) == (keystore.key_id, 1, "acme")
    assert base64.b64encode(keystore.key_for(1)).decode() not in json.dumps(printed)


def test_key_init_refuses_to_overwrite_a_keystore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keystore.json"
    run(["--workspace", "acme", "--keystore", str(path), "key", "init"])
    before = path.read_bytes()
    with pytest.raises(SystemExit) as exited:
        main(["--workspace", "acme", "--keystore", str(path), "key", "init"])
    assert exited.value.code == 2
    assert "already exists; refusing to overwrite a master key" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_key_describe_shows_versions_and_never_the_key(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert run([*cli, "key", "describe"]) == 0
    out = capsys.readouterr().out
    key = Keystore.load(tmp_path / "keystore.json").key_for(1)
    assert json.loads(out)["versions"][0]["origin"] == "generated"
    assert base64.b64encode(key).decode() not in out and key.hex() not in out


def test_enable_without_the_acknowledgment_flag_exits_non_zero_and_says_which_flag(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*cli, "enable", "users.email", "--mask", "email"])
    assert exited.value.code != 0
    err = capsys.readouterr().err
    assert "irreversible" in err and ACK_FLAG in err
    assert not (tmp_path / "lake" / POLICY_PATH).exists()


def test_enable_with_the_acknowledgment_flag_records_the_attribute(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG]) == 0
    assert "users.email: enabled at" in capsys.readouterr().out
    policy = json.loads((tmp_path / "lake" / POLICY_PATH).read_text())
    assert policy["attributes"]["users.email"]["mask"] == "email"


def test_enable_of_an_unknown_column_exits_non_zero_naming_it(
    cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*cli, "enable", "users.nickname", "--mask", "full", ACK_FLAG])
    assert exited.value.code == 2
    assert "column 'nickname' not found" in capsys.readouterr().err


def test_enable_of_an_undeclared_dataset_names_the_catalog(cli: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*cli, "enable", "orders.note", "--mask", "full", ACK_FLAG])
    assert exited.value.code == 2
    assert "dataset 'orders' is not declared in workspace 'acme'" in capsys.readouterr().err


def json_lines(text: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows and the summary of a command run with --json."""
    lines = [json.loads(line) for line in text.splitlines()]
    assert "summary" in lines[-1]
    return lines[:-1], lines[-1]["summary"]


def test_protect_status_and_verify_print_counts_and_no_plaintext(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = plaintext(tmp_path / "lake")
    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    run([*cli, "enable", "users.phone", "--mask", "last4", ACK_FLAG])
    capsys.readouterr()

    assert run([*cli, "--json", "status", "users"]) == 0
    status, _ = json_lines(capsys.readouterr().out)
    email = next(row for row in status if row["attribute"] == "users.email")
    assert (email["partition"], email["rows"], email["files"]) == (PARTITION, 60, 1)
    pending = email["pending"]
    assert pending == 60 - email["null"] > 0
    assert not {"rewritten", "kms_calls", "seconds"} & set(email)

    assert run([*cli, "--json", "protect", "users"]) == 0
    protect_out = capsys.readouterr().out
    protected, summary = json_lines(protect_out)
    by_attribute = {row["attribute"]: row for row in protected}
    assert by_attribute["users.email"]["newly_encrypted"] == pending
    assert by_attribute["users.email"]["files_rewritten"] == 1
    assert summary["newly_encrypted"] == sum(row["newly_encrypted"] for row in protected)

    assert run([*cli, "verify", "users"]) == 0
    verify_out = capsys.readouterr().out
    cells = pending + by_attribute["users.phone"]["newly_encrypted"]
    assert verify_out.splitlines()[-1] == f"verified 1 partition, {cells:,} cells, all authentic"
    assert "users.email" in verify_out and "users.phone" in verify_out
    for out in (protect_out, verify_out):
        assert not [s for s in secrets if s in out]


def test_second_protect_through_the_cli_encrypts_nothing(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    run([*cli, "protect", "users"])
    path = tmp_path / "lake" / snapshot_path("users", PARTITION)
    before = path.read_bytes()
    capsys.readouterr()
    assert run([*cli, "--json", "protect", "users", "--partition", PARTITION]) == 0
    (report,), _ = json_lines(capsys.readouterr().out)
    assert (report["files_rewritten"], report["newly_encrypted"]) == (0, 0)
    assert path.read_bytes() == before


def test_audit_prints_key_uses_as_json_lines(cli: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    run([*cli, "protect", "users"])
    capsys.readouterr()
    assert run([*cli, "audit"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    operations = [e["operation"] for e in events]
    assert {"enable", "describe_key", "generate_data_key", "unwrap", "encrypt"} <= set(operations)
    assert all(e["actor"].startswith("cli:") for e in events)


def test_command_without_a_catalog_exits_non_zero_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FIELDCRYPT_CATALOG", str(tmp_path / "missing.yaml"))
    with pytest.raises(SystemExit) as exited:
        main(["status", "users"])
    assert exited.value.code == 2
    assert f"no catalog at {tmp_path / 'missing.yaml'}" in capsys.readouterr().err


def test_key_command_on_a_kms_workspace_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--provider", "aws-kms", "--kms-key", "arn:aws:kms:us-east-1:111122223333:key/k", "key", "init"])
    assert exited.value.code == 2
    assert "uses the aws-kms provider, not a local keystore" in capsys.readouterr().err


def test_unknown_dataset_exits_non_zero_naming_the_declared_ones(
    cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*cli, "verify", "Users"])
    assert exited.value.code == 2
    assert "dataset 'Users' is not declared in workspace 'acme' (declared: events, users)" in capsys.readouterr().err


def test_invalid_partition_key_exits_non_zero_saying_it_is_not_a_date(
    cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*cli, "protect", "users", "--partition", "2026-13-01"])
    assert exited.value.code == 2
    assert "'2026-13-01' is not a valid daily partition key (like 2026-11-28)" in capsys.readouterr().err


def test_protect_with_a_loose_keystore_exits_non_zero_and_leaves_the_file(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    (tmp_path / "keystore.json").chmod(0o644)
    path = tmp_path / "lake" / snapshot_path("users", PARTITION)
    before = path.read_bytes()
    with pytest.raises(SystemExit) as exited:
        main([*cli, "protect", "users"])
    assert exited.value.code == 2
    assert "accessible by group or others (mode 0644)" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_verify_of_a_tampered_file_exits_non_zero_without_plaintext(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow as pa

    secrets = plaintext(tmp_path / "lake")
    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    run([*cli, "protect", "users"])
    path = tmp_path / "lake" / snapshot_path("users", PARTITION)
    table = pq.read_table(path)
    cells = table.column("email__fc_ct").to_pylist()
    rows = [i for i, c in enumerate(cells) if c]
    cells[rows[0]], cells[rows[1]] = cells[rows[1]], cells[rows[0]]
    pq.write_table(
        table.set_column(table.schema.get_field_index("email__fc_ct"), "email__fc_ct", pa.array(cells)), path
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([*cli, "verify", "users"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert "failed authentication" in captured.err
    assert not [s for s in secrets if s in captured.out + captured.err]


def test_protect_of_every_partition_goes_on_past_a_bad_one_and_exits_non_zero(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    land_sample_lake(LakeStore.from_uri(str(tmp_path / "lake")), date(2030, 1, 2), 1, 60, 120)
    (tmp_path / "lake" / snapshot_path("users", PARTITION)).write_bytes(b"PAR1 not parquet")
    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    capsys.readouterr()

    with pytest.raises(SystemExit) as exited:
        main([*cli, "--json", "protect", "users"])

    assert exited.value.code == 2
    output = capsys.readouterr()
    assert f"users {PARTITION}: " in output.err and "is not a readable Parquet file" in output.err
    assert "1 of 2 partitions failed" in output.err
    (done,), summary = json_lines(output.out)
    assert done["partition"] == "2030-01-02" and done["newly_encrypted"] > 0
    assert (summary["partitions"], summary["failed"]) == (1, 1)


def test_default_output_is_a_table_with_a_summary_line(cli: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    capsys.readouterr()
    assert run([*cli, "status", "users"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "partition",
        "attribute",
        "files",
        "rows",
        "protected",
        "pending",
        "historical_plaintext",
        "null",
        "temp_files_left",
    ]
    assert lines[2].split()[:4] == [PARTITION, "users.email", "1", "60"]
    assert lines[-1].startswith("1 partition: 0 cells protected, ") and lines[-1].endswith("historical plaintext")


def test_output_piped_into_a_closed_reader_ends_without_a_traceback(cli: list[str], tmp_path: Path) -> None:
    import subprocess
    import sys

    for day in range(2, 30):
        land_sample_lake(LakeStore.from_uri(str(tmp_path / "lake")), date(2030, 1, day), 1, 30, 10)
    command = [sys.executable, "-c", "from fieldcrypt.cli import main; main()", *cli, "status", "users"]
    completed = subprocess.run(
        f"{' '.join(command)} | head -c 10", shell=True, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0
    assert "Traceback" not in completed.stderr and "BrokenPipeError" not in completed.stderr


def test_kms_policy_refuses_an_alias(capsys: pytest.CaptureFixture[str]) -> None:
    role = "arn:aws:iam::444455556666:role/fieldcrypt"
    for alias in ("alias/customer-key", "arn:aws:kms:eu-west-1:111122223333:alias/customer-key"):
        with pytest.raises(SystemExit) as exited:
            main(["--workspace", "acme", "kms-policy", "--key-arn", alias, "--role-arn", role])
        assert exited.value.code == 2
        assert "is an alias; key policies and cross-account access need the key's ARN" in capsys.readouterr().err


def test_rotate_status_shows_the_campaign_that_just_completed(
    cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    run([*cli, "protect", "users"])
    run([*cli, "rotate", "start"])
    run([*cli, "rotate-partition", "users"])
    assert run([*cli, "rotate", "complete"]) == 0
    capsys.readouterr()
    assert run([*cli, "rotate", "status"]) == 0
    out = capsys.readouterr().out
    assert "last campaign rot-" in out and "#1 -> " in out and ", complete at 20" in out
    assert out.splitlines()[-1] == "1 partition scanned, 0 still hold data keys under an old key"


def test_reveal_needs_a_reason_and_shows_only_the_chosen_rows_audited(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = pq.read_table(tmp_path / "lake" / snapshot_path("users", PARTITION)).to_pylist()
    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    run([*cli, "protect", "users"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([*cli, "reveal", "users", "--partition", PARTITION, "--attribute", "email", "--row-key", "7"])
    assert exited.value.code == 2
    assert "--reason" in capsys.readouterr().err

    out = tmp_path / "revealed.jsonl"
    args = ["reveal", "users", "--partition", PARTITION, "--attribute", "email", "--reason", "TICKET-42"]
    assert run([*cli, *args, "--row-key", "7", "--row-key", "8", "--out", str(out)]) == 0

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"user_id": 7, "users.email": original[7]["email"]},
        {"user_id": 8, "users.email": original[8]["email"]},
    ]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert capsys.readouterr().out == ""  # plaintext went to the file only
    events = [e for e in documents_of_audit(tmp_path / "lake") if e["operation"] == "reveal"]
    assert [(e["reason"], e["cells"], e["actor"].startswith("cli:")) for e in events] == [("TICKET-42", 2, True)]


def documents_of_audit(lake: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted((lake / "_fieldcrypt" / "audit").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def test_a_lake_in_a_missing_bucket_is_a_named_error_not_a_traceback(
    tmp_path: Path, moto: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(["--keystore", str(tmp_path / "keystore.json"), "key", "init"])
    capsys.readouterr()
    lake = ["--lake", "s3://no-such-bucket/lake", "--s3-endpoint-url", moto, "--region", "us-east-1"]
    lake += ["--keystore", str(tmp_path / "keystore.json")]
    for command in (["protect", "users"], ["enable", "users.email", "--mask", "email", ACK_FLAG], ["status", "users"]):
        with pytest.raises(SystemExit) as exited:
            main([*lake, *command])
        assert exited.value.code == 2, command
        err = capsys.readouterr().err
        assert err.startswith("fieldcrypt: error: ") and "no-such-bucket" in err, (command, err)
        assert "Traceback" not in err


def test_verify_lists_each_partitions_files_once(
    cli: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One listing per partition (one request on S3), not one for the check and another for the file count."""
    from fieldcrypt import Workspace

    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    assert run([*cli, "protect", "users"]) == 0
    listings: list[tuple[str, str | None]] = []
    listed = Workspace.files

    def counting(self: Workspace, dataset: str, partition: str | None) -> list[str]:
        listings.append((dataset, partition))
        return listed(self, dataset, partition)

    monkeypatch.setattr(Workspace, "files", counting)
    capsys.readouterr()

    assert run([*cli, "--json", "verify", "users", "--partition", PARTITION]) == 0
    rows, _ = json_lines(capsys.readouterr().out)

    assert listings == [("users", PARTITION)]
    assert rows[0]["files"] == 1


def _protected_lake_with(cli: list[str], tmp_path: Path, tamper: Any) -> int:
    """Enable and protect users.email, then `tamper(table, row)` on the file's first protected row,
    written back as an outside writer would; the row's number."""
    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    assert run([*cli, "protect", "users"]) == 0
    path = tmp_path / "lake" / snapshot_path("users", PARTITION)
    table = pq.read_table(path)
    row = next(i for i, cell in enumerate(table.column("email__fc_ct").to_pylist()) if cell)
    tamper(table, row, path)
    return row


def _without_ciphertext(table: Any, row: int, path: Path) -> None:
    import pyarrow as pa

    for name in ("email__fc_ct", "email__fc_dek"):
        at = table.schema.get_field_index(name)
        values = table.column(at).combine_chunks()
        values = values.dictionary_decode() if pa.types.is_dictionary(values.type) else values
        cells = values.to_pylist()
        cells[row] = None
        new = pa.array(cells, values.type)
        if pa.types.is_dictionary(table.schema.field(at).type):
            new = new.dictionary_encode()
        table = table.set_column(at, table.schema.field(at), new)
    pq.write_table(table, path)


def test_verify_of_a_row_whose_ciphertext_was_removed_exits_non_zero_naming_the_row(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = plaintext(tmp_path / "lake")
    row = _protected_lake_with(cli, tmp_path, _without_ciphertext)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([*cli, "verify", "users"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert f"part-0.parquet row group 0 row {row}: users.email holds a value but no ciphertext" in captured.err
    assert "all authentic" not in captured.out
    assert not [s for s in secrets if s in captured.out + captured.err]


def test_reveal_of_a_row_whose_ciphertext_was_removed_prints_no_value(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = _protected_lake_with(cli, tmp_path, _without_ciphertext)
    key = pq.read_table(tmp_path / "lake" / snapshot_path("users", PARTITION)).column("user_id")[row].as_py()
    capsys.readouterr()
    args = ["reveal", "users", "--partition", PARTITION, "--attribute", "email", "--reason", "T-1"]
    with pytest.raises(SystemExit) as exited:
        main([*cli, *args, "--row-key", str(key)])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # the mask is not printed as if it were the address
    assert "its ciphertext was removed" in captured.err


def test_verify_of_a_row_copied_into_another_file_of_the_partition_exits_non_zero(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = _protected_lake_with(cli, tmp_path, lambda table, row, path: pq.write_table(table, path))
    path = tmp_path / "lake" / snapshot_path("users", PARTITION)
    pq.write_table(pq.read_table(path).take([row]), path.with_name("part-1.parquet"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([*cli, "verify", "users"])
    assert exited.value.code == 2
    # The helper rewrote part-0 with pyarrow and the copy carries its `ledgered` mark: the ledger refuses first.
    err = capsys.readouterr().err
    assert "LedgerError:" in err and "_fieldcrypt/ledger/users/2030-01-01.json" in err


def test_accept_rewrite_records_a_compacted_partition_and_verify_passes_again(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    run([*cli, "protect", "users"])
    old = tmp_path / "lake" / snapshot_path("users", PARTITION)
    pq.write_table(pq.read_table(old), old.with_name("part-compacted.parquet"))  # an engine's compaction
    old.unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*cli, "verify", "users"])
    assert "but not in the lake: a protected file was deleted or moved" in capsys.readouterr().err
    args = ["accept-rewrite", "users", "--partition", PARTITION, "--reason", "JOB-7"]
    assert run([*cli, *args]) == 0
    assert "rewrite accepted; 1 files verified and recorded" in capsys.readouterr().out
    assert run([*cli, "verify", "users"]) == 0


def test_audit_filters_by_operation_dataset_actor_and_time(cli: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    run([*cli, "protect", "users"])
    capsys.readouterr()
    assert run([*cli, "audit", "--operation", "encrypt", "--dataset", "users"]) == 0
    encrypts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert encrypts and {(e["operation"], e["dataset"]) for e in encrypts} == {("encrypt", "users")}
    actor = encrypts[0]["actor"]
    assert run([*cli, "audit", "--actor", actor, "--operation", "enable"]) == 0
    assert [json.loads(line)["operation"] for line in capsys.readouterr().out.splitlines()] == ["enable"]
    assert run([*cli, "audit", "--since", "2999-01-01T00:00"]) == 0
    assert capsys.readouterr().out == ""
    assert run([*cli, "audit", "--until", "2000-01-01"]) == 0
    assert capsys.readouterr().out == ""


def test_audit_summary_counts_records_and_cells_per_operation(
    cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run([*cli, "enable", "users.email", "--mask", "email", ACK_FLAG])
    run([*cli, "protect", "users"])
    capsys.readouterr()
    assert run([*cli, "audit", "--operation", "encrypt"]) == 0
    cells = sum(json.loads(line)["cells"] for line in capsys.readouterr().out.splitlines())
    assert run([*cli, "--json", "audit", "--summary"]) == 0
    rows, summary = json_lines(capsys.readouterr().out)
    by_operation = {row["operation"]: row for row in rows}
    assert by_operation["encrypt"]["cells"] == cells > 0
    assert by_operation["enable"]["records"] == 1
    assert summary["records"] == sum(row["records"] for row in rows)


def test_audit_refuses_a_time_that_is_not_iso_8601(cli: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*cli, "audit", "--since", "yesterday"])
    assert exited.value.code == 2
    assert "'yesterday' is not an ISO 8601 time" in capsys.readouterr().err
