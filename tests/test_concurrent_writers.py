"""Several workers writing one lake: no update is lost, the loser is told to run again.

Control files (policy, key binding, blind-index keys) are read-modify-written as one
compare-and-swap: a directory flock on a local lake, conditional PutObject
(`If-None-Match: *` / `If-Match`) on S3 (moto's server on loopback). Partition files are
replaced only if still at the version that was read (docs/OPERATIONS.md, "Concurrent
writers"). Races run on real threads; the deterministic interleavings load twice, then
save twice.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import pytest

from demo.sample_data import land_sample_lake
from fieldcrypt import ConcurrentUpdateError, Workspace
from fieldcrypt.keys.binding import BINDING_PATH, BindingStore, KeyBinding
from fieldcrypt.keys.blind_index import INDEX_KEYS_PATH, IndexKeyStore
from fieldcrypt.keys.providers.base import MasterKeyInfo
from fieldcrypt.lake.store import LakeStore
from tests.conftest import SAMPLE_DAY

THREADS = 6
PARTITION = SAMPLE_DAY.isoformat()


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> LakeStore:
    """An empty lake root: a local folder, or a prefix in a bucket on moto's server."""
    if request.param == "local":
        return LakeStore.from_uri(str(tmp_path / "lake"))
    endpoint: str = request.getfixturevalue("moto")
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="race-bucket")
    return LakeStore.from_uri("s3://race-bucket/lake", endpoint_url=endpoint, region="us-east-1")


def race(workers: int, work: Callable[[int], Any]) -> list[Any]:
    """Run `work(i)` on `workers` threads released together; each result or the exception raised."""
    start = threading.Barrier(workers)
    results: list[Any] = [None] * workers

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # collected: the test asserts what each worker saw
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def key_ref(version: int) -> MasterKeyInfo:
    return MasterKeyInfo("local", "mk-race", str(version))


# -- the store's compare-and-swap ----------------------------------------------------------


def test_create_only_write_refuses_a_file_another_worker_created(lake: LakeStore) -> None:
    lake.write_if("_fieldcrypt/control.json", b"first", None)

    with pytest.raises(ConcurrentUpdateError, match="changed while"):
        lake.write_if("_fieldcrypt/control.json", b"second", None)

    assert lake.read_bytes("_fieldcrypt/control.json") == b"first"


def test_conditional_write_refuses_a_version_another_worker_replaced(lake: LakeStore) -> None:
    read = lake.write_if("_fieldcrypt/control.json", b"v1", None)
    lake.write_if("_fieldcrypt/control.json", b"v2 by another worker", read)

    with pytest.raises(ConcurrentUpdateError, match="run again"):
        lake.write_if("_fieldcrypt/control.json", b"v2 from a stale read", read)

    assert lake.read_bytes("_fieldcrypt/control.json") == b"v2 by another worker"


def test_racing_read_modify_writes_of_one_file_keep_every_update(lake: LakeStore) -> None:
    lake.write_if("_fieldcrypt/counter.txt", b"", None)

    def append_own_line(i: int) -> bool:
        return lake.update("_fieldcrypt/counter.txt", lambda stored: (stored or b"") + f"worker-{i}\n".encode(), "race")

    results = race(THREADS, append_own_line)

    lines = lake.read_bytes("_fieldcrypt/counter.txt").decode().split()
    written = [f"worker-{i}" for i, result in enumerate(results) if result is True]
    assert sorted(lines) == sorted(written) and all(
        result is True or isinstance(result, ConcurrentUpdateError) for result in results
    )


def test_local_replace_of_a_file_replaced_meanwhile_is_refused(tmp_path: Path) -> None:
    lake = LakeStore.from_uri(str(tmp_path / "lake"))
    lake.write_bytes("data/part-0.parquet", b"original")
    read = lake.version("data/part-0.parquet")
    lake.write_bytes("data/part-0.parquet", b"original")  # same size, rewritten: a new inode
    lake.write_bytes("data/.temp", b"our rewrite")

    with pytest.raises(ConcurrentUpdateError, match="data/part-0.parquet changed while"):
        lake.replace_if("data/.temp", "data/part-0.parquet", read, "it was being protected")

    assert lake.read_bytes("data/part-0.parquet") == b"original"


def test_s3_replace_of_a_partition_file_is_a_copy_conditional_on_the_etag_read(moto: str) -> None:
    # moto 5.2 ignores If-Match on CopyObject (AWS S3 enforces it), so this checks the
    # request S3 receives: the ETag of the version the run read, on the CopyObject.
    boto3.client("s3", endpoint_url=moto, region_name="us-east-1").create_bucket(Bucket="race-bucket")
    lake = LakeStore.from_uri("s3://race-bucket/lake", endpoint_url=moto, region="us-east-1")
    lake.write_bytes("data/part-0.parquet", b"original")
    read = lake.version("data/part-0.parquet")
    lake.write_bytes("data/.temp", b"our rewrite")
    sent: list[dict[str, Any]] = []
    lake._s3().meta.events.register("before-send.s3.CopyObject", lambda request, **_: sent.append(request.headers))

    lake.replace_if("data/.temp", "data/part-0.parquet", read, "it was being protected")

    assert [bytes(headers["If-Match"]).decode() for headers in sent] == [read.identity]


REPO_ROOT = Path(__file__).resolve().parents[1]
ADD_KEYS_SCRIPT = """
import sys
from fieldcrypt.keys.blind_index import IndexKeyStore
from fieldcrypt.lake.store import LakeStore
keys = IndexKeyStore(LakeStore.from_uri(sys.argv[1]))
for n in range(int(sys.argv[3])):
    keys.update(lambda stored, n=n: {**stored, f"users.{sys.argv[2]}{n}": b"k" * 32})
"""


