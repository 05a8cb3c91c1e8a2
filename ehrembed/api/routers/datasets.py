"""Who is calling, and what the server holds: the datasets it serves (sizes, description coverage, their
embedding sets, indexes and benchmark reports) and the encoders it offers. Aggregates only: no route
here returns a patient's data, so none is audited."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from ehrembed.api.deps import ReadKey, StateDep
from ehrembed.store.repository import current_artifact, list_artifacts, list_datasets
from ehrembed.store.tables import ArtifactKind

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


class ArtifactOut(BaseModel):
    name: str
    encoder: str | None
    """The encoder name an embedding set was made with (what the export's ``encoder`` takes)."""
    dim: int | None
    created_at: datetime
    size_bytes: int


class DatasetDetailOut(DatasetOut):
    stats: dict[str, Any]
    """Codes, time range, splits, events by domain, top codes, description coverage (overall and per
    vocabulary), as ``ehrembed info`` prints them (without the server's path)."""
    embeddings: list[ArtifactOut]
    indexes: list[ArtifactOut]
    reports: list[str]
    """Names of the benchmark reports recorded for it (``GET /v1/reports/{name}``)."""


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


@router.get("/datasets/{dataset}", response_model=DatasetDetailOut)
def dataset_detail(dataset: str, state: StateDep, _key: ReadKey) -> DatasetDetailOut:
    """One dataset: its summary with description coverage, and the embedding sets, indexes and reports
    recorded for it (newest first)."""
    name = dataset
    handle = state.dataset(name)
    with handle.lock.read():
        stats = {k: v for k, v in handle.summary().items() if k != "path"}
    with state.session() as session:
        row = next(d for d in list_datasets(session) if d.name == name)

        def artifacts(kind: ArtifactKind) -> list[ArtifactOut]:
            found = sorted(list_artifacts(session, kind, dataset=name), key=lambda a: (a.created_at, a.id))
            return [
                ArtifactOut(
                    name=a.name,
                    encoder=(a.spec or {}).get("encoder") or (a.spec or {}).get("name"),
                    dim=(a.spec or {}).get("dim"),
                    created_at=a.created_at,
                    size_bytes=a.size_bytes,
                )
                for a in reversed(found)
            ]

        embeddings, indexes = artifacts(ArtifactKind.EMBEDDINGS), artifacts(ArtifactKind.INDEX)
        reports = [a.name for a in artifacts(ArtifactKind.REPORT)]
        return DatasetDetailOut(
            name=name,
            source=str(row.source),
            subjects=row.n_subjects,
            events=row.n_events,
            index=bool(indexes),
            stats=stats,
            embeddings=embeddings,
            indexes=indexes,
            reports=reports,
        )


@router.get("/encoders", response_model=list[str])
def encoders(state: StateDep, _key: ReadKey) -> list[str]:
    """The encoder names heads and embeddings may name: the built-in ones served here and the registered models."""
    return state.encoder_names()
