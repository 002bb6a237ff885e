"""Erasure requests: every cell of the erased keys leaves the lake, nothing else changes, and the request is kept
(hashed keys only), shown by status, audited, applied to snapshots landed later, and resumable."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from demo.sample_data import events_table, snapshot_path, users_table, write_snapshot
from fieldcrypt import ConcurrentUpdateError, InputError, IntegrityError, Workspace
from fieldcrypt.cli import run
from fieldcrypt.engine import erase as erase_module
from fieldcrypt.lake.parquet_io import chunk_span
from fieldcrypt.policy.erasure import ERASURE_DIR
from tests.catalogs import write_catalog
from tests.dagster_support import enable, land, local_fieldcrypt, make_keystore, node, past_day
from tests.plaintext_scan import scan
from tests.policy_support import backdate_policy

DAYS = [date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3)]
ENABLED_AT = datetime(2026, 11, 2, 12, tzinfo=UTC)  # day 1: historical plaintext; day 2: both; day 3: protected
USERS = 200
ERASED = [5, 42, 117, 199]
CHANGED = {"email", "email__fc_ct", "email__fc_dek", "email__fc_bidx", "phone", "phone__fc_ct", "phone__fc_dek"}


def _land(workspace: Workspace, day: date) -> pa.Table:
    table = users_table(day, USERS)
    write_snapshot(workspace.store, "users", day, table, row_group_size=64)  # several row groups per file
    return table


@pytest.fixture
def lake(make_local_workspace: Callable[..., Workspace]) -> tuple[Workspace, dict[date, pa.Table]]:
    """Users of three days, email (blind-indexed) and phone enabled mid-way, every partition protected."""
    workspace = make_local_workspace()
    landed = {day: _land(workspace, day) for day in DAYS}
    workspace.enable("users.email", "email", acknowledge_irreversible=True, blind_index=True)
    workspace.enable("users.phone", "last4", acknowledge_irreversible=True)
    backdate_policy(workspace, ENABLED_AT)
    for day in DAYS:
        workspace.protect("users", day.isoformat())
    return workspace, landed


def _keys_file(tmp_path: Path, keys: list[Any], name: str = "keys.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{key}\n" for key in keys))
    return path


def _cells(table: pa.Table, ids: list[int], *, erased: bool) -> set[str]:
    """The emails and phones of the rows whose user id is (or, erased=False, is not) among `ids`."""
    chosen = pc.is_in(table.column("user_id"), value_set=pa.array(ids, pa.int64()))
    rows = table.filter(chosen if erased else pc.invert(chosen))
    return {v for column in ("email", "phone") for v in rows.column(column).to_pylist() if v}


def _file(workspace: Workspace, day: date) -> Path:
    return Path(workspace.store.full_path(snapshot_path("users", day)))


def _chunks(path: Path) -> dict[tuple[int, str], bytes]:
    """Each column chunk's stored bytes, by (row group, column)."""
    data = path.read_bytes()
    metadata = pq.ParquetFile(path).metadata
    chunks = {}
    for group in range(metadata.num_row_groups):
        for index in range(metadata.num_columns):
            column = metadata.row_group(group).column(index)
            start, end = chunk_span(column)
            chunks[(group, column.path_in_schema)] = data[start:end]
    return chunks


def test_erasure_leaves_no_cell_of_the_erased_keys_anywhere_in_the_lake(
    lake: tuple[Workspace, dict[date, pa.Table]], tmp_path: Path
) -> None:
    workspace, landed = lake
    erased = set().union(*(_cells(table, ERASED, erased=True) for table in landed.values()))
    # Masks that belong to erased rows only (an email mask shows just the domain, shared by many rows).
    kept_masks = set(pq.read_table(_file(workspace, DAYS[2])).column("phone").drop_null().to_pylist())
    erased_masks = {f"****{phone[-4:]}" for phone in erased if phone.startswith("+")} - kept_masks
    kept_history = _cells(landed[DAYS[0]], ERASED, erased=False)  # day 1: historical plaintext of the others
    assert scan(Path(workspace.config.lake_uri), erased | erased_masks)  # the scan finds them before

    request, report = workspace.erase("users", _keys_file(tmp_path, ERASED), "GDPR-1234")

    assert report.files_rewritten == len(DAYS) and report.rows_matched == len(ERASED) * len(DAYS)
    assert request.done and request.state() == "done"
    assert scan(Path(workspace.config.lake_uri), erased | erased_masks) == []
    found = {hit.file for hit in scan(Path(workspace.config.lake_uri), kept_history)}
    assert snapshot_path("users", DAYS[0]) in found  # the scan really reads: other rows' history is still there
    for day in DAYS:
        rows = pq.read_table(_file(workspace, day)).filter(
            pc.is_in(pc.field("user_id"), value_set=pa.array(ERASED, pa.int64()))
        )
        assert rows.num_rows == len(ERASED)
        for column in CHANGED:
            assert rows.column(column).null_count == len(ERASED), column


