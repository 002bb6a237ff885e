"""Blind-index re-index: a new index key, every protected row's index recomputed, verified and atomic per file."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path, write_snapshot
from fieldcrypt import ConcurrentUpdateError, IntegrityError, PolicyError, Workspace
from fieldcrypt.engine.reindex import RETIRING_PATH
from fieldcrypt.keys.blind_index import INDEX_KEYS_PATH
from tests.conftest import NOON, SAMPLE_DAY
from tests.dagster_support import node
from tests.policy_support import backdate_policy

DAYS = [SAMPLE_DAY, SAMPLE_DAY + timedelta(days=1)]
EMAILS = ["a@example.com", "b@example.com", "a@example.com", None, "c@example.com"]
PROTECTED_PER_DAY = 4


def _land(workspace: Workspace) -> None:
    for offset, day in enumerate(DAYS):
        times = [NOON + timedelta(days=offset, minutes=i) for i in range(len(EMAILS))]
        table = pa.table(
            {
                "user_id": pa.array([10 * offset + i for i in range(len(EMAILS))], pa.int64()),
                "email": pa.array(EMAILS, pa.string()),
                "name": pa.array([f"n{i}" for i in range(len(EMAILS))], pa.string()),
                "ingested_at": pa.array(times, pa.timestamp("us", tz="UTC")),
            }
        )
        write_snapshot(workspace.store, "users", day, table)


@pytest.fixture
def indexed(make_local_workspace: Callable[..., Workspace]) -> Workspace:
    workspace = make_local_workspace()
    _land(workspace)
    workspace.enable("users.email", "email", acknowledge_irreversible=True, blind_index=True)
    backdate_policy(workspace)
    for day in DAYS:
        assert workspace.protect("users", day.isoformat()).newly_encrypted == PROTECTED_PER_DAY
    return workspace


def _table(workspace: Workspace, day: Any = SAMPLE_DAY) -> pa.Table:
    return pq.read_table(workspace.store.full_path(snapshot_path("users", day.isoformat())))


def _indexes(workspace: Workspace, day: Any = SAMPLE_DAY) -> list[bytes | None]:
    return _table(workspace, day).column("email__fc_bidx").to_pylist()


def _reindex_all(workspace: Workspace) -> None:
    for day in DAYS:
        workspace.reindex("users", day.isoformat())


def test_reindex_gives_every_index_a_new_value_with_equalities_kept(indexed: Workspace) -> None:
    before = _indexes(indexed)
    indexed.start_reindex("users.email")
    _reindex_all(indexed)
    after = _indexes(indexed)
    assert all(a != b for a, b in zip(after, before, strict=True) if b is not None)
    assert after[0] == after[2] and len({after[0], after[1], after[4]}) == 3 and after[3] is None


def test_reindex_changes_no_other_column(indexed: Workspace) -> None:
    before = _table(indexed).drop_columns(["email__fc_bidx"])
    indexed.start_reindex("users.email")
    _reindex_all(indexed)
    assert _table(indexed).drop_columns(["email__fc_bidx"]).equals(before)


def test_reindexed_partition_still_verifies(indexed: Workspace) -> None:
    indexed.start_reindex("users.email")
    _reindex_all(indexed)
    assert indexed.verify("users", SAMPLE_DAY.isoformat()) == {"users.email": PROTECTED_PER_DAY}


def test_indexes_join_across_partitions_again_once_all_are_reindexed(indexed: Workspace) -> None:
    indexed.start_reindex("users.email")
    _reindex_all(indexed)
    assert _indexes(indexed, DAYS[0]) == _indexes(indexed, DAYS[1])


def test_rows_protected_during_a_reindex_are_indexed_under_the_new_key(
    make_local_workspace: Callable[..., Workspace],
) -> None:
    workspace = make_local_workspace()
    _land(workspace)
    workspace.enable("users.email", "email", acknowledge_irreversible=True, blind_index=True)
    backdate_policy(workspace)
    workspace.protect("users", DAYS[0].isoformat())
    workspace.start_reindex("users.email")
    workspace.protect("users", DAYS[1].isoformat())  # protected after the start: new key already
    assert workspace.reindex("users", DAYS[1].isoformat()).files_rewritten == 0
    workspace.reindex("users", DAYS[0].isoformat())
    assert _indexes(workspace, DAYS[0]) == _indexes(workspace, DAYS[1])


def test_second_reindex_run_of_a_partition_rewrites_nothing(indexed: Workspace) -> None:
    indexed.start_reindex("users.email")
    first = indexed.reindex("users", SAMPLE_DAY.isoformat())
    again = indexed.reindex("users", SAMPLE_DAY.isoformat())
    assert (first.files_rewritten, first.pending) == (1, PROTECTED_PER_DAY)
    assert (again.files_rewritten, again.pending, again.already["users.email"]) == (0, 0, PROTECTED_PER_DAY)


def test_complete_refuses_while_a_partition_keeps_old_indexes(indexed: Workspace) -> None:
    indexed.start_reindex("users.email")
    indexed.reindex("users", DAYS[0].isoformat())
    with pytest.raises(PolicyError, match=f"1 partitions still hold indexes under the old key: .*{DAYS[1]}"):
        indexed.complete_reindex("users.email")


def test_complete_forgets_the_old_key(indexed: Workspace) -> None:
    indexed.start_reindex("users.email")
    _reindex_all(indexed)
    assert indexed.complete_reindex("users.email") == len(DAYS)
    assert not indexed.store.exists(RETIRING_PATH)
    with pytest.raises(PolicyError, match="no re-index of users.email is under way"):
        indexed.complete_reindex("users.email")


def test_reindex_is_audited_with_cells_per_partition(indexed: Workspace) -> None:
    indexed.start_reindex("users.email")
    _reindex_all(indexed)
    indexed.complete_reindex("users.email")
    events = [e for e in indexed.audit.events() if e["operation"].startswith("reindex")]
    per_partition = ["reindex_intent", "reindex"]
    assert [e["operation"] for e in events] == ["reindex_start", *per_partition * len(DAYS), "reindex_complete"]
    assert [e["cells"] for e in events if e["operation"] == "reindex"] == [PROTECTED_PER_DAY] * len(DAYS)


def test_tampered_index_is_refused_naming_the_row(indexed: Workspace) -> None:
    indexed.start_reindex("users.email")
    rel = snapshot_path("users", SAMPLE_DAY.isoformat())
    table = _table(indexed)
    forged = pa.array([b"\x00" * 16] + _indexes(indexed)[1:], pa.binary())
    table = table.set_column(table.schema.get_field_index("email__fc_bidx"), "email__fc_bidx", forged)
    pq.write_table(table, indexed.store.full_path(rel))
    with pytest.raises(IntegrityError, match="row 0: the blind index of users.email is the index of its value under"):
        indexed.reindex("users", SAMPLE_DAY.isoformat())


def test_reindex_of_an_attribute_without_a_blind_index_is_refused(
    make_local_workspace: Callable[..., Workspace],
) -> None:
    workspace = make_local_workspace()
    _land(workspace)
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    with pytest.raises(PolicyError, match="users.email is not an enabled attribute with a blind index"):
        workspace.start_reindex("users.email")


def test_second_start_while_under_way_is_refused(indexed: Workspace) -> None:
    indexed.start_reindex("users.email")
    with pytest.raises(PolicyError, match="already under way"):
        indexed.start_reindex("users.email")


def test_master_key_rotation_is_refused_during_a_reindex(indexed: Workspace) -> None:
    indexed.start_reindex("users.email")
    with pytest.raises(PolicyError, match="re-index of users.email is under way; complete it before a rotation"):
        indexed.start_rotation()


def test_start_interrupted_after_keeping_the_old_key_starts_cleanly_again(indexed: Workspace) -> None:
    import json

    current = json.loads(indexed.store.read_bytes(INDEX_KEYS_PATH))
    indexed.store.write_bytes(RETIRING_PATH, json.dumps(current).encode())  # the first write of a start, then a crash
    indexed.start_reindex("users.email")
    _reindex_all(indexed)
    assert indexed.complete_reindex("users.email") == len(DAYS)


def test_cli_runs_a_reindex_campaign_end_to_end(
    indexed: Workspace, tmp_path: Any, keystore_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from fieldcrypt.cli import run
    from tests.catalogs import write_catalog

    catalog = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", indexed.store.uri, {"provider": "local", "keystore": str(keystore_path)}
    )
    before = _indexes(indexed)
    assert run(["--catalog", str(catalog), "reindex", "start", "users.email"]) == 0
    assert run(["--catalog", str(catalog), "reindex-partition", "users"]) == 0
    assert run(["--catalog", str(catalog), "reindex", "complete", "users.email"]) == 0
    out = capsys.readouterr().out
    assert f"re-indexed 2 partitions: {PROTECTED_PER_DAY * 2} blind indexes recomputed in 2 files" in out
    assert "every blind index is under the new key (2 partitions)" in out
    assert _indexes(indexed)[0] != before[0]


def test_reindex_of_a_padded_attribute_keeps_its_cells_and_verifies(
    make_local_workspace: Callable[..., Workspace],
) -> None:
    workspace = make_local_workspace()
    _land(workspace)
    workspace.enable("users.email", "email", acknowledge_irreversible=True, blind_index=True, pad_to=32)
    backdate_policy(workspace)
    workspace.protect("users", SAMPLE_DAY.isoformat())
    cells = _table(workspace).column("email__fc_ct")
    workspace.start_reindex("users.email")
    assert workspace.reindex("users", SAMPLE_DAY.isoformat()).pending == PROTECTED_PER_DAY
    assert _table(workspace).column("email__fc_ct").equals(cells)
    assert workspace.verify("users", SAMPLE_DAY.isoformat()) == {"users.email": PROTECTED_PER_DAY}


def test_reindex_backfill_asset_recomputes_a_partition_through_dagster(indexed: Workspace, keystore_path: Any) -> None:
    """The re-index as Dagster runs it: `reindexed_users_index` materialized per partition, then completion."""
    from pathlib import Path

    import dagster as dg
    from dagster_support import local_fieldcrypt

    from assets import build_assets

    fieldcrypt = local_fieldcrypt(Path(indexed.config.lake_uri), Path(keystore_path))
    before = _indexes(indexed)
    indexed.start_reindex("users.email")
    asset = build_assets(fieldcrypt.config()).reindexed["users"]

    recomputed = 0
    for partition in indexed.partitions("users"):
        result = dg.materialize([asset], partition_key=partition, resources=fieldcrypt.as_resources())
        (materialization,) = result.asset_materializations_for_node(node("reindexed_users_index"))
        recomputed += materialization.metadata["reindexed.users.email"].value
    assert recomputed >= sum(index is not None for index in before) > 0  # this day and the others

    after = _indexes(indexed)
    assert [a is None for a in after] == [b is None for b in before] and after != before
    assert indexed.complete_reindex("users.email") >= 1


NEW_DAY = SAMPLE_DAY + timedelta(days=2)


def _landing_more_rows(workspace: Workspace) -> str:
    """A new day's snapshot (two rows ingested after the enablement, which is backdated): work to do."""
    table = pa.table(
        {
            "user_id": pa.array([100, 101], pa.int64()),
            "email": pa.array(["d@example.com", "e@example.com"], pa.string()),
            "name": pa.array(["x", "y"], pa.string()),
            "ingested_at": pa.array([NOON + timedelta(days=2)] * 2, pa.timestamp("us", tz="UTC")),
        }
    )
    write_snapshot(workspace.store, "users", NEW_DAY, table)
    return NEW_DAY.isoformat()


