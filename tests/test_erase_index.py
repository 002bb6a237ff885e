"""The index of active erasure requests: protection reads it and the active requests only, no request is dropped
silently (tampering and removal refused by name), concurrent creators both land, expired requests leave it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from demo.sample_data import users_table, write_snapshot
from fieldcrypt import IntegrityError, Workspace
from fieldcrypt.cli import run
from fieldcrypt.keys.binding import BINDING_PATH
from fieldcrypt.policy.erasure import ERASURE_DIR, request_path
from fieldcrypt.policy.erasure_index import index_path
from fieldcrypt.policy.rollback import RollbackError
from tests.catalogs import write_catalog

DAY = date(2026, 11, 1)


@pytest.fixture
def workspace(make_local_workspace: Callable[..., Workspace]) -> Workspace:
    workspace = make_local_workspace()
    write_snapshot(workspace.store, "users", DAY, users_table(DAY, 50))
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    workspace.protect("users", DAY.isoformat())
    return workspace


def _request(workspace: Workspace, keys: list[int], reason: str = "GDPR-1", **kwargs: object) -> str:
    canonical = [str(key).encode() for key in keys]
    request = workspace.erasures.create("users", ["user_id"], canonical, reason, "test", [DAY.isoformat()], **kwargs)  # type: ignore[arg-type]
    return request.request_id


def _path(workspace: Workspace, rel: str) -> Path:
    return Path(workspace.store.full_path(rel))


def test_an_index_edited_without_the_key_is_refused_by_name(workspace: Workspace) -> None:
    _request(workspace, [1, 2])
    path = _path(workspace, index_path("users"))
    doc = json.loads(path.read_text())
    doc["active"] = []  # someone drops the request so protection stops erasing its keys
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match=r"erasure-index/users\.json is not a valid erasure index"):
        workspace.protect("users", DAY.isoformat())


def test_a_removed_index_is_refused_by_name_until_rebuilt_and_audited(
    workspace: Workspace, tmp_path: Path, keystore_path: Path
) -> None:
    request_id = _request(workspace, [1, 2])
    _path(workspace, index_path("users")).unlink()
    with pytest.raises(IntegrityError, match=r"erasure-index/users\.json is missing while erasure requests"):
        workspace.protect("users", DAY.isoformat())
    with pytest.raises(IntegrityError, match="is missing while erasure requests"):
        _request(workspace, [3])  # nor is a new request added to a fresh, empty index

    key = {"provider": "local", "keystore": str(keystore_path)}
    catalog = write_catalog(tmp_path / "fieldcrypt.yaml", "acme", workspace.config.lake_uri, key)
    assert run(["--catalog", str(catalog), "erase-reindex", "users", "--reason", "INC-7"]) == 0
    assert [r.request_id for r in workspace.erasures.active("users")] == [request_id]
    workspace.protect("users", DAY.isoformat())
    assert any(e["operation"] == "erasure_reindex" and e["reason"] == "INC-7" for e in workspace.audit.events())


def test_a_removed_or_replaced_request_is_refused_by_name(workspace: Workspace) -> None:
    first, second = _request(workspace, [1]), _request(workspace, [2])
    path = _path(workspace, request_path("users", first))
    kept = path.read_bytes()
    path.unlink()
    with pytest.raises(IntegrityError, match=f"erasure request {first} of users, active in .* is missing"):
        workspace.protect("users", DAY.isoformat())
    # Another authentic request under its name (a copy of the second, renamed) is not the one indexed.
    path.write_bytes(_path(workspace, request_path("users", second)).read_bytes())
    with pytest.raises(IntegrityError, match="is not a valid erasure request|is not the request"):
        workspace.protect("users", DAY.isoformat())
    path.write_bytes(kept)
    workspace.protect("users", DAY.isoformat())


def test_concurrent_creators_both_land_in_the_index(workspace: Workspace) -> None:
    # A separate workspace (its own ErasureRequests, no shared cache) per creator, released at once.
    other = Workspace(workspace.config, "test")
    start = threading.Barrier(2)
    ids: list[str] = []
    errors: list[BaseException] = []

    def create(ws: Workspace, key: int) -> None:
        try:
            start.wait()
            ids.append(_request(ws, [key], reason=f"GDPR-{key}"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(ws, key)) for ws, key in ((workspace, 1), (other, 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(r.request_id for r in workspace.erasures.active("users")) == sorted(ids)
    assert workspace.erasures.index("users").version == 3  # created, then one update per request
    assert _pinned(workspace) == 3  # each writer's pin, never moved back by the slower one


def test_an_expired_request_leaves_the_index_is_no_longer_read_by_protect_and_shows_as_expired(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _request(workspace, [1], now=datetime.now(UTC) - timedelta(days=10), expires_in=timedelta(days=1))
    live = _request(workspace, [2])
    reads: list[str] = []
    read_versioned = workspace.store.read_versioned

    def recording(rel: str) -> tuple[bytes, object] | None:  # observes which files are read; changes nothing
        reads.append(rel)
        return read_versioned(rel)

    fresh = Workspace(workspace.config, "test")  # a new process: nothing read yet
    monkeypatch.setattr(fresh.store, "read_versioned", recording)
    fresh.protect("users", DAY.isoformat())
    erasure_reads = [rel for rel in reads if "erasure" in rel]
    assert request_path("users", old) not in erasure_reads
    assert request_path("users", live) in erasure_reads
    index = fresh.erasures.index("users")
    assert [e.request_id for e in index.active] == [live] and index.expired == 1
    assert [e["detail"] for e in fresh.audit.events() if e["operation"] == "erasure_expired"] == [
        f"{old}: out of the active index"
    ]

    reads.clear()
    fresh.protect("users", DAY.isoformat())  # the second run of the process: the index only
    assert [rel for rel in reads if rel.startswith(ERASURE_DIR)] == [index_path("users")]

    states = {r.request_id: r.state() for r in fresh.erasure_requests("users")}
    assert states[old] == "expired" and states[live] in ("open", "done")


def test_a_request_recorded_but_not_indexed_is_shown_by_status(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id = _request(workspace, [1])

    def crash(*args: object) -> None:  # fault injection: the process dies between the request and the index write
        raise KeyboardInterrupt

    monkeypatch.setattr(workspace.erasures, "_change_index", crash)
    with pytest.raises(KeyboardInterrupt):
        _request(workspace, [2])
    monkeypatch.undo()
    states = {r.request_id: r.state() for r in workspace.erasure_requests("users")}
    assert states[request_id] in ("open", "done")
    assert [s for s in states.values() if s.startswith("not indexed")]


def _pinned(workspace: Workspace) -> int:
    binding = json.loads(_path(workspace, BINDING_PATH).read_text())
    return int(binding["seen"]["erasure"]["users"]["version"])


def test_a_restored_older_index_with_a_newer_request_deleted_is_refused_by_name(workspace: Workspace) -> None:
    _request(workspace, [1])
    index = _path(workspace, index_path("users"))
    older = index.read_bytes()  # version 2: created, then the first request
    newer = _request(workspace, [2])
    assert _pinned(workspace) == 3
    # Someone with write access to the lake puts back the older, validly MAC'd index and deletes the newer
    # request: nothing on file names it any more, only the binding's pin says an index of version 3 was written.
    index.write_bytes(older)
    _path(workspace, request_path("users", newer)).unlink()
    refused = (
        r"erasure index of users \(.*users\.json\) is at version 2 but version 3 was seen: .*restored from a backup"
    )
    with pytest.raises(RollbackError, match=refused):
        workspace.protect("users", DAY.isoformat())
    with pytest.raises(RollbackError, match=refused):
        workspace.erasure_requests("users")  # status
    with pytest.raises(RollbackError, match=refused):
        workspace.verify("users", DAY.isoformat())
    with pytest.raises(RollbackError, match=refused):
        _request(workspace, [3])  # erase: no request is added to the older index either
    index.unlink()  # nor is removing the index and every request file a way out
    for rel in workspace.store.list_files(ERASURE_DIR, ".json"):
        _path(workspace, rel).unlink()
    with pytest.raises(RollbackError, match="erasure index of users .* is missing but version 3 was seen"):
        workspace.protect("users", DAY.isoformat())


def test_an_older_index_alone_is_refused_by_protect_and_restore_accept_rebuilds_it_audited(
    workspace: Workspace, tmp_path: Path, keystore_path: Path
) -> None:
    first = _request(workspace, [1])
    index = _path(workspace, index_path("users"))
    older = index.read_bytes()
    second = _request(workspace, [2])
    index.write_bytes(older)  # the second request is still on file, but protection would not apply it
    with pytest.raises(RollbackError, match="erasure index of users .* is at version 2 but version 3 was seen"):
        workspace.protect("users", DAY.isoformat())

    key = {"provider": "local", "keystore": str(keystore_path)}
    catalog = write_catalog(tmp_path / "fieldcrypt.yaml", "acme", workspace.config.lake_uri, key)
    assert run(["--catalog", str(catalog), "restore-accept", "--reason", "INC-9"]) == 0
    fresh = Workspace(workspace.config, "test")
    # Rebuilt from the requests on file, above the pinned version: the second request is active again.
    assert sorted(r.request_id for r in fresh.erasures.active("users")) == sorted([first, second])
    assert fresh.erasures.index("users").version == 4 and _pinned(fresh) == 4
    fresh.protect("users", DAY.isoformat())
    events = list(fresh.audit.events())
    accepted = [e for e in events if e["operation"] == "restore_accepted"]
    assert accepted and accepted[0]["reason"] == "INC-9"
    assert "erasure index of users rebuilt as version 4 (2 active)" in accepted[0]["detail"]
    assert any(e["operation"] == "restore_accept_intent" and "erasure indexes of users" in e["detail"] for e in events)
    index.write_bytes(older)  # the older copy stays refused
    with pytest.raises(RollbackError, match="is at version 2 but version 4 was seen"):
        fresh.protect("users", DAY.isoformat())