def test_every_other_column_chunk_is_byte_identical_and_other_rows_keep_their_cells(
    lake: tuple[Workspace, dict[date, pa.Table]], tmp_path: Path
) -> None:
    workspace, _ = lake
    before = {day: (_chunks(_file(workspace, day)), pq.read_table(_file(workspace, day))) for day in DAYS}

    workspace.erase("users", _keys_file(tmp_path, ERASED), "GDPR-1234")

    for day in DAYS:
        chunks, table = before[day]
        after_chunks = _chunks(_file(workspace, day))
        assert after_chunks.keys() == chunks.keys()
        for (group, column), stored in chunks.items():
            if column.split(".")[0] not in CHANGED:
                assert after_chunks[(group, column)] == stored, (day, group, column)
        after = pq.read_table(_file(workspace, day))
        kept = pc.invert(pc.is_in(table.column("user_id"), value_set=pa.array(ERASED, pa.int64())))
        for column in CHANGED:
            assert after.filter(kept).column(column).equals(table.filter(kept).column(column)), column


def test_verify_passes_and_the_audit_shows_the_request_and_each_file_without_keys(
    lake: tuple[Workspace, dict[date, pa.Table]], tmp_path: Path
) -> None:
    workspace, landed = lake
    request, _ = workspace.erase("users", _keys_file(tmp_path, ERASED), "GDPR-1234")

    for day in DAYS:
        workspace.verify("users", day.isoformat())
    events = list(workspace.audit.events())
    (recorded,) = [e for e in events if e["operation"] == "erasure_request"]
    assert recorded["reason"] == "GDPR-1234" and request.request_id in recorded["detail"]
    assert "4 keys" in recorded["detail"]
    files = [e for e in events if e["operation"] == "erase"]
    assert len(files) == len(DAYS) and all(request.request_id in e["detail"] for e in files)
    intents = {e["intent"] for e in events if e["operation"] == "erase_intent"}
    assert intents == {e["intent"] for e in files}  # every replace confirmed
    assert [e["operation"] for e in events].count("erasure_done") == 1
    assert workspace.verify_audit().records > 0
    erased = set().union(*(_cells(table, ERASED, erased=True) for table in landed.values()))
    assert scan(Path(workspace.config.lake_uri) / "_fieldcrypt", erased) == []


def test_a_rerun_rewrites_nothing_and_reuses_the_request(
    lake: tuple[Workspace, dict[date, pa.Table]], tmp_path: Path
) -> None:
    workspace, _ = lake
    keys = _keys_file(tmp_path, ERASED)
    first, _ = workspace.erase("users", keys, "GDPR-1234")
    versions = {day: workspace.store.version(snapshot_path("users", day)) for day in DAYS}

    again, report = workspace.erase("users", keys, "GDPR-1234")

    assert again.request_id == first.request_id and report.files_rewritten == 0 and report.cells == 0
    assert {day: workspace.store.version(snapshot_path("users", day)) for day in DAYS} == versions
    assert workspace.erase_partition("users", DAYS[0].isoformat()).files_rewritten == 0  # by the tags, too


