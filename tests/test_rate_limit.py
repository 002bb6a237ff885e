"""The client-side KMS call budget of a workspace: waits computed from a fake clock, never measured."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from fieldcrypt import ConfigError, Workspace
from fieldcrypt.catalog import Catalog
from fieldcrypt.keys.rate_limit import CallRateLimit, for_workspace
from tests.catalogs import demo_datasets_yaml


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_calls_beyond_the_budget_wait_their_turn() -> None:
    fake = FakeTime()
    limit = CallRateLimit(4, clock=fake.clock, sleep=fake.sleep)

    for _ in range(5):
        limit.acquire()

    assert fake.slept == pytest.approx([0.25, 0.25, 0.25, 0.25])  # the first call is free, then one per 1/4 s


def test_time_that_passed_between_calls_is_not_waited_again() -> None:
    fake = FakeTime()
    limit = CallRateLimit(2, clock=fake.clock, sleep=fake.sleep)
    limit.acquire()
    fake.now += 10  # idle: the budget refills up to its burst, not beyond
    limit.acquire()
    limit.acquire()
    assert fake.slept == pytest.approx([0.5])


def test_workspaces_get_their_own_budget_and_a_process_shares_one_per_workspace() -> None:
    a, b = for_workspace("rate-a", 10), for_workspace("rate-b", 10)
    assert a is not None and b is not None and a is not b
    assert for_workspace("rate-a", 10) is a
    assert for_workspace("rate-a", None) is None


def test_a_rate_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be positive"):
        CallRateLimit(0)


def test_the_catalog_sets_the_budget_and_the_environment_overrides_it(tmp_path: Path) -> None:
    path = tmp_path / "fieldcrypt.yaml"
    entry = {"lake": "lake", "key": {"provider": "local", "keystore": "k.json"}, "datasets": demo_datasets_yaml()}
    path.write_text(yaml.safe_dump({"workspaces": {"acme": {**entry, "kms_calls_per_second": 50}}}))
    assert Catalog.load(path, environ={}).workspace_config().kms_calls_per_second == 50
    overridden = Catalog.load(path, environ={"FIELDCRYPT_KMS_CALLS_PER_SECOND": "5"}).workspace_config()
    assert overridden.kms_calls_per_second == 5
    with pytest.raises(ConfigError, match=r"kms_calls_per_second \(from FIELDCRYPT_KMS_CALLS_PER_SECOND\)"):
        Catalog.load(path, environ={"FIELDCRYPT_KMS_CALLS_PER_SECOND": "-1"})


def test_every_provider_call_of_a_workspace_takes_from_its_budget(
    make_local_workspace: Callable[..., Workspace], enable_at: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from demo.sample_data import land_sample_lake
    from tests.conftest import SAMPLE_DAY

    taken: list[str] = []
    monkeypatch.setattr(CallRateLimit, "acquire", lambda self: taken.append("call"))
    workspace = make_local_workspace()
    workspace.config = replace(workspace.config, kms_calls_per_second=1000)
    land_sample_lake(workspace.store, SAMPLE_DAY, 1, users=50, events=10)
    enable_at(workspace, "users.email", "email")

    workspace.protect("users", SAMPLE_DAY.isoformat())

    calls = workspace.key_cache().calls.total
    assert calls > 0 and len(taken) == calls  # one budget draw per provider call, none for cache hits
