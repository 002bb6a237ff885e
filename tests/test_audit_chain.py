"""The tamper-evident audit log (issue 17 item 3): chained, MAC'd records; `fieldcrypt audit --verify`
names the first edited, missing or truncated record; every open checks the newest one."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from demo.sample_data import land_sample_lake
from fieldcrypt import Workspace
from fieldcrypt.cli import ACK_FLAG, main, run
from fieldcrypt.errors import IntegrityError
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.lake.audit import AUDIT_DIR, AUDIT_KEY_PATH, CHAIN_DIR
from fieldcrypt.lake.store import LakeStore
from tests.catalogs import write_catalog

PARTITION = "2030-01-01"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A workspace whose lake holds one protected day, so its audit log has a few dozen records."""
    catalog = write_catalog(tmp_path / "fieldcrypt.yaml", "acme", "lake", {"provider": "local", "keystore": "ks.json"})
    monkeypatch.setenv("FIELDCRYPT_CATALOG", str(catalog))
    flags = ["--workspace", "acme", "--lake", str(tmp_path / "lake"), "--keystore", str(tmp_path / "ks.json")]
    assert run([*flags, "key", "init"]) == 0
    land_sample_lake(LakeStore.from_uri(str(tmp_path / "lake")), date.fromisoformat(PARTITION), 1, 60, 120)
    assert run([*flags, "enable", "users.email", "--mask", "email", ACK_FLAG]) == 0
    assert run([*flags, "verify", "users"]) == 0
    return flags


def audit_file(tmp_path: Path) -> Path:
    (found,) = sorted((tmp_path / "lake" / AUDIT_DIR).glob("*.jsonl"))
    return found


def failure(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one-line error of a CLI call that must fail (exit 2, no traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err, err
    return err


def edit_line(path: Path, number: int, change: Callable[[dict[str, Any]], None]) -> None:
    lines = path.read_bytes().split(b"\n")
    record = json.loads(lines[number - 1])
    change(record)
    lines[number - 1] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines))