def test_a_conflict_mid_run_leaves_the_request_open_and_a_rerun_finishes_it(
    lake: tuple[Workspace, dict[date, pa.Table]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace, landed = lake
    real = erase_module.rewrite_file
    second = snapshot_path("users", DAYS[1])

    def concurrent_writer(job: Any, original: Any, *args: Any, **kwargs: Any) -> Any:
        # Fault injection (no server produces it on cue): another writer touches the file between the version
        # read and the commit; the engine's compare-and-swap must refuse the replace.
        if job.rel == second:
            os.utime(workspace.store.full_path(second), ns=(1, 1))
        return real(job, original, *args, **kwargs)

    monkeypatch.setattr(erase_module, "rewrite_file", concurrent_writer)
    with pytest.raises(ConcurrentUpdateError, match="1 partitions of users failed"):
        workspace.erase("users", _keys_file(tmp_path, ERASED), "GDPR-1234")
    monkeypatch.undo()

    (request,) = workspace.erasure_requests("users")
    assert request.state() == "open" and request.partitions_done == 2 and DAYS[1].isoformat() not in request.progress
    assert _cells(landed[DAYS[1]], ERASED, erased=True) & set(
        pq.read_table(_file(workspace, DAYS[1])).column("phone").drop_null().to_pylist()
        + pq.read_table(_file(workspace, DAYS[1])).column("email").drop_null().to_pylist()
    )  # the refused file still holds them (day 2 has historical plaintext)

    report = workspace.erase_partition("users", DAYS[1].isoformat())  # what a backfill of the partition runs

    assert report.files_rewritten == 1
    (request,) = workspace.erasure_requests("users")
    assert request.state() == "done"
    erased = set().union(*(_cells(table, ERASED, erased=True) for table in landed.values()))
    assert scan(Path(workspace.config.lake_uri), erased) == []
    workspace.verify("users", DAYS[1].isoformat())


def test_a_snapshot_landed_later_with_an_erased_key_is_erased_by_the_next_protect_run(
    lake: tuple[Workspace, dict[date, pa.Table]], tmp_path: Path
) -> None:
    workspace, _ = lake
    request, _ = workspace.erase("users", _keys_file(tmp_path, ERASED), "GDPR-1234")
    late = DAYS[-1] + timedelta(days=1)
    table = _land(workspace, late)  # the upstream job replays the erased users
    erased = _cells(table, ERASED, erased=True)
    assert scan(Path(workspace.config.lake_uri), erased)

    report = workspace.protect("users", late.isoformat())

    assert report.erasure_files_rewritten == 1 and report.erasure_cells == 2 * len(ERASED) - 1  # user 5 has no phone
    assert scan(Path(workspace.config.lake_uri), erased) == []
    assert scan(Path(workspace.config.lake_uri), _cells(table, ERASED, erased=False)) == []  # the others encrypted
    counts = report.attributes["users.email"]
    assert counts.null_values == table.column("email").null_count + len(ERASED)  # erased before encrypting
    assert counts.newly_encrypted == USERS - counts.null_values
    workspace.verify("users", late.isoformat())
    (recorded,) = workspace.erasure_requests("users")
    assert recorded.progress[late.isoformat()].cells_erased == 2 * len(ERASED) - 1
    assert recorded.done and late.isoformat() not in recorded.partitions  # landed after the request
    (active,) = workspace.erasures.active("users", now=request.expires_at - timedelta(seconds=1))
    assert active.request_id == recorded.request_id
    # Once expired, protection runs no longer apply it (it leaves the index for good).
    assert workspace.erasures.active("users", now=request.expires_at + timedelta(seconds=1)) == []
    assert workspace.erasures.active("users", now=request.expires_at - timedelta(seconds=1)) == []


def test_files_whose_key_statistics_exclude_every_key_are_skipped_by_their_footer(
    lake: tuple[Workspace, dict[date, pa.Table]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace, _ = lake
    read: list[str] = []
    monkeypatch.setattr(erase_module, "_scan", lambda parquet, where, *a: read.append(where) or False)

    _, report = workspace.erase("users", _keys_file(tmp_path, [USERS + 1, 10 * USERS]), "GDPR-1235")

    assert report.files_skipped_by_statistics == len(DAYS) and report.files_rewritten == 0
    assert read == []  # no row group of any file was read


def test_the_request_record_holds_keyed_hashes_only(
    make_local_workspace: Callable[..., Workspace], tmp_path: Path
) -> None:
    workspace = make_local_workspace()
    table = events_table(DAYS[0], 300)
    write_snapshot(workspace.store, "events", DAYS[0], table)
    workspace.enable("events.properties.email", "email", acknowledge_irreversible=True)
    backdate_policy(workspace)
    workspace.protect("events", DAYS[0].isoformat())
    ids = table.column("event_id").to_pylist()[10:20]

    request, report = workspace.erase("events", _keys_file(tmp_path, ids), "CCPA-77")

    raw = b"".join(p.read_bytes() for p in (Path(workspace.config.lake_uri) / ERASURE_DIR).rglob("*.json"))
    assert raw and not any(key.encode() in raw for key in ids)
    assert scan(Path(workspace.config.lake_uri) / "_fieldcrypt", ids) == []  # request, ledger and audit
    (request_file,) = (Path(workspace.config.lake_uri) / ERASURE_DIR / "events").glob("*.json")
    doc = json.loads(request_file.read_text())
    assert len(doc["keys"]) == len(ids) and doc["key_hash"].startswith("hmac-sha256")
    tags = {workspace.erasures.key().tag(key.encode()) for key in ids}
    assert request.tags == tags  # keyed: the same key under another lake's key gives another tag
    after = pq.read_table(workspace.store.full_path(snapshot_path("events", DAYS[0])))
    rows = after.filter(pc.is_in(pc.field("event_id"), value_set=pa.array(ids)))
    properties = rows.column("properties").combine_chunks()
    assert pc.struct_field(properties, "email").null_count == len(ids)
    assert rows.column("properties__email__fc_ct").null_count == len(ids)
    before = table.filter(pc.is_in(pc.field("event_id"), value_set=pa.array(ids))).column("properties")
    for field in ("phone", "campaign"):  # the struct's other fields, and its validity, are kept
        assert pc.struct_field(properties, field).equals(pc.struct_field(before.combine_chunks(), field))
    assert properties.is_valid().equals(before.combine_chunks().is_valid())
    assert report.rows_matched == len(ids)
    workspace.verify("events", DAYS[0].isoformat())


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("keys.txt", "5\nabc\n", "line 2: the user_id given is not of type int64"),
        ("keys.txt", "5\n\n7\n", "line 2 is empty"),
        ("keys.txt", "", "holds no key"),
        ("keys.csv", "id\n5\n", r"header \(line 1\) lacks user_id; names id, not a primary-key column"),
        ("keys.csv", "user_id\n5\n6,7\n", "line 3 has 2 fields; the header names 1"),
        ("keys.csv", 'user_id\n5\n""\n', "line 3: user_id is empty"),
        ("keys.txt", "99999999999999999999\n", "line 1: the user_id given is not of type int64"),
    ],
)
def test_a_malformed_keys_file_is_refused_by_line_without_its_value(
    lake: tuple[Workspace, dict[date, pa.Table]], tmp_path: Path, name: str, content: str, message: str
) -> None:
    workspace, _ = lake
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=message) as refused:
        workspace.erase("users", path, "GDPR-1")
    assert "abc" not in str(refused.value) and "99999999999999999999" not in str(refused.value)
    assert workspace.erasure_requests("users") == []  # nothing recorded


def test_composite_keys_come_from_a_csv_with_a_header(
    make_local_workspace: Callable[..., Workspace], enable_at: Callable[..., Any], tmp_path: Path
) -> None:
    from fieldcrypt.policy.policy import DatasetSpec

    workspace = make_local_workspace()
    table = pa.table(
        {
            "tenant": pa.array(["a", "a", "b", "b"]),
            "id": pa.array([1, 2, 1, 2], pa.int64()),
            "email": pa.array(["a1@x.io", "a2@x.io", "b1@x.io", "b2@x.io"]),
            "ingested_at": pa.array([ENABLED_AT + timedelta(minutes=i) for i in range(4)], pa.timestamp("us", "UTC")),
        }
    )
    write_snapshot(workspace.store, "tenants", DAYS[1], table)
    enable_at(workspace, "tenants.email", "email", ENABLED_AT, DatasetSpec("tenants", "ingested_at", ("tenant", "id")))
    workspace.protect("tenants", DAYS[1].isoformat())
    with pytest.raises(InputError, match="header"):
        workspace.erase("tenants", _keys_file(tmp_path, ["a"]), "T-1")  # a composite key needs the CSV form
    keys = tmp_path / "keys.csv"
    keys.write_text("id,tenant\n2,a\n1,b\n")

    workspace.erase("tenants", keys, "T-1")

    after = pq.read_table(workspace.store.full_path(snapshot_path("tenants", DAYS[1])))
    assert after.column("email__fc_ct").is_valid().to_pylist() == [True, False, False, True]
    assert scan(Path(workspace.config.lake_uri), ["a2@x.io", "b1@x.io"]) == []
    workspace.verify("tenants", DAYS[1].isoformat())


def test_cli_erase_then_status_shows_the_request_by_id_and_counts(
    lake: tuple[Workspace, dict[date, pa.Table]],
    tmp_path: Path,
    keystore_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workspace, _ = lake
    key = {"provider": "local", "keystore": str(keystore_path)}
    cli = ["--catalog", str(write_catalog(tmp_path / "fieldcrypt.yaml", "acme", workspace.config.lake_uri, key))]
    keys = _keys_file(tmp_path, ERASED)

    assert run([*cli, "erase", "users", "--keys", str(keys), "--reason", "GDPR-1234"]) == 0

    out = capsys.readouterr().out
    (request,) = workspace.erasure_requests("users")
    assert f"erasure request {request.request_id} (GDPR-1234): done, 4 keys, 3 of 3 partitions done" in out
    assert run([*cli, "status", "users"]) == 0
    assert f"erasure request {request.request_id} (GDPR-1234): done" in capsys.readouterr().out
    assert run([*cli, "--json", "status", "users"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])["summary"]
    (shown,) = summary["erasure_requests"]
    assert shown["request"] == request.request_id and shown["state"] == "done" and shown["cells_erased"] > 0
    assert sorted(shown["progress"]) == [day.isoformat() for day in DAYS]
    assert all(p["files_rewritten"] == 1 and p["cells_erased"] > 0 for p in shown["progress"].values())
    bad = tmp_path / "bad.txt"
    bad.write_text("5\nnot-a-number\n")
    with pytest.raises(InputError, match="line 2: the user_id given is not of type int64"):
        run([*cli, "erase", "users", "--keys", str(bad), "--reason", "GDPR-9"])


def test_dagster_records_the_request_then_a_ranged_backfill_run_erases_every_partition(tmp_path: Path) -> None:
    from assets import build_assets
    from pipelines.erasure import record_erasure_request_job

    fieldcrypt = local_fieldcrypt(tmp_path / "lake", make_keystore(tmp_path))
    enable(fieldcrypt, ("users.email", "email"), ("users.phone", "last4"))
    days = [past_day(4), past_day(3), past_day(2)]
    for day in days:
        # Moved to tomorrow: every row is ingested after the enablement, whatever the time of day the test runs.
        land(fieldcrypt, day, past_day(-1) - day, users=50, events=10)
    workspace = fieldcrypt.workspace("test")
    for day in days:
        workspace.protect("users", day.isoformat())
    keys = _keys_file(tmp_path, [3, 7])
    instance = dg.DagsterInstance.ephemeral()
    assets = build_assets(fieldcrypt.config())
    job = record_erasure_request_job(assets.scope)
    config = {"dataset": "users", "keys_file": str(keys), "reason": "GDPR-77"}

    recorded = job.execute_in_process(
        run_config={"ops": {node("record_erasure"): {"config": config}}},
        resources=fieldcrypt.as_resources(),
        instance=instance,
    )

    assert recorded.success
    (request,) = workspace.erasure_requests("users")
    assert request.state() == "open" and request.keys == 2 and request.reason == "GDPR-77"
    erased = dg.materialize(
        [assets.erased["users"]],
        tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[-1].isoformat(),
        },
        resources=fieldcrypt.as_resources(),
        instance=instance,
    )
    assert erased.success
    materialized = erased.asset_materializations_for_node(node("erased_users"))
    assert sorted(m.partition for m in materialized) == [day.isoformat() for day in days]
    assert all(m.metadata["cells_erased"].value > 0 for m in materialized)
    (request,) = workspace.erasure_requests("users")
    assert request.state() == "done" and request.files_rewritten == len(days)
    for day in days:
        rows = pq.read_table(workspace.store.full_path(snapshot_path("users", day))).filter(
            pc.is_in(pc.field("user_id"), value_set=pa.array([3, 7], pa.int64()))
        )
        assert rows.num_rows == 2
        for column in ("email", "email__fc_ct", "email__fc_dek", "phone", "phone__fc_ct", "phone__fc_dek"):
            assert rows.column(column).null_count == 2, column
        workspace.verify("users", day.isoformat())
    # The keys never reach Dagster's storage: the run config holds the file's path only.
    stored = json.dumps([instance.get_run_by_id(r.run_id).run_config for r in (recorded, erased)], default=str)
    assert str(keys) in stored and "GDPR-77" in stored

    bad = tmp_path / "bad.txt"
    bad.write_text("3\nseven\n")
    refused = job.execute_in_process(
        run_config={"ops": {node("record_erasure"): {"config": {**config, "keys_file": str(bad)}}}},
        resources=fieldcrypt.as_resources(),
        instance=instance,
        raise_on_error=False,
    )
    assert not refused.success
    (failure,) = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "line 2: the user_id given is not of type int64" in str(failure.event_specific_data)
    assert "seven" not in str(failure.event_specific_data)


def test_the_full_rewrite_path_erases_the_same_cells_and_verifies(
    lake: tuple[Workspace, dict[date, pa.Table]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fieldcrypt.engine.rewrite import REWRITE_PATH_ENV

    workspace, landed = lake
    before = {day: pq.read_table(_file(workspace, day)) for day in DAYS}
    monkeypatch.setenv(REWRITE_PATH_ENV, "full")

    _, report = workspace.erase("users", _keys_file(tmp_path, ERASED), "GDPR-1234")

    assert report.rewrite_path == "full" and report.files_rewritten == len(DAYS)
    for day in DAYS:
        after = pq.read_table(_file(workspace, day))
        kept = pc.invert(pc.is_in(before[day].column("user_id"), value_set=pa.array(ERASED, pa.int64())))
        assert after.filter(kept).equals(before[day].filter(kept))
        assert after.filter(pc.invert(kept)).column("email").null_count == len(ERASED)
        workspace.verify("users", day.isoformat())
    erased = set().union(*(_cells(table, ERASED, erased=True) for table in landed.values()))
    assert scan(Path(workspace.config.lake_uri), erased) == []


def test_a_crash_after_the_files_are_replaced_is_finished_by_a_rerun(
    lake: tuple[Workspace, dict[date, pa.Table]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fieldcrypt.policy.erasure import ErasureRequests

    workspace, _ = lake
    keys = _keys_file(tmp_path, ERASED)

    def crash(*args: Any, **kwargs: Any) -> Any:
        # Fault injection: the process dies after the partition's files were replaced, before its progress is
        # recorded (no server produces this on cue).
        raise KeyboardInterrupt

    monkeypatch.setattr(ErasureRequests, "record_progress", crash)
    with pytest.raises(KeyboardInterrupt):
        workspace.erase("users", keys, "GDPR-1234")
    monkeypatch.undo()
    (request,) = workspace.erasure_requests("users")
    assert request.state() == "open" and request.partitions_done == 0
    assert workspace.audit.unconfirmed() == []  # the first file's replace was confirmed before the crash

    again, report = workspace.erase("users", keys, "GDPR-1234")  # the same request, finished

    assert again.request_id == request.request_id and again.state() == "done"
    assert report.files_rewritten == len(DAYS) - 1  # the first partition was already erased
    assert again.progress[DAYS[0].isoformat()].files_rewritten == 0
    for day in DAYS:
        workspace.verify("users", day.isoformat())


def test_a_map_value_by_key_is_erased_inside_the_map(
    make_local_workspace: Callable[..., Workspace], enable_at: Callable[..., Any], tmp_path: Path
) -> None:
    from fieldcrypt.policy.policy import DatasetSpec

    workspace = make_local_workspace()
    properties = [
        [("email", "a@example.com"), ("plan", "pro")],
        [("plan", "free"), ("email", "b@example.com")],
        None,
        [("email", "c@example.com")],
    ]
    times = [ENABLED_AT + timedelta(minutes=i) for i in range(len(properties))]
    table = pa.table(
        {
            "id": pa.array(range(len(properties)), pa.int64()),
            "properties": pa.array(properties, pa.map_(pa.string(), pa.string())),
            "ingested_at": pa.array(times, pa.timestamp("us", "UTC")),
        }
    )
    write_snapshot(workspace.store, "things", DAYS[1], table)
    enable_at(workspace, "things.properties['email']", "email", ENABLED_AT, DatasetSpec("things", "ingested_at", "id"))
    workspace.protect("things", DAYS[1].isoformat())

    workspace.erase("things", _keys_file(tmp_path, [1, 2]), "T-2")

    after = pq.read_table(workspace.store.full_path(snapshot_path("things", DAYS[1])))
    assert after.column("properties").to_pylist() == [
        [("email", "****@example.com"), ("plan", "pro")],
        [("plan", "free"), ("email", None)],
        None,
        [("email", "****@example.com")],
    ]
    assert scan(Path(workspace.config.lake_uri), ["b@example.com"]) == []
    assert list(workspace.reveal("things", DAYS[1].isoformat(), ["properties['email']"]))[0].column(
        "things.properties['email']"
    ).to_pylist() == ["a@example.com", None, None, "c@example.com"]


def test_a_request_whose_keys_were_edited_is_refused_by_name(
    lake: tuple[Workspace, dict[date, pa.Table]], tmp_path: Path
) -> None:
    workspace, _ = lake
    request, _ = workspace.erase("users", _keys_file(tmp_path, ERASED), "GDPR-1234")
    (path,) = (Path(workspace.config.lake_uri) / ERASURE_DIR / "users").glob("*.json")
    doc = json.loads(path.read_text())
    doc["keys"] = doc["keys"][1:]  # someone drops a key so protection stops erasing it
    path.write_text(json.dumps(doc))

    with pytest.raises(IntegrityError, match="is not a valid erasure request, or failed authentication"):
        workspace.protect("users", DAYS[0].isoformat())
    with pytest.raises(IntegrityError, match=f"{request.request_id}.json is not a valid erasure request"):
        workspace.erasure_requests("users")


def test_erasure_on_an_s3_lake_with_a_kms_key(
    moto: str, s3_bucket: str, make_kms_key: Callable[..., str], tmp_path: Path
) -> None:
    import boto3

    from fieldcrypt import KeyConfig, WorkspaceConfig
    from tests.catalogs import TEST_DATASETS

    key = KeyConfig(provider="aws-kms", kms_key=make_kms_key(), kms_region="us-east-1", kms_endpoint_url=moto)
    config = WorkspaceConfig(
        "acme", f"s3://{s3_bucket}/lake", key, s3_endpoint_url=moto, s3_region="us-east-1", datasets=TEST_DATASETS
    )
    workspace = Workspace(config, actor="test")
    table = users_table(DAYS[0], 60)
    write_snapshot(workspace.store, "users", DAYS[0], table)
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    backdate_policy(workspace)
    workspace.protect("users", DAYS[0].isoformat())

    request, report = workspace.erase("users", _keys_file(tmp_path, [3, 4, 5]), "GDPR-S3")

    assert request.state() == "done" and report.files_rewritten == 1 and report.rows_matched == 3
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="lake/_fieldcrypt/erasure/")["Contents"]]
    assert sorted(k.rpartition("/")[2] for k in listed if not k.endswith("/")) == sorted(
        [f"{request.request_id}.json", f"{DAYS[0].isoformat()}.json", "done"]
    )
    body = s3.get_object(Bucket=s3_bucket, Key=f"lake/{snapshot_path('users', DAYS[0])}")["Body"].read()
    after = pq.read_table(pa.BufferReader(body))
    erased = after.filter(pc.is_in(pc.field("user_id"), value_set=pa.array([3, 4, 5], pa.int64())))
    assert erased.column("email").null_count == erased.column("email__fc_ct").null_count == 3
    assert workspace.erase("users", _keys_file(tmp_path, [3, 4, 5]), "GDPR-S3")[1].files_rewritten == 0
    workspace.verify("users", DAYS[0].isoformat())
