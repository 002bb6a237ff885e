"""Real services for the multi-worker test: PostgreSQL, Redis and Celery workers on loopback.

Each is started on a free port with a temporary data directory, waited for, bounded in
time, and torn down (SIGTERM, then SIGKILL) whatever the test did. PostgreSQL refuses to
run as root, so as root its commands run as the `postgres` system user (`runuser`), in a
data directory that user owns. The binaries come from Debian's `postgresql` and
`redis-server` packages (`.ci/run` installs them when missing).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

START_TIMEOUT_SECONDS = 60
DB_USER = "fieldcrypt"
DB_NAME = "dagster"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_SECONDS} s")


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql)")
    return found


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1; yields its URL (trust auth, loopback only)."""
    as_root = os.geteuid() == 0
    data_root = Path(tempfile.mkdtemp(prefix="fieldcrypt-pg-"))
    prefix: list[str] = []
    if as_root:
        owner = pwd.getpwnam("postgres")
        os.chown(data_root, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = data_root / "data", data_root / "server.log"
    port = free_port()
    subprocess.run(
        [*prefix, _postgres_bin("initdb"), "-D", str(data), f"--username={DB_USER}", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        timeout=START_TIMEOUT_SECONDS,
    )
    options = f"-p {port} -k {data_root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    pg_ctl = _postgres_bin("pg_ctl")
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start"],
        check=True,
        capture_output=True,
        timeout=START_TIMEOUT_SECONDS + 10,
    )
    try:
        subprocess.run(
            [*prefix, _postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, DB_NAME],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_SECONDS,
        )
        yield f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{port}/{DB_NAME}"
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60
        )
        shutil.rmtree(data_root, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway Redis on 127.0.0.1 with no persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="fieldcrypt-redis-")
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir]
    process = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, "redis-server", process)
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def celery_workers(names: list[str], env: Mapping[str, str], cwd: Path, log_dir: Path) -> Iterator[dict[str, int]]:
    """Celery workers running Dagster steps (dagster_celery's app), one task at a time each; yields name -> pid.

    `--pool solo` runs each step in the worker's own process, so a step's pid names its worker.
    """
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in names:
            log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process below
            processes[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "--app",
                    "tests.celery_app",
                    "worker",
                    "--pool",
                    "solo",
                    "--hostname",
                    f"{name}@%h",
                    "--queues",
                    "dagster",
                    "--loglevel",
                    "INFO",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                cwd=cwd,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
        yield {name: process.pid for name, process in processes.items()}
    finally:
        for process in processes.values():
            stop(process)


def wait_for_workers(app_module: str, names: list[str], env: Mapping[str, str], cwd: Path) -> None:
    """Wait until every named worker answers a ping through the broker."""
    probe = (
        "import importlib, sys; app = importlib.import_module(sys.argv[1]).app; "
        "print(' '.join(name for reply in (app.control.ping(timeout=2.0) or []) for name in reply))"
    )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        answer = subprocess.run(
            [sys.executable, "-c", probe, app_module], cwd=cwd, env=dict(env), capture_output=True, timeout=30
        )
        answered = answer.stdout.decode().split()
        if all(any(a.startswith(f"{name}@") for a in answered) for name in names):
            return
        time.sleep(0.5)
    raise RuntimeError(f"celery workers {names} did not answer within {START_TIMEOUT_SECONDS} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process (its whole session when it leads one), then SIGKILL after 15 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=15)
