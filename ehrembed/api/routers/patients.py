"""Patients: add or replace them (MEDS events or a FHIR Bundle), read a record, find similar patients, and
forecast their most likely new codes (the outlook)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import numpy as np
import polars as pl
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from ehrembed.api.deps import AUDITED, ReadKey, StateDep, WriteKey, audit, audit_write
from ehrembed.api.errors import ApiError
from ehrembed.api.schemas import (
    FiltersIn,
    OutlookItemOut,
    OutlookOut,
    PatientsIn,
    QueryInt,
    RecordOut,
    SimilarIn,
    SimilarOut,
    Time,
    UpsertOut,
)
from ehrembed.api.state import DatasetHandle
from ehrembed.ehr.serialize import Serializer
from ehrembed.ehr.upsert import bundle_frames, events_frame
from ehrembed.retrieval.similar import SimilarFilters, SimilarResult
from ehrembed.schema import MAX_SUBJECT_ID, Patient
from ehrembed.services.prognosis import outlook as forecast

router = APIRouter(prefix="/v1", tags=["patients"])

SubjectId = Annotated[QueryInt, Path(ge=0, le=MAX_SUBJECT_ID, description="subject_id in the dataset")]
DatasetQuery = Annotated[str, Query(min_length=1, max_length=200, description="Dataset name (see GET /readyz)")]
AsOf = Annotated[Time | None, Query(description="ISO time; default: the subject's latest record")]


@router.post("/datasets/{dataset}/patients", response_model=UpsertOut, openapi_extra=AUDITED)
def upsert_patients(
    dataset: Annotated[str, Path(min_length=1, max_length=200)],
    body: PatientsIn,
    state: StateDep,
    request: Request,
    _key: WriteKey,
) -> UpsertOut:
    """Add patients, or replace them wholesale: from MEDS events, or from a FHIR R4 Bundle."""
    audit(request, dataset, [])
    state.dataset(dataset)  # 404 before any work
    if body.events is not None:
        events = events_frame([e.model_dump() for e in body.events])
        codes = pl.DataFrame([c.model_dump() for c in body.codes]) if body.codes else None
        source_ids = None
    else:
        assert body.bundle is not None
        events, codes, source_ids = bundle_frames(body.bundle)
    audit_write(request, state, dataset, events.get_column("subject_id").unique().sort().to_list())
    report = state.upsert(dataset, events, codes, source_ids)
    return UpsertOut(dataset=dataset, **report.as_dict())


def _filters(body: FiltersIn) -> SimilarFilters:
    return SimilarFilters.of(body.splits, body.sex, body.min_age, body.max_age, body.has_codes)


def _similar_out(dataset: str, result: SimilarResult) -> JSONResponse:
    """The :class:`SimilarOut` body, built directly (similar search is the hottest path; tests check the shape)."""
    as_of = result.query.as_of
    return JSONResponse(
        {
            "dataset": dataset,
            "subject_id": result.query.subject_id,
            "as_of": as_of.isoformat() if as_of else None,
            "k": result.k,
            "neighbors": result.neighbors_json(),
        }
    )


def _patient_as_of(
    handle: DatasetHandle, dataset: str, subject_id: int, as_of: dt.datetime | None
) -> tuple[Patient, dt.datetime]:
    """The stored subject and the time asked (default: its latest dated event); 404 / 422 otherwise."""
    try:
        patient = handle.dataset.patient(subject_id)
    except KeyError:
        raise ApiError(404, f"subject {subject_id} is not in dataset {dataset}", "subject_id") from None
    when = as_of if as_of is not None else patient.last_time
    if when is None:
        raise ApiError(422, f"subject {subject_id} has no dated events; pass as_of", "as_of")
    return patient, when


@router.get("/patients/{subject_id}/record", response_model=RecordOut, openapi_extra=AUDITED)
def record(
    subject_id: SubjectId, dataset: DatasetQuery, state: StateDep, request: Request, _key: ReadKey, as_of: AsOf = None
) -> RecordOut:
    """The subject's Markdown record as of a time (only events at or before it)."""
    audit(request, dataset, [subject_id])
    handle = state.dataset(dataset)
    with handle.lock.read():
        patient, when = _patient_as_of(handle, dataset, subject_id, as_of)
        text = Serializer(handle.vocabulary).serialize(patient, as_of=when)
    return RecordOut(dataset=dataset, subject_id=subject_id, as_of=when, record=text)


