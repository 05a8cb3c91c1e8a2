"""Dependency aliases (FastAPI full-stack template style): the service state, the caller's API key
by scope, and what a request touched for the audit trail."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ehrembed.api.errors import ApiError
from ehrembed.api.state import DatasetHandle, ServiceState
from ehrembed.predict.tasks import TaskSpec, builtin_task_names, parse_task, resolve_tasks
from ehrembed.store.errors import NotFoundError
from ehrembed.store.repository import audit as write_audit
from ehrembed.store.repository import get_task, scope_allows, verify_api_key

_bearer = HTTPBearer(auto_error=False, description="An API key from `ehrembed keys create`")
_VERIFIED_TTL = 10.0
"""Seconds a verified key is trusted without asking the store again (a revocation takes effect within it)."""


@dataclass(frozen=True)
class Caller:
    """The API key a request came with (never its secret)."""

    key_id: int
    name: str
    scope: str


class _KeyCache:
    """Recently verified keys by SHA-256 of the secret, so each request does not write to the store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Caller]] = {}

    def get(self, digest: str) -> Caller | None:
        with self._lock:
            entry = self._entries.get(digest)
        if entry is None or time.monotonic() - entry[0] > _VERIFIED_TTL:
            return None
        return entry[1]

    def put(self, digest: str, caller: Caller) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[digest] = (time.monotonic(), caller)


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def verify_key(state: ServiceState, secret: str) -> Caller | None:
    """The caller a key secret belongs to, or None if it is unknown or revoked (asks the store)."""
    with state.session() as session:
        key = verify_api_key(session, secret)
        return None if key is None else Caller(key.id, key.name, str(key.scope))


def _caller(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller :class:`ehrembed.api.middleware.Authenticate` verified (``_credentials`` documents the scheme)."""
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None:  # only when the app runs without its middleware
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", "Authorization")
    return caller


def require(scope: str) -> Callable[..., Caller]:
    """A dependency that admits keys of ``scope`` or a wider one (read < write < admin)."""

    def check(caller: Annotated[Caller, Depends(_caller)]) -> Caller:
        if not scope_allows(caller.scope, scope):
            raise ApiError(403, f"this endpoint needs a {scope} key; yours ({caller.name}) is {caller.scope}")
        return caller

    return check


ReadKey = Annotated[Caller, Depends(require("read"))]
WriteKey = Annotated[Caller, Depends(require("write"))]
AdminKey = Annotated[Caller, Depends(require("admin"))]


AUDITED: dict[str, object] = {"x-audit": "patient"}
"""``openapi_extra`` of every patient-level route: the audit middleware writes a row for each request
to it, whatever the outcome (handlers add the dataset and subjects with :func:`audit`)."""


def audit(request: Request, dataset: str | None, subject_ids: Iterable[int]) -> None:
    """Name the dataset and subjects a patient-level request touches; the middleware writes the row with its status."""
    request.state.audit = (dataset, [int(i) for i in subject_ids])


def audit_write(request: Request, state: ServiceState, dataset: str, subject_ids: Iterable[int]) -> None:
    """Commit the audit row of a write *before* the change (status 102 until the middleware sets the outcome).

    A crash after the change leaves the row in place, so no change is ever without its row.
    """
    ids = [int(i) for i in subject_ids]
    caller: Caller | None = getattr(request.state, "caller", None)
    route = getattr(request.scope.get("route"), "path", None) or "unmatched"  # the template: never ids
    with state.session() as session:
        row = write_audit(session, caller.key_id if caller else None, route, request.method, ids, dataset, 102)
        row_id = int(row.id)
    request.state.audit = (dataset, ids)
    request.state.audit_row = row_id


def require_subjects(handle: DatasetHandle, subject_ids: Iterable[int], field: str) -> None:
    """404 naming ``field`` unless every subject is in the dataset."""
    known = handle.subject_set()
    unknown = [int(i) for i in subject_ids if int(i) not in known]
    if unknown:
        raise ApiError(404, f"subject {unknown[0]} is not in dataset {handle.name}", field)


def resolve_task(state: ServiceState, name: str) -> TaskSpec:
    """A stored task by name, else a built-in one (never a file path: clients cannot read server files); 404."""
    with state.session() as session:
        try:
            return parse_task(get_task(session, name).definition, source=name)
        except NotFoundError:
            pass
    if name in builtin_task_names():
        return resolve_tasks([name])[0]
    raise ApiError(404, f"unknown task {name!r}; see GET /v1/tasks", "task")
