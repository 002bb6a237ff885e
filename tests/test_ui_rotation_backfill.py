"""docs/OPERATIONS.md's rotation backfill (Rotation, step 2), clicked in a real browser against `dagster dev`.

The lake has three daily partitions of users and events, protected through Dagster (as the
daily protection does), a rotation campaign started by `<workspace>__start_key_rotation`, and
one partition already rotated under it. `dagster dev` (scripts/dagster_ui.py, as `make ui`)
then serves the instance on a free loopback port, and Debian's chromium, driven by
Playwright, clicks exactly the steps the runbook lists. The dialog must offer the two
partitions still missing (not 0, not 3), and the backfill it launches must leave no wrapped
key under the old master key.

The browser test is marked `browser` (excluded by default; `make pytest-browser`, run by .ci/run): it
needs the `browser` extra (playwright, whose own browser download is not used) and Debian's
/usr/bin/chromium (`apt-get install chromium`). The check that the runbook names the controls the
test clicks runs in the default suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster_support import (
    WORKSPACE,
    enable,
    land,
    local_fieldcrypt,
    make_keystore,
    materialize_partition,
    past_day,
)

from assets.rotation import rotation_partition_key
from resources import FieldcryptResource

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DAYS = [past_day(3), past_day(2), past_day(1)]  # the code location's whole snapshot range (start: DAYS[0])
PARTITIONS = [day.isoformat() for day in DAYS]
FUTURE = timedelta(days=30)  # rows ingested after enablement: every row is encrypted
UI_SECONDS = 30_000  # Playwright's bound on each click and wait, in milliseconds
BACKFILL_SECONDS = 120.0  # backfill daemon pick-up, one ranged run, the daemon marking it done


# -- the instance, the lake, the server --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    """`condition()`'s first truthy value, polled for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def graphql(port: int, query: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body: dict[str, Any] = json.load(response)
    assert "errors" not in body, body["errors"]
    return body["data"]


def location_loaded(port: int) -> bool:
    try:
        data = graphql(port, "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }")
    except OSError:
        return False
    entries = data["workspaceOrError"].get("locationEntries") or []
    return bool(entries) and all(entry["loadStatus"] == "LOADED" for entry in entries)


def backfills(port: int) -> list[dict[str, Any]]:
    data = graphql(
        port,
        "{ partitionBackfillsOrError { ... on PartitionBackfills { results { id status partitionNames } } } }",
    )
    results: list[dict[str, Any]] = data["partitionBackfillsOrError"]["results"]
    return results


@pytest.fixture
def campaign_id(fieldcrypt: FieldcryptResource, dagster_home: Path) -> str:
    """Runbook step 1 and a partition rotated earlier, on the instance the server then opens: the campaign's id.

    Runs in process before the browser starts (Playwright's sync API holds an event loop)."""
    from assets import build_assets
    from assets.scope import WorkspaceScope
    from pipelines.rotation import start_key_rotation_job

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        for partition in PARTITIONS:  # the daily protection, through Dagster: protected_* are materialized
            assert materialize_partition(fieldcrypt, partition, instance=instance).success
        started = start_key_rotation_job(WorkspaceScope.of(fieldcrypt.config())).execute_in_process(
            resources=fieldcrypt.as_resources(), instance=instance
        )
        assert started.success
        binding = fieldcrypt.workspace("test").bindings.load()
        assert binding is not None and binding.active_campaign is not None
        campaign_id = binding.active_campaign.campaign_id
        rotated = dg.materialize(
            list(build_assets(fieldcrypt.config()).rotated.values()),
            partition_key=rotation_partition_key(campaign_id, PARTITIONS[0]),
            resources=fieldcrypt.as_resources(),
            instance=instance,
        )
        assert rotated.success
    finally:
        instance.dispose()
    return campaign_id


@pytest.fixture
def fieldcrypt(tmp_path: Path) -> FieldcryptResource:
    resource = local_fieldcrypt(tmp_path / "lake", make_keystore(tmp_path))
    for day in DAYS:
        land(resource, day, FUTURE, users=60, events=120)
    enable(resource, ("users.email", "email"), ("events.properties.email", "email"))
    return resource


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")  # `make ui`'s instance settings
    return home


