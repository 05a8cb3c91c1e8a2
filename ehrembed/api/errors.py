"""Every error the API returns is a 4xx JSON body naming the field and the problem.

``{"error": {"status": 404, "field": "subject_id", "message": "subject 42 is not in dataset demo"}}``.
Routers raise :class:`ApiError`; the handlers here also turn request validation errors and the
library's error family (:mod:`ehrembed.errors`: input → 400, not found → 404, conflict → 409) into
that shape, so no stack trace or internal detail reaches a client: input errors lose any server path
(:func:`public_message`), and anything unexpected is a 500 that carries only a request id, while the
log keeps the traceback under that id.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ehrembed.errors import ConflictError, EhrembedError, NotFoundError

log = logging.getLogger("ehrembed.api")


class ApiError(Exception):
    """An error with an HTTP status, the request field at fault (if any) and a message for people."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


_SERVER_PATH = re.compile(r"(?<![\w/:.~-])/(?!v1/)[^\s'\",;()]*/[^\s'\",;()]*")


def public_message(message: str) -> str:
    """``message`` without server file paths (``/srv/data/x.parquet`` → ``<server path>``); API routes stay."""
    return _SERVER_PATH.sub("<server path>", message)


def error_body(status: int, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"status": status, "field": field, "message": message, **extra}}


def _json(status: int, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(status, message, field, **extra), status_code=status)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
            problems.append({"field": ".".join(loc) or None, "message": str(error.get("msg", "invalid"))})
        first = problems[0] if problems else {"field": None, "message": "invalid request"}
        return _json(422, str(first["message"]), first["field"], problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _json(exc.status_code, str(exc.detail))

    @app.exception_handler(EhrembedError)
    async def _family(_request: Request, exc: EhrembedError) -> JSONResponse:
        # The library's errors for people (MedsError, TaskError, HeadError, ...). Any other exception,
        # a ValueError from numpy included, is a bug and goes to the 500 handler below.
        status = 404 if isinstance(exc, NotFoundError) else 409 if isinstance(exc, ConflictError) else 400
        return _json(status, public_message(str(exc)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        route = getattr(request.scope.get("route"), "path", None) or "unmatched"
        # The route template, not the path (ids) or query; the traceback stays in this log.
        log.error("unhandled %s in %s [request %s]", type(exc).__name__, route, request_id, exc_info=exc)
        response = _json(500, f"internal error; quote request id {request_id} to the operator", request_id=request_id)
        response.headers["X-Request-ID"] = str(request_id)  # this response bypasses the middleware that adds it
        return response