def test_untouched_audit_log_verifies(cli: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run([*cli, "audit", "--verify"]) == 0
    assert "chained records authentic" in capsys.readouterr().out


def test_every_record_carries_a_sequence_number_the_previous_hash_and_a_mac(cli: list[str], tmp_path: Path) -> None:
    records = [json.loads(line) for line in audit_file(tmp_path).read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert records[0]["operation"] == "audit_chain_start"
    assert all({"prev", "mac"} <= set(r) for r in records)


def test_edited_record_is_named_by_verify(cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = audit_file(tmp_path)
    edit_line(path, 5, lambda record: record.update(actor="someone-else"))
    err = failure([*cli, "audit", "--verify"], capsys)
    assert f"{path} line 5 (seq 5) fails authentication: the record was edited" in err


def test_deleted_record_is_named_as_missing_by_verify(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = audit_file(tmp_path)
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:6] + lines[7:]))
    err = failure([*cli, "audit", "--verify"], capsys)
    assert f"records 7 are missing before {path} line 7 (seq 8): deleted" in err


def test_record_inserted_without_chain_fields_is_named_by_verify(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = audit_file(tmp_path)
    lines = path.read_bytes().split(b"\n")
    forged = json.dumps({"operation": "enable", "actor": "cli:nobody", "time": "2030-01-01T00:00:00Z"}).encode()
    path.write_bytes(b"\n".join(lines[:3] + [forged] + lines[3:]))
    err = failure([*cli, "audit", "--verify"], capsys)
    assert f"{path} line 4 has no chain fields but follows chained record 3" in err


@pytest.mark.parametrize("command", [["audit"], ["audit", "--unconfirmed"], ["audit", "--verify"]])
def test_truncated_record_is_a_named_error_not_a_traceback(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    path = audit_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-25])  # the newest record cut mid-line
    lines = data.count(b"\n")
    err = failure([*cli, *command], capsys)
    assert f"{path} line {lines} is truncated" in err


def test_non_json_line_in_the_middle_is_named_not_a_traceback(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = audit_file(tmp_path)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:40]
    path.write_bytes(b"\n".join(lines))
    err = failure([*cli, "audit"], capsys)
    assert f"{path} line 3 is not a complete JSON record (truncated or edited)" in err


def test_deleted_audit_log_is_refused_at_the_next_open(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(tmp_path / "lake" / AUDIT_DIR)
    err = failure([*cli, "status", "users"], capsys)
    assert "holds no chained record: the audit log was deleted" in err
    assert not (tmp_path / "lake" / AUDIT_DIR).exists() or not list((tmp_path / "lake" / AUDIT_DIR).glob("*.jsonl"))


def test_edited_newest_record_is_refused_at_the_next_open(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = audit_file(tmp_path)
    lines = path.read_bytes().rstrip(b"\n").split(b"\n")
    edit_line(path, len(lines), lambda record: record.update(cells=record.get("cells", 0) + 1))
    path.write_bytes(path.read_bytes() + b"\n")
    before = path.read_bytes()
    err = failure([*cli, "protect", "users"], capsys)
    assert f"{path} (last line) (seq {len(lines)}) fails authentication" in err
    assert path.read_bytes() == before  # nothing chained onto the forged record


def test_records_written_before_the_chain_are_kept_as_a_sealed_legacy_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = write_catalog(tmp_path / "fieldcrypt.yaml", "acme", "lake", {"provider": "local", "keystore": "ks.json"})
    monkeypatch.setenv("FIELDCRYPT_CATALOG", str(catalog))
    flags = ["--workspace", "acme", "--lake", str(tmp_path / "lake"), "--keystore", str(tmp_path / "ks.json")]
    assert run([*flags, "key", "init"]) == 0
    land_sample_lake(LakeStore.from_uri(str(tmp_path / "lake")), date.fromisoformat(PARTITION), 1, 60, 120)
    legacy = tmp_path / "lake" / AUDIT_DIR / "2020-01-01.jsonl"  # as an older fieldcrypt wrote it
    legacy.parent.mkdir(parents=True)
    old = {"actor": "cli:ops", "host": "h", "operation": "enable", "time": "2020-01-01T00:00:00.000000Z"}
    legacy.write_text(json.dumps(old, sort_keys=True) + "\n")
    assert run([*flags, "enable", "users.email", "--mask", "email", ACK_FLAG]) == 0
    capsys.readouterr()
    assert run([*flags, "audit", "--verify"]) == 0
    assert "(1 earlier records without chain fields before them)" in capsys.readouterr().out
    legacy.write_text(json.dumps({**old, "actor": "cli:someone-else"}, sort_keys=True) + "\n")
    err = failure([*flags, "audit", "--verify"], capsys)
    assert "does not chain to what precedes it: the legacy records before the chain were edited" in err


def test_concurrent_writers_keep_one_unbroken_chain(
    make_local_workspace: Callable[..., Workspace],
) -> None:
    """Four workspaces (as four processes would) append at once: every record gets its own sequence number."""
    writers = [make_local_workspace(actor=f"writer-{n}") for n in range(4)]
    writers[0].audit.record("describe_key", detail="first")

    def write(workspace: Workspace) -> None:
        for n in range(25):
            workspace.audit.record("describe_key", detail=f"{n}")

    threads = [threading.Thread(target=write, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = writers[0].audit.verify()
    assert report.head is not None and report.records == report.head.seq
    assert sum(e["actor"].startswith("writer-") for e in writers[0].audit.events()) >= 101


def test_rotation_rewraps_the_audit_key_and_the_chain_still_verifies(local_workspace: Workspace) -> None:
    local_workspace.audit.record("describe_key")
    before = local_workspace.audit.stored_key()
    assert before is not None
    local_workspace.start_rotation()
    local_workspace.complete_rotation()
    after = local_workspace.audit.stored_key()
    assert after is not None
    assert WrappedKey.from_bytes(after).master_key_ref != WrappedKey.from_bytes(before).master_key_ref
    assert local_workspace.audit.verify().records > 0


def test_head_is_the_newest_records_sequence_number_and_digest(local_workspace: Workspace) -> None:
    local_workspace.audit.record("describe_key")
    head = local_workspace.audit.head()
    report = local_workspace.audit.verify()
    assert head is not None and report.head is not None
    assert head.seq <= report.head.seq  # verify's own key use may follow
    local_workspace.audit.record("describe_key")
    newer = local_workspace.audit.head()
    assert newer is not None and newer.seq > head.seq and newer.digest != head.digest


def test_missing_record_on_s3_is_named_by_verify(s3_chain: tuple[Workspace, Any, str]) -> None:
    workspace, s3, bucket = s3_chain
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"prefix/{CHAIN_DIR}/")["Contents"])
    assert len(keys) > 4
    s3.delete_object(Bucket=bucket, Key=keys[3])
    with pytest.raises(IntegrityError, match="records 4 are missing before .*000000000005.jsonl"):
        workspace.audit.verify()


def test_deleted_audit_log_on_s3_is_refused_at_the_next_open(s3_chain: tuple[Workspace, Any, str]) -> None:
    workspace, s3, bucket = s3_chain
    for entry in s3.list_objects_v2(Bucket=bucket, Prefix=f"prefix/{AUDIT_DIR}/")["Contents"]:
        s3.delete_object(Bucket=bucket, Key=entry["Key"])
    assert s3.head_object(Bucket=bucket, Key=f"prefix/{AUDIT_KEY_PATH}")
    reopened = Workspace(workspace.config, actor="next-run")
    with pytest.raises(IntegrityError, match="the audit log was deleted"):
        reopened.status("users", "2026-11-01")


@pytest.fixture
def s3(moto: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=moto, region_name="us-east-1")


@pytest.fixture
def s3_chain(moto: str, s3_bucket: str, make_kms_key: Callable[..., str], s3: Any) -> tuple[Workspace, Any, str]:
    from fieldcrypt import KeyConfig, WorkspaceConfig
    from tests.catalogs import TEST_DATASETS

    key = KeyConfig(provider="aws-kms", kms_key=make_kms_key(), kms_region="us-east-1", kms_endpoint_url=moto)
    config = WorkspaceConfig(
        "acme", f"s3://{s3_bucket}/prefix", key, s3_endpoint_url=moto, s3_region="us-east-1", datasets=TEST_DATASETS
    )
    workspace = Workspace(config, actor="run-1")
    for n in range(3):
        workspace.audit.record("describe_key", detail=str(n))
    workspace.audit.verify()
    return workspace, s3, s3_bucket


def test_protection_asset_run_stops_at_an_edited_newest_audit_record(tmp_path: Path) -> None:
    """Through Dagster: the protection asset's first key use checks the audit head and fails the run by name."""
    from dagster_support import enable, land, local_fieldcrypt, make_keystore, materialize_partition, past_day

    fieldcrypt = local_fieldcrypt(tmp_path / "lake", make_keystore(tmp_path))
    day = past_day(3)
    land(fieldcrypt, day, timedelta(0), users=20, events=20)
    enable(fieldcrypt, ("users.email", "email"))
    path = max((tmp_path / "lake" / AUDIT_DIR).glob("*.jsonl"))
    lines = path.read_bytes().rstrip(b"\n").split(b"\n")
    edit_line(path, len(lines), lambda record: record.update(actor="someone-else"))
    result = materialize_partition(fieldcrypt, day.isoformat(), raise_on_error=False)
    assert not result.success
    messages = " ".join(
        str(event.event_specific_data.error.message)  # type: ignore[union-attr]
        for event in result.all_events
        if event.is_step_failure
    )
    assert f"{path} (last line) (seq {len(lines)}) fails authentication" in messages


def test_records_follow_the_head_into_a_later_named_day_file(local_workspace: Workspace, tmp_path: Path) -> None:
    """A head in a file named after today (another host's clock ahead) is chained onto in that file, not in an
    earlier-named one that verify would read first."""
    local_workspace.audit.record("describe_key")
    (today,) = (tmp_path / "lake" / AUDIT_DIR).glob("*.jsonl")
    today.rename(today.with_name("2099-01-01.jsonl"))
    fresh = Workspace(local_workspace.config, actor="next")
    fresh.audit.record("describe_key", detail="after the head")
    assert [p.name for p in (tmp_path / "lake" / AUDIT_DIR).glob("*.jsonl")] == ["2099-01-01.jsonl"]
    assert fresh.audit.verify().records > 0


def test_deleted_audit_key_file_is_restored_from_the_first_record(local_workspace: Workspace, tmp_path: Path) -> None:
    """audit_key.json is a copy (for rotation); record 1 carries the key's wrapping, so a crash between the two
    writes, or a deleted copy, does not lose the chain."""
    local_workspace.audit.record("describe_key")
    (tmp_path / "lake" / AUDIT_KEY_PATH).unlink()
    fresh = Workspace(local_workspace.config, actor="next")
    fresh.audit.record("describe_key", detail="after")
    assert (tmp_path / "lake" / AUDIT_KEY_PATH).exists()
    assert fresh.audit.verify().records > 2


def test_audit_log_without_its_first_record_or_key_file_is_refused(local_workspace: Workspace, tmp_path: Path) -> None:
    local_workspace.audit.record("describe_key")
    (tmp_path / "lake" / AUDIT_KEY_PATH).unlink()
    (path,) = (tmp_path / "lake" / AUDIT_DIR).glob("*.jsonl")
    path.write_bytes(b"\n".join(path.read_bytes().split(b"\n")[1:]))
    with pytest.raises(IntegrityError, match="their first record is gone"):
        Workspace(local_workspace.config, actor="next").audit.record("describe_key")


def test_first_look_at_the_head_on_s3_starts_from_the_hint(
    s3_chain: tuple[Workspace, Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh process finds the newest record by listing from the hint; a bogus hint costs a full listing only."""
    import fieldcrypt.lake.audit as audit_module

    workspace, s3, bucket = s3_chain
    monkeypatch.setattr(audit_module, "HINT_EVERY", 2)  # a hint every 2 records instead of 256, to see it used
    for n in range(4):
        workspace.audit.record("describe_key", detail=f"more {n}")
    hint = s3.get_object(Bucket=bucket, Key=f"prefix/{audit_module.HINT_PATH}")["Body"].read().decode()
    assert hint.startswith(f"{CHAIN_DIR}/")
    newest = workspace.audit.verify().head
    listed_after: list[str | None] = []
    real = LakeStore.list_keys_after

    def recorded(store: LakeStore, rel_dir: str, after: str | None) -> list[str]:  # passes through
        listed_after.append(after)
        return real(store, rel_dir, after)

    monkeypatch.setattr(LakeStore, "list_keys_after", recorded)
    fresh = Workspace(workspace.config, actor="next")
    assert fresh.audit.head() is not None
    assert listed_after[0] == hint and None not in listed_after
    s3.put_object(Bucket=bucket, Key=f"prefix/{audit_module.HINT_PATH}", Body=f"{CHAIN_DIR}/999999999999.jsonl")
    bogus = Workspace(workspace.config, actor="other")
    head = bogus.audit.head()
    assert newest is not None and head is not None and head.seq > newest.seq  # opening recorded its key uses


def test_newest_records_cut_off_after_a_verification_are_named_by_the_next(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*cli, "audit", "--verify"]) == 0  # pins the head in the lake's binding
    pinned = json.loads(audit_file(tmp_path).read_text().splitlines()[-1])["seq"]
    path = audit_file(tmp_path)
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[: pinned - 5]) + b"\n")  # whole records cut off: what is left chains
    err = failure([*cli, "audit", "--verify"], capsys)
    assert f"but this lake pinned seq {pinned} when it was last verified: its newest records were cut off" in err or (
        f"(seq {pinned}) is not the record this lake pinned at that position" in err
    )


def test_a_verification_pins_the_head_so_the_next_one_checks_it(
    cli: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*cli, "audit", "--verify"]) == 0
    assert "pinned in the lake's binding" in capsys.readouterr().out
    binding = json.loads((tmp_path / "lake" / "_fieldcrypt" / "master_key.json").read_text())
    assert binding["seen"]["audit"]["seq"] > 1
    assert run([*cli, "audit", "--verify"]) == 0
