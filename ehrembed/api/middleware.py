"""ASGI middleware, outermost first: observe (request id, metrics, access log, audit), auth, body limit.

- :class:`Observe` gives every request an id (``X-Request-ID``), times it, counts it by route
  template and status, writes one access-log line (method, route *template*, status, ms, request
  id: never the path's ids, the query string or a header), and writes the audit row for every
  request to a patient-level route (``openapi_extra`` :data:`ehrembed.api.deps.AUDITED`), whatever
  its outcome: 401, 403, 413 and 422 included (the key is null when none was valid), before the
  request's ASGI call returns; concurrent requests' rows share one commit
  (:class:`ehrembed.store.audit_writer.AuditWriter`). A write
  commits its row before the change (:func:`ehrembed.api.deps.audit_write`) and the row's status is
  set here afterwards; a crash in between leaves the row with status 102 (processing).
- :class:`Authenticate` checks the ``Authorization: Bearer`` key of every ``/v1`` request before
  the body is read, so a request without a valid key gets 401 whatever its body holds. Keys are
  accepted in that header only.
- :class:`BodyLimit` refuses bodies over the limit with 413.

Nothing of a request body is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

from anyio import to_thread
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ehrembed.api.errors import error_body
from ehrembed.api.metrics import Metrics
from ehrembed.store.repository import AuditEntry, finish_audit

access_log = logging.getLogger("ehrembed.access")


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
    """Request id, timing, metrics, the access log and the audit trail (see the module docstring)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, state: Any, router: Router) -> None:
        self.app = app
        self.metrics = metrics
        self.state = state
        self.routes = _flat_routes(router.routes)

    def _route(self, scope: Scope) -> Any:
        """The route this request matches (by path, then method), or None: known before routing runs,
        so requests refused by the middleware (401, 413) are counted and audited under their route."""
        partial = None
        for route in self.routes:
            match, _child = route.matches(scope)
            if match == Match.FULL:
                return route
            if match == Match.PARTIAL and partial is None:
                partial = route
        return partial

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        request_id = uuid.uuid4().hex[:16]
        request_state = scope.setdefault("state", {})
        request_state["request_id"] = request_id
        route = self._route(scope)
        template = getattr(route, "path", None) or "unmatched"

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            method = scope.get("method", "GET")
            seconds = time.perf_counter() - started
            self.metrics.observe(template, method, status, seconds)
            access_log.info('"%s %s" %d %.1fms rid=%s', method, template, status, seconds * 1000, request_id)
            if _audited(route):
                marked = request_state.get("audit") or _unmarked(scope, route)
                caller = request_state.get("caller")
                row = request_state.get("audit_row")
                await to_thread.run_sync(self._audit, caller, template, method, marked, status, row)

    def _audit(
        self, caller: Any, route: str, method: str, marked: tuple[str | None, list[int]], status: int, row: int | None
    ) -> None:
        if row is not None:  # a write's row, committed before its change
            with self.state.session() as session:
                finish_audit(session, row, status)
            return
        dataset, subject_ids = marked
        self.state.audit_writer.write(
            AuditEntry(getattr(caller, "key_id", None), route, method, subject_ids, dataset, status)
        )


def _flat_routes(routes: Any) -> list[Any]:
    """Every endpoint route, routers included with ``include_router`` (no extra prefix) flattened."""
    flat: list[Any] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        flat.extend(_flat_routes(inner.routes) if inner is not None else [route])
    return flat


def _audited(route: Any) -> bool:
    return bool((getattr(route, "openapi_extra", None) or {}).get("x-audit"))


def _unmarked(scope: Scope, route: Any) -> tuple[str | None, list[int]]:
    """Dataset and subject of a request refused before its handler ran: from the path and query only."""
    params: dict[str, Any] = {}
    if route is not None:
        _match, child = route.matches(scope)
        params = dict(child.get("path_params") or {})
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    dataset = params.get("dataset") or (query.get("dataset") or [None])[0]
    subject = params.get("subject_id")
    ids = [int(subject)] if isinstance(subject, int) or (isinstance(subject, str) and subject.isdigit()) else []
    return (str(dataset)[:200] if dataset is not None else None), [i for i in ids if i < 2**63]


class Authenticate:
    """401 for a ``/v1`` request without a valid key, before anything reads its body; else the caller in scope."""

    def __init__(self, app: ASGIApp, verify: Any, cache: Any) -> None:
        self.app = app
        self.verify = verify
        self.cache = cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        scheme, _, secret = headers.get(b"authorization", b"").decode("latin-1").strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            await _unauthorized(send, "missing API key: send 'Authorization: Bearer <key>'")
            return
        digest = hashlib.sha256(secret.encode()).hexdigest()
        caller = self.cache.get(digest)
        if caller is None:
            caller = await to_thread.run_sync(self.verify, secret)
            if caller is None:
                await _unauthorized(send, "invalid or revoked API key")
                return
            self.cache.put(digest, caller)
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


async def _unauthorized(send: Send, message: str) -> None:
    payload = json.dumps(error_body(401, message, "Authorization")).encode()
    headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
