"""A client-side limit on a workspace's key-provider (KMS) calls per second, shared by a process's threads.

The `kms` pool bounds how many runs call the KMS at once; this bounds how fast each process calls
it for one workspace, so a backfill of many partitions (several threads per run, several runs)
stays under the customer's KMS request quota instead of leaning on throttling and retries.
One limiter per workspace and process (`for_workspace`): workspaces never share a budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fieldcrypt.errors import ConfigError


class CallRateLimit:
    """At most `per_second` calls per second on average, in bursts of at most `burst` (a token bucket)."""

    def __init__(
        self,
        per_second: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not per_second > 0:
            raise ConfigError(f"a KMS call rate must be positive, got {per_second}")
        self.per_second = per_second
        self._capacity = float(max(1, burst))
        self._tokens = self._capacity
        self._clock, self._sleep = clock, sleep
        self._stamp = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Wait until one more call fits in the budget, then take it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self.per_second)
            self._stamp = now
            self._tokens -= 1
            wait = -self._tokens / self.per_second if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)


_LIMITS: dict[str, CallRateLimit] = {}
_LIMITS_LOCK = threading.Lock()


def for_workspace(workspace: str, per_second: float | None) -> CallRateLimit | None:
    """The process's limiter of `workspace` (None: unlimited); the same object for every Workspace of it."""
    if per_second is None:
        return None
    with _LIMITS_LOCK:
        limit = _LIMITS.get(workspace)
        if limit is None or limit.per_second != per_second:
            limit = _LIMITS[workspace] = CallRateLimit(per_second)
        return limit
