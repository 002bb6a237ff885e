"""Injecting KMS faults into real boto3 clients that talk to the moto server.

moto cannot enforce key policies, revoke grants or throttle, so those faults are
injected here instead: a botocore `before-send` handler answers chosen operations with
the error response AWS KMS would send, before the request leaves the process. Every
other request goes through to moto unchanged. The handler sees every attempt,
retries included, so `calls` counts what reached (or would have reached) the wire.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders


def _json_11_headers() -> HTTPHeaders:
    headers = HTTPHeaders()
    headers["Content-Type"] = "application/x-amz-json-1.1"
    return headers


class _Body:
    """The `raw` of an AWSResponse: all botocore needs is `stream()`."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


@dataclass
class _Fault:
    code: str
    remaining: int | None  # None: every call


@dataclass
class KmsFaults:
    """Answers chosen KMS operations with an error code; counts every KMS request attempt."""

    calls: Counter[str] = field(default_factory=Counter)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _faults: dict[str, _Fault] = field(default_factory=dict)

    def fail(self, operation: str, code: str, times: int | None = None) -> None:
        """Answer `operation` with `code` the next `times` attempts (None: until cleared)."""
        self._faults[operation] = _Fault(code, times)

    def clear(self) -> None:
        self._faults.clear()

    def reset_counts(self) -> None:
        self.calls.clear()
        self.requests.clear()

    def install(self, events: Any) -> None:
        """Register on a botocore event emitter (a client's `meta.events` or a session's `events`)."""
        events.register("before-send.kms", self.before_send)

    def uninstall(self, events: Any) -> None:
        events.unregister("before-send.kms", self.before_send)

    def before_send(self, request: Any, event_name: str = "", **_: Any) -> AWSResponse | None:
        operation = event_name.rsplit(".", 1)[-1]
        self.calls[operation] += 1
        body = request.body
        self.requests.append((operation, json.loads(body) if body else {}))
        fault = self._faults.get(operation)
        if fault is None or fault.remaining == 0:
            return None  # let the real request through to moto
        if fault.remaining is not None:
            fault.remaining -= 1
        payload = json.dumps({"__type": fault.code, "message": f"injected {fault.code} for {operation}"}).encode()
        return AWSResponse(request.url, 400, _json_11_headers(), _Body(payload))
