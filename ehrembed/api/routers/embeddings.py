"""Embeddings: vectors for subjects or inline records, and whole embedding sets exported for analysts."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from starlette.background import BackgroundTask

from ehrembed.api.deps import AUDITED, ReadKey, StateDep, audit, require_subjects, resolve_task
from ehrembed.api.errors import ApiError
from ehrembed.api.schemas import EmbeddingRow, EmbeddingsIn, EmbeddingsOut, QueryInt
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.encoders.job import EmbedConfig, embed_records
from ehrembed.store.repository import current_artifact
from ehrembed.store.tables import ArtifactKind

router = APIRouter(prefix="/v1/embeddings", tags=["embeddings"])

MEDIA = {"parquet": "application/vnd.apache.parquet", "npy": "application/octet-stream", "csv": "text/csv"}


@router.post("", response_model=EmbeddingsOut, openapi_extra=AUDITED)
def embed(body: EmbeddingsIn, state: StateDep, request: Request, _key: ReadKey) -> EmbeddingsOut:
    """Vectors of stored subjects' records (as of a time) or of inline record texts, with the named encoder."""
    audit(request, body.dataset, body.subject_ids or [])  # first, so a request refused below names them too
    encoder = state.encoder(body.encoder)
    config = EmbedConfig(question=resolve_task(state, body.task).question if body.task is not None else None)
    if body.records is not None:
        vectors = encoder.encode(body.records, instruction=config.instruction_for(encoder))
        rows = [EmbeddingRow(subject_id=None, as_of=None, vector=v.tolist()) for v in vectors]
        return EmbeddingsOut(encoder=body.encoder, dim=encoder.spec.dim, rows=rows)
    assert body.dataset is not None and body.subject_ids is not None
    handle = state.dataset(body.dataset)
    as_of = body.as_of
    with handle.lock.read():
        require_subjects(handle, body.subject_ids, "subject_ids")
        embeddings, report = embed_records(handle.dataset, encoder, config, subject_ids=body.subject_ids, as_of=as_of)
    if report.skipped:
        reasons = ", ".join(f"{k}: {v}" for k, v in report.skipped.items())
        raise ApiError(422, f"some subjects have no record to embed ({reasons})", "as_of")
    rows = [
        EmbeddingRow(subject_id=int(sid), as_of=when.astype("datetime64[us]").item(), vector=vec.tolist())
        for sid, when, vec in zip(embeddings.subject_ids, embeddings.as_of, embeddings.vectors, strict=True)
    ]
    return EmbeddingsOut(encoder=body.encoder, dim=encoder.spec.dim, rows=rows)


@router.get(
    "/export",
    response_class=FileResponse,
    response_model=None,
    openapi_extra=AUDITED,
    responses={
        200: {"content": {"application/vnd.apache.parquet": {}, "application/octet-stream": {}, "text/csv": {}}}
    },
)
def export(
    state: StateDep,
    request: Request,
    _key: ReadKey,
    dataset: Annotated[str, Query(min_length=1, max_length=200)],
    encoder: Annotated[str, Query(min_length=1, max_length=200, description="Embedding set name or encoder name")],
    format: Annotated[Literal["parquet", "npy", "csv"], Query()] = "parquet",
    offset: Annotated[QueryInt, Query(ge=0, description="First row to export")] = 0,
    limit: Annotated[QueryInt | None, Query(ge=1, description="Rows to export from offset (default: all)")] = None,
) -> StreamingResponse | FileResponse:
    """The newest embedding set recorded for a dataset and encoder, as Parquet, NumPy or CSV.

    ``encoder`` matches the set's recorded name, its model's name, or the encoder name it was
    embedded with (``ehrembed embed DIR --encoder student`` → ``encoder=student``).

    ``offset`` and ``limit`` export one page of rows, so a large set can be fetched in parts;
    ``X-Total-Rows`` gives the set's size and ``X-Rows`` the page's.
    """
    audit(request, dataset, [])
    state.dataset(dataset)
    with state.session() as session:
        artifact = current_artifact(
            session,
            ArtifactKind.EMBEDDINGS,
            dataset,
            matches=lambda a: encoder in (a.name, (a.spec or {}).get("name"), (a.spec or {}).get("encoder")),
        )
        found = None if artifact is None else artifact.path
    if found is None:
        raise ApiError(404, f"no embeddings of dataset {dataset} by encoder {encoder!r} are recorded", "encoder")
    whole = EmbeddingSet.load(found)
    if offset > len(whole):
        raise ApiError(422, f"offset {offset} is past the end of the embedding set ({len(whole)} rows)", "offset")
    embeddings = whole.page(offset, limit)
    audit(request, dataset, embeddings.subject_ids.tolist())
    filename = f"{dataset}-{encoder}.{format}".replace("/", "_")
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "X-Rows": str(len(embeddings)),
        "X-Total-Rows": str(len(whole)),
    }
    if format == "csv":
        return StreamingResponse(embeddings.csv_chunks(), media_type=MEDIA["csv"], headers=headers)
    folder = Path(tempfile.mkdtemp(prefix="ehrembed-export-"))
    target = embeddings.export(format, folder / filename)

    def cleanup() -> None:
        target.unlink(missing_ok=True)
        folder.rmdir()

    return FileResponse(target, media_type=MEDIA[format], headers=headers, background=BackgroundTask(cleanup))
