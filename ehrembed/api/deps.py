"""Dependency aliases (FastAPI full-stack template style): the service state, the caller's API key
by scope, and what a request touched for the audit trail."""

from __future__ import annotations

import hashlib
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


def _caller(
    request: Request,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", "Authorization")
    digest = hashlib.sha256(credentials.credentials.encode()).hexdigest()
    cache: _KeyCache = request.app.state.key_cache
    caller = cache.get(digest)
    if caller is None:
        with state.session() as session:
            key = verify_api_key(session, credentials.credentials)
            if key is None:
                raise ApiError(401, "invalid or revoked API key", "Authorization")
            caller = Caller(key.id, key.name, str(key.scope))
        cache.put(digest, caller)
    request.state.caller = caller
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


def audit(request: Request, dataset: str | None, subject_ids: Iterable[int]) -> None:
    """Mark the request as a patient-level access; the audit middleware writes the row with its status."""
    request.state.audit = (dataset, [int(i) for i in subject_ids])


def require_subjects(handle: DatasetHandle, subject_ids: Iterable[int], field: str) -> None:
    """404 naming ``field`` unless every subject is in the dataset."""
    known = set(handle.dataset.splits().get_column("subject_id").to_list())
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