@router.get("/patients/{subject_id}/outlook", response_model=OutlookOut, openapi_extra=AUDITED)
def outlook(
    subject_id: SubjectId,
    dataset: DatasetQuery,
    state: StateDep,
    request: Request,
    _key: ReadKey,
    horizon_days: Annotated[QueryInt, Query(ge=1, le=3650, description="Days after as_of")] = 365,
    top: Annotated[QueryInt, Query(ge=1, le=100)] = 10,
    as_of: AsOf = None,
) -> OutlookOut:
    """The subject's most likely new codes within the horizon, with descriptions and probabilities: the dataset's
    prognostic model (pretrained on its train split) read zero-shot, no labelled example involved."""
    audit(request, dataset, [subject_id])
    handle = state.dataset(dataset)
    model = state.prognosis(dataset)
    with handle.lock.read():
        _patient, when = _patient_as_of(handle, dataset, subject_id, as_of)
        descriptions = {c: d for c in model.target_codes if (d := handle.vocabulary.describe(c))}
        items = forecast(
            model, handle.dataset, subject_id, when, horizon_days=horizon_days, top=top, descriptions=descriptions,
            ontology=handle.count_ontology(),
        )  # fmt: skip
    return OutlookOut(
        dataset=dataset,
        subject_id=subject_id,
        as_of=when,
        horizon_days=horizon_days,
        model=model.name,
        items=[OutlookItemOut(**item.as_dict()) for item in items],
    )


@router.get("/patients/{subject_id}/similar", response_model=SimilarOut, openapi_extra=AUDITED)
def similar_to_subject(
    subject_id: SubjectId,
    dataset: DatasetQuery,
    state: StateDep,
    request: Request,
    _key: ReadKey,
    k: Annotated[QueryInt, Query(ge=1, le=100)] = 10,
    as_of: AsOf = None,
    split: Annotated[list[str] | None, Query(max_length=3)] = None,
    sex: Annotated[str | None, Query(max_length=8)] = None,
    min_age: Annotated[float | None, Query(ge=0, le=150)] = None,
    max_age: Annotated[float | None, Query(ge=0, le=150)] = None,
    has_code: Annotated[list[str] | None, Query(max_length=20)] = None,
) -> JSONResponse:
    """The k most similar patients (never the subject itself), with what their records share."""
    audit(request, dataset, [subject_id])
    handle = state.dataset(dataset)
    similar = handle.similar
    if similar is None:
        raise ApiError(409, f"dataset {dataset} has no index yet; build one with `ehrembed index`", "dataset")
    filters = SimilarFilters.of(split, sex, min_age, max_age, has_code)
    with handle.lock.read():
        if similar.attributes.positions(np.asarray([subject_id], dtype=np.int64))[0] < 0:
            raise ApiError(404, f"subject {subject_id} is not in dataset {dataset}", "subject_id")
        result = similar.by_subject(subject_id, as_of=as_of, k=k, filters=filters)
    request.state.audit = (dataset, [subject_id, *(n.subject_id for n in result.neighbors)])
    return _similar_out(dataset, result)


@router.post("/similar", response_model=SimilarOut, openapi_extra=AUDITED)
def similar_to_record(body: SimilarIn, state: StateDep, request: Request, _key: ReadKey) -> JSONResponse:
    """The k patients most similar to an inline record text (embedded with the index's encoder)."""
    audit(request, body.dataset, [])
    handle = state.dataset(body.dataset)
    similar = handle.similar
    if similar is None:
        raise ApiError(409, f"dataset {body.dataset} has no index yet; build one with `ehrembed index`", "dataset")
    if similar.encoder is None:
        raise ApiError(
            409, "the index's encoder is not available to this service, so text cannot be embedded", "record"
        )
    with handle.lock.read():
        result = similar.by_text(body.record, k=body.k, filters=_filters(body.filters))
    audit(request, body.dataset, [n.subject_id for n in result.neighbors])
    return _similar_out(body.dataset, result)
