"""`make ui`: `dagster dev` that stops, every child with it, on Ctrl-C (SIGINT) or SIGTERM.

`dagster dev` starts a webserver, a daemon and code servers. Interrupted from a shell that
started it in the background (SIGINT then arrives ignored), or sent SIGTERM, it leaves them
running with the port dead. Here `dagster dev` runs in a session of its own; the first
SIGINT or SIGTERM is passed to that whole session as SIGINT (Dagster's graceful stop), then
SIGTERM and finally SIGKILL if anything is still there after a grace period.

Usage: python scripts/dagster_ui.py <dagster dev arguments>
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

GRACE_SECONDS = 15.0  # Dagster's own shutdown of webserver, daemon threads and code servers takes a few seconds
TERM_SECONDS = 5.0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pgid: int, child: subprocess.Popen[bytes]) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to every process of the group until none is left."""
    for sig, wait in ((signal.SIGINT, GRACE_SECONDS), (signal.SIGTERM, TERM_SECONDS), (signal.SIGKILL, TERM_SECONDS)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            child.poll()  # reap `dagster dev` itself so it does not linger as a zombie of the group
            if not _group_alive(pgid):
                return
            time.sleep(0.2)


def main(argv: list[str]) -> int:
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    # Installed before the child starts, and over an inherited "ignore" (a shell's background job).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    child = subprocess.Popen([dagster, "dev", *argv], start_new_session=True)  # noqa: S603 (the venv's dagster)
    pgid = child.pid
    while child.poll() is None and not stopping:
        time.sleep(0.2)
    code = child.returncode
    _stop_group(pgid, child)  # also when `dagster dev` ended by itself: its code servers may outlive it
    if stopping:
        name = signal.Signals(stopping[0]).name
        print(f"dagster_ui: stopped dagster dev and every process it started ({name})", file=sys.stderr)
        return 128 + stopping[0]
    return code if code is not None else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
