"""`make ui` stops cleanly: Ctrl-C (SIGINT to the foreground process group) or SIGTERM ends `dagster dev`
and every process it started (webserver, daemon, code servers), and the port is released.

Runs scripts/dagster_ui.py (what `make ui` execs) on a free loopback port with a throwaway instance;
each process it starts inherits a marker variable, so the test can prove none of them is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = "FIELDCRYPT_UI_TEST_MARKER"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"{MARKER}={token}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_for(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return bool(condition())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_make_ui_stops_with_every_child_process(sig: signal.Signals, tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    token, port = uuid.uuid4().hex, free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDCRYPT_")}
    env.update({"DAGSTER_HOME": str(home), MARKER: token, "PYTHONPATH": str(REPO)})
    env["FIELDCRYPT_LAKE"] = str(tmp_path / "lake")
    env["FIELDCRYPT_KEYSTORE"] = str(tmp_path / "keystore.json")
    command = [sys.executable, "scripts/dagster_ui.py", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    # A process group of its own, like a terminal's foreground job: the signal goes to the whole group.
    ui = subprocess.Popen(
        command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert wait_for(lambda: answers(port), 120), "dagster dev never answered"
        assert len(processes_with(token)) >= 4  # wrapper, dagster dev, webserver, daemon (and code servers)
        os.killpg(ui.pid, sig)
        ui.wait(timeout=60)
        assert ui.returncode == 128 + sig
        assert wait_for(lambda: not processes_with(token), 10), processes_with(token)
        assert not answers(port)
    finally:
        for pid in processes_with(token):
            os.kill(pid, signal.SIGKILL)
        if ui.poll() is None:
            ui.kill()
        if ui.stderr is not None:
            ui.stderr.close()
