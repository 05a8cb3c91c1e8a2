"""Who is calling, and what the server holds: the datasets it serves (with their search indexes) and the
encoders it offers."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from ehrembed.api.deps import ReadKey, StateDep
from ehrembed.store.repository import current_artifact, list_datasets

router = APIRouter(prefix="/v1", tags=["datasets"])


class WhoAmIOut(BaseModel):
    name: str
    scope: str


class DatasetOut(BaseModel):
    name: str
    source: str
    subjects: int
    events: int
    index: bool
    """Whether similar-patient search has an index recorded for it."""


@router.get("/whoami", response_model=WhoAmIOut)
def whoami(key: ReadKey) -> WhoAmIOut:
    """The key's name and scope (never its secret): what a client may show and do."""
    return WhoAmIOut(name=key.name, scope=key.scope)


@router.get("/datasets", response_model=list[DatasetOut])
def datasets(state: StateDep, _key: ReadKey) -> list[DatasetOut]:
    """The registered datasets with their sizes (no server paths)."""
    with state.session() as session:
        return [
            DatasetOut(
                name=d.name,
                source=str(d.source),
                subjects=d.n_subjects,
                events=d.n_events,
                index=current_artifact(session, "index", d.name) is not None,
            )
            for d in list_datasets(session)
        ]


@router.get("/encoders", response_model=list[str])
def encoders(state: StateDep, _key: ReadKey) -> list[str]:
    """The encoder names heads and embeddings may name: the built-in ones served here and the registered models."""
    return state.encoder_names()
