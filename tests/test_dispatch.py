"""Dispatch reads (`Workspace.dispatch`, `dispatch_segment`): a segment's real values, reading only what is needed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pyarrow as pa
import pytest

from demo.sample_data import users_table, write_snapshot
from fieldcrypt import InputError, Workspace
from fieldcrypt.reads.dispatch import DispatchReport, dispatch_segment
from tests.conftest import SAMPLE_DAY
from tests.policy_support import backdate_policy

ROWS, GROUP = 1_000, 100  # ten row groups, user_id sorted
DAYS = [SAMPLE_DAY, SAMPLE_DAY + timedelta(days=1)]
LATEST = DAYS[-1].isoformat()


@pytest.fixture
def lake(make_local_workspace: Callable[..., Workspace]) -> Workspace:
    workspace = make_local_workspace(actor="campaign-runner")
    for day in DAYS:
        write_snapshot(workspace.store, "users", day, users_table(day, ROWS), row_group_size=GROUP)
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    workspace.enable("users.phone", "last4", acknowledge_irreversible=True)
    backdate_policy(workspace)
    for day in DAYS:
        assert workspace.protect("users", day.isoformat()).newly_encrypted > 0
    return workspace


def _rows(workspace: Workspace, segment: object, **kwargs: object) -> list[dict[str, object]]:
    batches = workspace.dispatch("users", segment, ["email", "phone"], reason="campaign-42", **kwargs)  # type: ignore[arg-type]
    return [row for batch in batches for row in batch.to_pylist()]


def _plain(day_index: int) -> dict[int, tuple[object, object]]:
    table = users_table(DAYS[day_index], ROWS)
    return {
        row["user_id"]: (row["email"], row["phone"]) for row in table.select(["user_id", "email", "phone"]).to_pylist()
    }


def test_dispatch_yields_the_real_values_of_the_segments_rows_only(lake: Workspace) -> None:
    segment = list(range(0, ROWS, 7))
    rows = _rows(lake, segment)
    plain = _plain(1)
    assert sorted(row["user_id"] for row in rows) == segment
    assert all((row["users.email"], row["users.phone"]) == plain[row["user_id"]] for row in rows)


def test_dispatch_reads_the_latest_partition_by_default(lake: Workspace) -> None:
    report = DispatchReport("users", None)
    _rows(lake, [1, 2], report=report)
    assert report.partition == LATEST


def test_dispatch_reads_a_chosen_partition(lake: Workspace) -> None:
    rows = _rows(lake, [1, 2], partition=DAYS[0].isoformat())
    plain = _plain(0)
    assert [(row["users.email"], row["users.phone"]) for row in rows] == [plain[1], plain[2]]


def test_dispatch_skips_row_groups_whose_key_statistics_miss_the_segment(lake: Workspace) -> None:
    report = DispatchReport("users", None)
    _rows(lake, list(range(250, 330)), report=report)  # row groups 2 and 3 of ten
    assert (report.row_groups_read, report.row_groups_skipped) == (2, 8)


def test_dispatch_reports_segment_keys_missing_from_the_partition(lake: Workspace) -> None:
    report = DispatchReport("users", None)
    _rows(lake, [5, 6, ROWS + 1, ROWS + 2, ROWS + 3], report=report)
    assert (report.rows, report.missing) == (2, 3)


def test_dispatch_counts_decrypted_cells_per_attribute(lake: Workspace) -> None:
    report = DispatchReport("users", None)
    segment = list(range(100))
    _rows(lake, segment, report=report)
    plain = _plain(1)
    emails = sum(plain[key][0] is not None for key in segment)
    phones = sum(plain[key][1] is not None for key in segment)
    assert report.cells == {"users.email": emails, "users.phone": phones}


def test_dispatch_audits_actor_reason_attribute_and_cells_before_decrypting(lake: Workspace) -> None:
    report = DispatchReport("users", None)
    _rows(lake, list(range(0, ROWS, 3)), report=report)
    events = [event for event in lake.audit.events() if event["operation"] == "dispatch"]
    assert {(e["actor"], e["reason"], e["partition"]) for e in events} == {("campaign-runner", "campaign-42", LATEST)}
    totals: dict[str, int] = {}
    for event in events:
        totals[f"users.{event['attribute']}"] = totals.get(f"users.{event['attribute']}", 0) + event["cells"]
    assert totals == report.cells


def test_dispatch_accepts_an_arrow_segment(lake: Workspace) -> None:
    rows = _rows(lake, pa.chunked_array([pa.array([3, 4], pa.int32()), pa.array([4, 9], pa.int32())]))
    assert sorted(row["user_id"] for row in rows) == [3, 4, 9]


def test_dispatch_of_an_empty_segment_reads_nothing(lake: Workspace) -> None:
    report = DispatchReport("users", None)
    assert _rows(lake, pa.array([], pa.int64()), report=report) == []
    assert report.row_groups_read == 0


def test_dispatch_without_a_reason_is_refused(lake: Workspace) -> None:
    with pytest.raises(InputError, match="needs a reason"):
        list(lake.dispatch("users", [1], ["email"], reason=" "))


def test_dispatch_of_an_attribute_not_enabled_is_refused_naming_it(lake: Workspace) -> None:
    with pytest.raises(InputError, match="name not enabled for users"):
        list(lake.dispatch("users", [1], ["email", "name"], reason="campaign-42"))


def test_dispatch_segment_of_the_wrong_type_is_refused_naming_the_dataset(lake: Workspace) -> None:
    with pytest.raises(InputError, match="segment for users holds string values"):
        _rows(lake, ["alice@example.com"])


def test_dispatch_segment_with_a_null_key_is_refused(lake: Workspace) -> None:
    with pytest.raises(InputError, match="segment for users holds 1 null primary keys"):
        _rows(lake, [1, None])


def test_dispatch_segment_sends_every_batch_and_returns_the_counts(lake: Workspace) -> None:
    sent: list[int] = []
    report = dispatch_segment(
        lake, "users", range(0, ROWS, 2), ["email"], lambda batch: sent.append(batch.num_rows), reason="campaign-42"
    )
    assert sum(sent) == report.rows == ROWS // 2


def test_dispatch_changes_no_file_of_the_lake_but_the_audit_log(lake: Workspace) -> None:
    import hashlib
    from pathlib import Path

    root = Path(lake.store.full_path(""))

    def snapshot() -> dict[str, str]:
        return {
            str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in root.rglob("*")
            if path.is_file() and "audit" not in path.parts
        }

    before = snapshot()
    _rows(lake, list(range(ROWS)))
    assert snapshot() == before


def test_dispatch_reads_an_s3_lake_under_aws_kms(moto: str, s3_bucket: str, make_kms_key: Callable[..., str]) -> None:
    from fieldcrypt import KeyConfig, WorkspaceConfig
    from tests.catalogs import TEST_DATASETS
    from tests.conftest import WORKSPACE

    key = KeyConfig(provider="aws-kms", kms_key=make_kms_key(), kms_region="us-east-1", kms_endpoint_url=moto)
    config = WorkspaceConfig(
        WORKSPACE, f"s3://{s3_bucket}/lake", key, s3_endpoint_url=moto, s3_region="us-east-1", datasets=TEST_DATASETS
    )
    workspace = Workspace(config, actor="campaign-runner")
    write_snapshot(workspace.store, "users", DAYS[0], users_table(DAYS[0], ROWS), row_group_size=GROUP)
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    backdate_policy(workspace)
    workspace.protect("users", DAYS[0].isoformat())
    report = DispatchReport("users", None)
    rows = [
        row
        for batch in workspace.dispatch("users", [10, 520], ["email"], reason="campaign-42", report=report)
        for row in batch.to_pylist()
    ]
    plain = _plain(0)
    assert [(row["user_id"], row["users.email"]) for row in rows] == [(10, plain[10][0]), (520, plain[520][0])]
    assert (report.row_groups_read, report.row_groups_skipped) == (2, 8)
