"""Erasure requests on a Delta table (delta-rs) and an Iceberg table (pyiceberg): erased through the table's own
commits, never by rewriting a data file in place.

Each table holds rows ingested before the attribute's enablement (historical plaintext, left as is) and after
(protected). After protect and an erasure request: the table's own library reads it, the erased rows' protected
cells and historical plaintext are null and everything else is as before, verify passes, the table's log has one
`erase` commit per partition touched, and status says the older versions still hold plaintext. A snapshot landed
later with an erased key is erased by the next protect, in its own table commit before the protection's. No
data file's bytes change until purge-history; after it, no byte under the table holds an erased row's value,
while the other rows' historical plaintext (still live in the table) is found.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fieldcrypt import ConcurrentUpdateError
from fieldcrypt.cli import run
from tests.plaintext_scan import scan
from tests.policy_support import backdate_policy
from tests.table_lakes import DAYS, ENABLED_AT, LATE, UNTOUCHED, USERS, Lake, delta_lake, emails, iceberg_lake, users

ERASED = [3, 4, 7, 150, 298]  # ids % 3: days 0 and 1 only; 3 and 7 protected, 4, 150 and 298 historical
ERASED_COLUMNS = ["email", "email__fc_ct", "email__fc_dek", "email__fc_bidx"]
NEW = [USERS + 1, USERS + 3]  # landed later, after the enablement (odd ids)


@pytest.fixture(params=["delta", "iceberg"])
def lake(request: pytest.FixtureRequest, tmp_path: Path, keystore_path: Path) -> Lake:
    made = delta_lake(tmp_path, keystore_path) if request.param == "delta" else iceberg_lake(tmp_path, keystore_path)
    workspace = made.workspace
    workspace.enable(f"{made.dataset}.email", "email", acknowledge_irreversible=True, blind_index=True)
    backdate_policy(workspace, ENABLED_AT)
    return made


def _keys_file(tmp_path: Path, keys: list[int], name: str = "keys.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{key}\n" for key in keys))
    return path


def _digests(location: Path) -> dict[Path, str]:
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(location.rglob("*.parquet"))}


def _assert_unchanged(location: Path, digests: dict[Path, str]) -> None:
    """Every data file seen so far is still on disk with the same bytes (a table's files are never rewritten)."""
    assert {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in digests} == digests


def _rows(table: pa.Table, ids: list[int], *, chosen: bool) -> pa.Table:
    mask = pc.is_in(table.column("user_id"), value_set=pa.array(ids, pa.int64()))
    return table.filter(mask if chosen else pc.invert(mask))


def test_an_erasure_on_a_table_goes_through_its_own_commits_and_purge_history_removes_the_rest(
    lake: Lake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace, dataset = lake.workspace, lake.dataset
    partitions = [lake.partition(day) for day in DAYS]
    digests = _digests(lake.location)
    for partition in partitions:
        workspace.protect(dataset, partition)
    _assert_unchanged(lake.location, digests)
    digests |= _digests(lake.location)
    before = lake.read()
    assert before.column("email__fc_ct").null_count == USERS // 2  # the historical rows are not encrypted
    historical = [i for i in range(USERS) if i % 2 == 0 and i not in ERASED]

    request, report = workspace.erase(dataset, _keys_file(tmp_path, ERASED), "GDPR-1234")

    assert report.files_rewritten == 2 and report.rows_matched == len(ERASED)
    assert request.done and request.cells_erased == report.cells
    _assert_unchanged(lake.location, digests)  # the replaced files are kept, as they were, for time travel
    erase_commits = [op for op in lake.operations() if op[0] == "erase"]
    assert sorted(erase_commits) == [("erase", partitions[0]), ("erase", partitions[1])]  # one per partition touched
    after = lake.read()  # the table's own library reads it
    assert after.num_rows == USERS
    erased_rows = _rows(after, ERASED, chosen=True)
    for column in ERASED_COLUMNS:
        assert erased_rows.column(column).null_count == len(ERASED), column
    assert erased_rows.select(UNTOUCHED).equals(_rows(before, ERASED, chosen=True).select(UNTOUCHED))
    assert _rows(after, ERASED, chosen=False).equals(_rows(before, ERASED, chosen=False))
    for partition in partitions:
        workspace.verify(dataset, partition)
    history = workspace.table_history(dataset)
    assert history.holds_plaintext and history.erased and history.versions > 0
    cli = ["--catalog", str(tmp_path / "fieldcrypt.yaml")]
    assert run([*cli, "status", dataset]) == 0
    said = capsys.readouterr().out
    assert "still hold plaintext" in said and "the rows of erasure requests erased since" in said

    # A key whose every file's statistics exclude it: no file read past its footer, nothing committed.
    commits = len(lake.operations())
    _, missing = workspace.erase(dataset, _keys_file(tmp_path, [10 * USERS], "absent.txt"), "GDPR-1235")
    assert missing.files_skipped_by_statistics == missing.files > 0 and missing.files_rewritten == 0
    assert len(lake.operations()) == commits

    # The upstream job replays an erased user in a later snapshot: the next protect erases it first, in its own
    # table commit, then protects the snapshot as the table is after that commit.
    lake.append(users([3, *NEW], [LATE]))
    late = lake.partition(LATE)
    digests |= _digests(lake.location)
    protected = workspace.protect(dataset, late)
    assert protected.erasure_files_rewritten == 1 and protected.erasure_cells == 1
    assert lake.operations()[-2:] == [("erase", late), ("encrypt", late)]
    _assert_unchanged(lake.location, digests)
    table = lake.read()
    day = table.column("event_date" if "event_date" in table.column_names else "date").cast(pa.string())
    replayed = table.filter(pc.equal(day, LATE.isoformat()))
    assert sorted(replayed.column("user_id").to_pylist()) == [3, *NEW]
    assert _rows(replayed, [3], chosen=True).column("email").to_pylist() == [None]
    assert _rows(replayed, [3], chosen=False).column("email__fc_ct").null_count == 0  # ingested after: protected
    workspace.verify(dataset, late)

    location = lake.location
    assert scan(location, emails(ERASED))  # older versions still hold the erased rows
    purge = workspace.purge_history(dataset, older_than_hours=0)
    assert purge.files_deleted > 0
    assert scan(location, emails(ERASED)) == []
    assert scan(location, emails(historical))  # the other rows' historical plaintext is live in the table
    final = lake.read()
    assert _rows(final, [*ERASED, *NEW], chosen=False).equals(_rows(after, ERASED, chosen=False))
    assert not workspace.table_history(dataset).holds_plaintext
    for partition in [*partitions, late]:
        workspace.verify(dataset, partition)


def test_an_erasure_after_a_purge_is_history_again_until_the_next_purge(
    lake: Lake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace, dataset = lake.workspace, lake.dataset
    for day in DAYS:
        workspace.protect(dataset, lake.partition(day))
    workspace.purge_history(dataset, older_than_hours=0)
    assert not workspace.table_history(dataset).holds_plaintext

    cli = ["--catalog", str(tmp_path / "fieldcrypt.yaml")]
    keys = str(_keys_file(tmp_path, ERASED))
    assert run([*cli, "erase", dataset, "--keys", keys, "--reason", "GDPR-1234"]) == 0
    assert f"fieldcrypt purge-history {dataset}" in capsys.readouterr().out

    history = workspace.table_history(dataset)  # the erase is the newest commit that left plaintext behind
    assert history.holds_plaintext and history.erased and history.versions > 0
    assert run([*cli, "status", dataset]) == 0
    said = capsys.readouterr().out
    assert "the rows of erasure requests erased since" in said and "no plaintext left" not in said
    assert scan(lake.location, emails([4, 150, 298]))  # the erased historical rows, in the replaced files
    workspace.purge_history(dataset, older_than_hours=0)
    assert not workspace.table_history(dataset).holds_plaintext
    assert scan(lake.location, emails(ERASED)) == []


def test_a_refused_table_commit_records_no_progress_and_a_rerun_finishes_the_request(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace, dataset = lake.workspace, lake.dataset
    for day in DAYS:
        workspace.protect(dataset, lake.partition(day))
    before, files, commits = lake.read(), _digests(lake.location), lake.operations()
    table_format = type(workspace.layout(dataset).table(workspace.store))
    original = table_format.commit

    def refused(*args: object, **kwargs: object) -> int:
        # Fault injection: another writer's conflicting commit, which a single-process test cannot time.
        raise ConcurrentUpdateError("another writer's commit conflicts")

    monkeypatch.setattr(table_format, "commit", refused)
    with pytest.raises(ConcurrentUpdateError, match="2 partitions of .* failed"):
        workspace.erase(dataset, _keys_file(tmp_path, ERASED), "GDPR-1234")

    (request,) = workspace.erasure_requests(dataset)
    assert not request.done and set(request.progress) == {lake.partition(DAYS[2])}  # the untouched one only
    assert lake.read().equals(before) and lake.operations() == commits
    assert _digests(lake.location) == files  # the new files were deleted, the old ones untouched
    monkeypatch.setattr(table_format, "commit", original)
    again, report = workspace.erase(dataset, _keys_file(tmp_path, ERASED), "GDPR-1234")
    assert again.request_id == request.request_id and again.done and report.files_rewritten == 2
    assert _rows(lake.read(), ERASED, chosen=True).column("email").null_count == len(ERASED)
