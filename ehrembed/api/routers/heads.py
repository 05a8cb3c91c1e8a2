"""Few-shot heads: fit from a task or inline examples, then predict with evidence."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Path, Request

from ehrembed.api.deps import AUDITED, ReadKey, StateDep, WriteKey, audit, audit_write, require_subjects, resolve_task
from ehrembed.api.errors import ApiError
from ehrembed.api.schemas import (
    HeadIn,
    HeadOut,
    MedsPredictionOut,
    MedsPredictOut,
    PassageOut,
    PredictIn,
    PredictionOut,
    PredictOut,
)
from ehrembed.encoders.job import AsOf
from ehrembed.predict.features import FUSION_PREFIX
from ehrembed.predict.fitted import FittedHead, embed_for_head
from ehrembed.schema import Label
from ehrembed.services.heads import fit_recorded_head, task_examples

router = APIRouter(prefix="/v1/heads", tags=["heads"])


def _head_out(fitted: FittedHead) -> HeadOut:
    card = fitted.card
    return HeadOut(
        head_id=fitted.head_id,
        kind=card["kind"],
        dataset=card["dataset"],
        task=card.get("task"),
        encoder=fitted.encoder_name,
        n_examples=card["n_examples"],
        n_positive=card["n_positive"],
        metrics=card["metrics"],
        params=card["params"],
    )


@router.post("", response_model=HeadOut, status_code=201, openapi_extra=AUDITED)
def fit(body: HeadIn, state: StateDep, request: Request, _key: WriteKey) -> HeadOut:
    """Fit a head on a task's labels (a stable sample of ``max_examples``) or on inline labelled examples."""
    audit(request, body.dataset, sorted({e.subject_id for e in body.examples or []}))
    handle = state.dataset(body.dataset)
    fusion = body.encoder.startswith(FUSION_PREFIX)
    encoder = state.encoder(body.encoder.removeprefix(FUSION_PREFIX))
    spec = None
    with handle.lock.read():
        if body.task is not None:
            spec = resolve_task(state, body.task)
            examples = task_examples(handle.dataset, spec, body.max_examples)
        else:
            assert body.examples is not None
            require_subjects(handle, [e.subject_id for e in body.examples], "examples")
            examples = [Label(e.subject_id, e.prediction_time, e.boolean_value) for e in body.examples]
        audit_write(request, state, body.dataset, sorted({e.subject_id for e in examples}))
        with state.session() as session:
            fitted = fit_recorded_head(
                handle.dataset,
                encoder,
                examples,
                body.head,
                state.heads_dir(),
                dataset_name=body.dataset,
                task=spec,
                task_name=body.task,
                fusion=fusion,
                session=session,
            )
    state.add_head(fitted)
    return _head_out(fitted)


@router.get("/{head_id}", response_model=HeadOut)
def show(head_id: Annotated[str, Path(min_length=1, max_length=64)], state: StateDep, _key: ReadKey) -> HeadOut:
    """A fitted head's card: task, encoder, sizes, chosen parameters and validation metrics."""
    return _head_out(state.head(head_id))


@router.post("/{head_id}/predict", response_model=PredictOut | MedsPredictOut, openapi_extra=AUDITED)
def predict(
    head_id: Annotated[str, Path(min_length=1, max_length=64)],
    body: PredictIn,
    state: StateDep,
    request: Request,
    _key: ReadKey,
) -> PredictOut | MedsPredictOut:
    """Probabilities for stored subjects, labelled examples or inline records, with the most similar labelled
    examples and relevant guideline passages as evidence; ``format: meds`` answers in meds-evaluation's rows."""
    asked = body.subject_ids or sorted({e.subject_id for e in body.examples or []})
    audit(request, None, asked)
    fitted = state.head(head_id)
    audit(request, fitted.card["dataset"], asked)
    encoder = state.encoder_for(fitted.spec)
    if encoder is None:
        raise ApiError(409, f"the encoder of head {head_id} ({fitted.spec.name}) is not available here", "head_id")
    augmenter = state.augmenter if body.guidelines else None
    passages: list[list[PassageOut]] = []
    if body.records is not None:
        if fitted.fusion is not None:
            raise ApiError(
                422, f"head {head_id} ({fitted.encoder_name}) scores stored subjects only: give subject_ids", "records"
            )
        vectors, subjects, times = embed_for_head(fitted, encoder, records=body.records)
        features = fitted.features(vectors)
        for text in body.records:
            kb = state.kb
            hits = kb.search(text[:2000], k=body.guidelines, per_guideline=1) if augmenter and kb else []
            passages.append([PassageOut(**h.as_dict()) for h in hits])
    else:
        dataset = fitted.card["dataset"]
        handle = state.dataset(dataset)
        with handle.lock.read():
            require_subjects(handle, asked, "examples" if body.examples is not None else "subject_ids")
            as_of: AsOf = body.as_of
            if body.examples is not None:
                wanted: dict[int, list[dt.datetime]] = {}
                for example in body.examples:
                    wanted.setdefault(example.subject_id, []).append(example.prediction_time)
                as_of = wanted
            vectors, subjects, times = handle.head_vectors(
                fitted, encoder, asked, as_of, state.embedding_cache(encoder)
            )
            ontology = handle.count_ontology() if fitted.fusion is not None else None
            features = fitted.features(vectors, handle.dataset, subjects, times, ontology)
            for sid, when in zip(subjects, times, strict=True):
                hits = []
                if augmenter is not None and sid is not None and when is not None:
                    hits = handle.guideline_passages(augmenter, sid, when)[: body.guidelines]
                passages.append([PassageOut(**h.as_dict()) for h in hits])
    probabilities, evidence = fitted.predict(
        vectors, evidence=0 if body.format == "meds" else body.evidence, features=features
    )
    if body.format == "meds":
        truth = {(e.subject_id, e.prediction_time): e.boolean_value for e in body.examples or []}
        rows = []
        for sid, when, p in zip(subjects, times, probabilities, strict=True):
            assert sid is not None and when is not None  # records are refused with format meds
            rows.append(
                MedsPredictionOut(
                    subject_id=sid,
                    prediction_time=when,
                    boolean_value=truth.get((sid, when)),
                    predicted_boolean_probability=float(p),
                    predicted_boolean_value=bool(p >= 0.5),
                )
            )
        return MedsPredictOut(head_id=head_id, predictions=rows)
    predictions = [
        PredictionOut(subject_id=sid, as_of=when, probability=float(p), similar_examples=ev, guidelines=gl)
        for sid, when, p, ev, gl in zip(subjects, times, probabilities, evidence, passages, strict=True)
    ]
    return PredictOut(head_id=head_id, predictions=predictions)