def test_protection_that_loaded_the_index_key_before_a_reindex_started_replaces_nothing(
    indexed: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: a protection run holding the old index key must not write old indexes once a re-index
    started (they would be written after the re-index scanned the file). Another process starts the
    re-index between this run's key load and its replace; the replace is refused, the file untouched."""
    import fieldcrypt.workspace as workspace_module

    day = _landing_more_rows(indexed)
    path = Path(indexed.store.full_path(snapshot_path("users", day)))
    stored = path.read_bytes()
    other = Workspace(indexed.config, actor="other-process")
    real_protect_file = workspace_module.protect_file

    def reindex_starts_meanwhile(*args: Any, **kwargs: Any) -> Any:
        if not other.retiring_index_keys.load():
            other.start_reindex("users.email")
        return real_protect_file(*args, **kwargs)

    monkeypatch.setattr(workspace_module, "protect_file", reindex_starts_meanwhile)

    with pytest.raises(ConcurrentUpdateError, match="blind-index key of users.email changed"):
        indexed.protect("users", day)
    assert path.read_bytes() == stored

    monkeypatch.setattr(workspace_module, "protect_file", real_protect_file)
    again = Workspace(indexed.config, actor="rerun")
    assert again.protect("users", day).newly_encrypted == 2
    assert again.reindex("users", day).files_rewritten == 0  # indexed under the new key already


def test_index_key_only_rewrapped_by_a_master_key_rotation_does_not_stop_protection(
    indexed: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same key under new wrapping bytes (rotation rewraps index keys) is not a re-index."""
    import fieldcrypt.workspace as workspace_module

    day = _landing_more_rows(indexed)
    indexed.start_rotation()
    before = indexed.index_keys.load()
    real_protect_file = workspace_module.protect_file
    mover = Workspace(indexed.config, actor="other-process")

    def rewrapped_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # the stored bytes change as a rotation's rewrap changes them: same key, new wrapping
        cache = mover.key_cache()
        mover.index_keys.update(
            lambda keys: {n: cache.rewrap(v, "users", "email#blind-index") for n, v in keys.items()}
        )
        return real_protect_file(*args, **kwargs)

    monkeypatch.setattr(workspace_module, "protect_file", rewrapped_meanwhile)
    report = indexed.protect("users", day)

    assert report.newly_encrypted == 2
    assert indexed.index_keys.load() != before