@contextlib.contextmanager
def serve(fieldcrypt: FieldcryptResource, home: Path, log: Path) -> Iterator[int]:
    """`make ui`'s server (scripts/dagster_ui.py) on a free loopback port; stopped, every child, after."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIELDCRYPT_", "DAGSTER_"))}
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "PYTHONPATH": str(REPO),
            "FIELDCRYPT_CATALOG": fieldcrypt.catalog_path,
            "FIELDCRYPT_WORKSPACE": WORKSPACE,
            "FIELDCRYPT_PARTITIONS_START": PARTITIONS[0],
            "FIELDCRYPT_DAGSTER_EXECUTOR": "in_process",  # one process per run: start-up, not the path, is slow
        }
    )
    command = [sys.executable, "scripts/dagster_ui.py", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as output:
        ui = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=output, stderr=output)
    try:
        wait_for(lambda: location_loaded(port) or ui.poll() is not None, 120, "dagster dev's code location")
        assert ui.poll() is None, log.read_text()[-3000:]
        yield port
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGTERM)  # scripts/dagster_ui.py stops the whole session
            try:
                ui.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(ui.pid, signal.SIGKILL)
                ui.wait(timeout=10)


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium (make pytest-browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh profile each run
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(UI_SECONDS)
            yield page
        finally:
            context.close()


# -- the runbook's clicks ------------------------------------------------------------------------

OPERATIONS = REPO / "docs" / "OPERATIONS.md"
MATERIALIZE = "Materialize selected (2)"
MISSING_AND_FAILED = "Backfill only failed and missing partitions within selection"
LAUNCH = "Launch backfill"


def runbook_step_2() -> str:
    text = OPERATIONS.read_text()
    start = text.index("### 2. Rotate every partition (the backfill)")
    return text[start : text.index("### 3.", start)]


def test_runbook_rotation_backfill_names_the_controls_this_test_clicks() -> None:
    step = " ".join(runbook_step_2().split())
    for control in ("*Catalog*", f"*{MATERIALIZE}*", "**All** beside `campaign`", "**All** beside `snapshot`"):
        assert control in step, control
    assert f"*{MISSING_AND_FAILED}*" in step
    assert f"*{LAUNCH}*" in step


@pytest.mark.browser
def test_runbook_rotation_backfill_launches_the_missing_partitions_and_rotates_every_partition(
    tmp_path: Path, fieldcrypt: FieldcryptResource, dagster_home: Path, campaign_id: str, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_SECONDS)
    before = fieldcrypt.workspace("test").rotation_status()
    assert sorted(before.remaining) == sorted(f"{d}/{p}" for d in ("users", "events") for p in PARTITIONS[1:])
    missing = sorted(rotation_partition_key(campaign_id, p) for p in PARTITIONS[1:])

    with serve(fieldcrypt, dagster_home, tmp_path / "dagster_dev.log") as port:
        page = browser_page
        # 1. Catalog: tick both rotation assets, Materialize selected (2).
        page.goto(f"http://127.0.0.1:{port}/assets")
        for asset in ("rotated_events_keys", "rotated_users_keys"):
            box = page.get_by_test_id(f"checkbox-{WORKSPACE}/{asset}")  # the row's checkbox (a styled input)
            box.locator("xpath=..").click()
            expect(box).to_be_checked()
        page.get_by_role("button", name=MATERIALIZE).click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("Launch runs to materialize 2 assets")
        # 2. It opens with nothing selected (why ticking "missing and failed" alone launched nothing): All, All.
        header = dialog.get_by_text(re.compile(r"^\d+ partitions?$")).first
        expect(header).to_have_text("0 partitions")
        all_buttons = dialog.get_by_role("button", name="All", exact=True)
        expect(all_buttons).to_have_count(2)  # one per dimension, in order: campaign, snapshot
        # The dialog fetches each dimension's keys after it opens: an All clicked before they arrive selects
        # nothing, so the clicks are repeated (bounded) until the header counts the current campaign x every date.
        deadline = time.monotonic() + UI_SECONDS / 1000
        while True:
            all_buttons.nth(0).click()
            all_buttons.nth(1).click()
            try:
                expect(header).to_have_text(f"{len(PARTITIONS)} partitions", timeout=3_000)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        # 3. Missing and failed: the date rotated earlier drops out.
        dialog.get_by_text(MISSING_AND_FAILED).click()
        expect(header).to_have_text(f"{len(missing)} partitions")
        page.screenshot(path=str(tmp_path / "rotation_backfill_dialog.png"))
        # 4. Launch backfill.
        dialog.get_by_role("button", name=LAUNCH).click()
        expect(dialog).to_be_hidden()

        (backfill,) = wait_for(lambda: backfills(port), 30, "the backfill")
        assert sorted(backfill["partitionNames"]) == missing
        done = wait_for(
            lambda: next((b for b in backfills(port) if b["status"] not in ("REQUESTED", "CANCELING")), None),
            BACKFILL_SECONDS,
            "the backfill to finish",
        )
        assert done["status"] == "COMPLETED_SUCCESS", done

    after = fieldcrypt.workspace("test").rotation_status()
    assert after.complete, after.remaining