def test_processes_racing_on_a_local_control_file_keep_every_update(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    workers = [
        subprocess.Popen([sys.executable, "-c", ADD_KEYS_SCRIPT, str(lake), name, "25"], cwd=REPO_ROOT)
        for name in ("a", "b", "c")
    ]

    assert [worker.wait(timeout=120) for worker in workers] == [0, 0, 0]
    stored = IndexKeyStore(LakeStore.from_uri(str(lake))).load()
    assert sorted(stored) == sorted(f"users.{name}{n}" for name in "abc" for n in range(25))


# -- control files ------------------------------------------------------------------------


def test_two_workers_binding_a_new_lake_to_the_same_key_both_succeed(lake: LakeStore) -> None:
    binding = BindingStore(lake)

    results = race(2, lambda _: BindingStore(lake).save(KeyBinding(key_ref(1)), previous=None))

    assert results == [None, None] and binding.load() == KeyBinding(key_ref(1))


def test_binding_saved_from_a_stale_read_is_refused_and_the_winner_kept(lake: LakeStore) -> None:
    bindings = BindingStore(lake)
    bindings.save(KeyBinding(key_ref(1)), previous=None)
    first_read, second_read = bindings.load(), bindings.load()
    assert first_read is not None and second_read is not None
    started = first_read.start(key_ref(2), "worker-a")
    bindings.save(started, previous=first_read)

    with pytest.raises(ConcurrentUpdateError, match=f"{BINDING_PATH} changed while"):
        bindings.save(second_read.start(key_ref(3), "worker-b"), previous=second_read)

    assert bindings.load() == started


def test_racing_blind_index_key_additions_keep_every_key(lake: LakeStore) -> None:
    index_keys = IndexKeyStore(lake)

    def add_own_key(i: int) -> bool:
        return IndexKeyStore(lake).update(lambda keys: {**keys, f"users.attr{i}": bytes([i]) * 8})

    results = race(THREADS, add_own_key)

    added = {f"users.attr{i}" for i, result in enumerate(results) if result is True}
    assert set(index_keys.load()) == added and lake.exists(INDEX_KEYS_PATH)


# -- through the Workspace -----------------------------------------------------------------


@pytest.fixture
def two_workers(make_local_workspace: Callable[..., Workspace], tmp_path: Path) -> Iterator[list[Workspace]]:
    """Two Workspace objects (as two worker processes would have) on one local lake with sample data."""
    first = make_local_workspace(actor="worker-a")
    land_sample_lake(first.store, SAMPLE_DAY, 1, users=200, events=200)
    yield [first, make_local_workspace(actor="worker-b")]


def test_enable_derived_from_a_policy_another_worker_changed_is_refused(
    two_workers: list[Workspace],
) -> None:
    a, b = two_workers
    stale = b.policy()
    a.enable("users.email", "email", acknowledge_irreversible=True)
    derived = stale.with_dataset(b.layout("users").spec).with_enabled("users.phone", "last4", enabled_by="worker-b")

    with pytest.raises(ConcurrentUpdateError, match="policy.json changed while"):
        b.policies.save(derived, previous=stale)

    assert sorted(b.policy().attributes) == ["users.email"]


def test_racing_enables_of_different_attributes_lose_neither(two_workers: list[Workspace]) -> None:
    attributes = ["users.email", "users.phone"]
    masks = {"users.email": "email", "users.phone": "last4"}

    def enable(i: int) -> Any:
        return two_workers[i].enable(attributes[i], masks[attributes[i]], acknowledge_irreversible=True)

    results = race(2, enable)
    for i, result in enumerate(results):  # the loser of the race runs again, as its error says
        if isinstance(result, ConcurrentUpdateError):
            enable(i)

    assert all(not isinstance(r, Exception) or isinstance(r, ConcurrentUpdateError) for r in results), [
        f"{type(r).__name__}: {r}" for r in results if isinstance(r, Exception)
    ]
    assert sorted(two_workers[0].policy().attributes) == attributes


def test_two_protect_runs_racing_on_one_partition_replace_each_file_once(
    two_workers: list[Workspace], enable_at: Callable[..., Any]
) -> None:
    a, _ = two_workers
    enable_at(a, "users.email", "email")  # rows ingested after noon of the sample day get protected
    files = a.files("users", PARTITION)

    results = race(2, lambda i: two_workers[i].protect("users", PARTITION))

    assert all(not isinstance(r, Exception) or isinstance(r, ConcurrentUpdateError) for r in results), [
        f"{type(r).__name__}: {r}" for r in results if isinstance(r, Exception)
    ]
    encrypted = [e for e in a.audit.events() if e["operation"] == "encrypt" and e.get("partition") == PARTITION]
    assert len(encrypted) == len(files) and a.verify("users", PARTITION)["users.email"] > 0


def test_rotation_started_by_two_workers_at_once_starts_one_campaign(
    make_local_workspace: Callable[..., Workspace], enable_at: Callable[..., Any]
) -> None:
    first = make_local_workspace(actor="worker-a")
    land_sample_lake(first.store, date(2026, 11, 1), 1, users=50, events=50)
    enable_at(first, "users.email", "email")
    first.protect("users", PARTITION)
    workers = [first, make_local_workspace(actor="worker-b")]

    results = race(2, lambda i: workers[i].start_rotation())

    binding = BindingStore(first.store).load()
    assert binding is not None and len(binding.campaigns) == 1
    assert sum(not isinstance(r, Exception) for r in results) == 1, results
