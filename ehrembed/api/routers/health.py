"""Liveness, readiness and Prometheus metrics (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ehrembed.api.deps import StateDep
from ehrembed.api.errors import ApiError
from ehrembed.api.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: StateDep) -> dict[str, object]:
    """Models, indexes and heads are loaded and the store answers."""
    if not state.ready:
        raise ApiError(503, "still loading")
    from sqlalchemy import text

    with state.session() as session:
        session.execute(text("SELECT 1"))
    return {
        "status": "ready",
        "encoders": sorted(state.encoders),
        "datasets": {name: {"index": h.similar is not None} for name, h in sorted(state.datasets.items())},
        "heads": len(state.heads),
        "guidelines": state.kb is not None,
    }


@router.get("/metrics", response_class=Response)
def metrics(request: Request, state: StateDep) -> Response:
    """Prometheus text format."""
    m = request.app.state.metrics
    m.loaded.labels(kind="datasets").set(len(state.datasets))
    m.loaded.labels(kind="heads").set(len(state.heads))
    m.loaded.labels(kind="indexes").set(sum(h.similar is not None for h in state.datasets.values()))
    return Response(m.render(), media_type=CONTENT_TYPE)
