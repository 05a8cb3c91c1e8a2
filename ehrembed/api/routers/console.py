"""The web console at ``/ui``: three static files from the package, served with a strict Content-Security-Policy.

The page itself holds no data and needs no key (it is outside ``/v1``); everything it shows comes from
the ``/v1`` API with the key the user enters, so the console adds no route around auth or audit. Scripts
and styles come from this origin only (no inline script, no third-party asset), so it works offline.
"""

from __future__ import annotations

import importlib.resources
from functools import cache

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from ehrembed.api.errors import ApiError

router = APIRouter(prefix="/ui", include_in_schema=False)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
FILES = {"index.html": "text/html; charset=utf-8", "console.js": "text/javascript", "console.css": "text/css"}


@cache
def _read(name: str) -> bytes:
    return importlib.resources.files("ehrembed.api").joinpath("console", name).read_bytes()


@router.get("")
def console_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/")
@router.get("/{name}")
def console_file(name: str = "index.html") -> Response:
    if name not in FILES:
        raise ApiError(404, f"no console file {name!r}")
    return Response(_read(name), media_type=FILES[name], headers=HEADERS)
