"""ASGI middleware: request size limits, per-route metrics and the audit trail.

The audit row (key, endpoint, dataset, subject ids, status) is written after the response for
every request a router marked as patient-level (:func:`ehrembed.api.deps.audit`), whatever its
status, so failed attempts are on record too. Nothing of a request body is logged.
"""

from __future__ import annotations

import json
import time
from typing import Any

from anyio import to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ehrembed.api.errors import error_body
from ehrembed.api.metrics import Metrics
from ehrembed.store.repository import audit as write_audit


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 (declared length or, when chunked, counted)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await _refuse(send, self.max_bytes)
                return
            await self.app(scope, receive, send)
            return
        if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await _refuse(send, self.max_bytes)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _refuse(send: Send, max_bytes: int) -> None:
    payload = json.dumps(error_body(413, f"request body is larger than {max_bytes} bytes", "body")).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


class Observe:
    """Time each request, count it by route template and status, and write audit rows."""

    def __init__(self, app: ASGIApp, metrics: Metrics, state: Any) -> None:
        self.app = app
        self.metrics = metrics
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(route, scope.get("method", "GET"), status, time.perf_counter() - started)
            request_state = scope.get("state") or {}
            marked = request_state.get("audit")
            if marked is not None:
                caller = request_state.get("caller")
                await to_thread.run_sync(self._audit, caller, route, scope.get("method", "GET"), marked, status)

    def _audit(self, caller: Any, route: str, method: str, marked: tuple[str | None, list[int]], status: int) -> None:
        dataset, subject_ids = marked
        with self.state.session() as session:
            write_audit(session, getattr(caller, "key_id", None), route, method, subject_ids, dataset, status)
