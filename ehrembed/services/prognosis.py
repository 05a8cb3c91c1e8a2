"""Prognostic models as recorded artifacts, and a patient's zero-shot outlook from the current one.

``ehrembed pretrain`` and the main job record each model as a ``model`` artifact whose spec has
``kind: prognosis``; the current model of a dataset is the newest such artifact whose folder still holds a
model (:func:`recorded_prognosis`). :func:`outlook` is the one rule for "what is this patient likely to
have next": the model's probability that each target occurs within the horizon, for codes the patient has
not had up to the time asked and that the dataset describes, highest first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy.orm import Session

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.encoders.embeddings import PREDICTION_TIME
from ehrembed.errors import NotFoundError
from ehrembed.predict.ontology import Ontology
from ehrembed.predict.prognosis.folder import is_prognosis_folder
from ehrembed.predict.prognosis.model import PrognosisModel
from ehrembed.store.catalog import record_artifact
from ehrembed.store.repository import current_artifact


def record_prognosis(session: Session, model_dir: Path, dataset: MedsDataset, *, method: str) -> None:
    """Record a prognostic model folder for ``dataset`` (what :func:`recorded_prognosis` finds)."""
    spec = {"kind": "prognosis", "method": method}
    record_artifact(session, "model", model_dir.name, model_dir, spec, dataset.name, dataset.root)


def recorded_prognosis(session: Session, dataset_name: str) -> Path:
    """The newest prognostic model recorded for a dataset; NotFoundError says how to make one."""
    artifact = current_artifact(
        session,
        "model",
        dataset_name,
        matches=lambda a: (a.spec or {}).get("kind") == "prognosis" and is_prognosis_folder(a.path),
    )
    if artifact is None:
        raise NotFoundError(
            f"no prognostic model is recorded for dataset {dataset_name!r}; make one with "
            "`ehrembed pretrain DATASET --out DIR` (or the main job)"
        )
    return Path(artifact.path)


@dataclass(frozen=True)
class OutlookItem:
    code: str
    description: str
    probability: float

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "description": self.description, "probability": self.probability}


def outlook(
    model: PrognosisModel,
    dataset: MedsDataset,
    subject_id: int,
    as_of: dt.datetime,
    *,
    horizon_days: float,
    top: int,
    descriptions: dict[str, str],
    ontology: Ontology | None = None,
) -> list[OutlookItem]:
    """The ``top`` most likely new codes within ``horizon_days`` after ``as_of`` (zero-shot, no label)."""
    if not model.has_risk_head:
        raise NotFoundError(f"prognostic model {model.name} ({model.method}) has no risk head to forecast with")
    keys = pl.DataFrame(
        {s.SUBJECT_ID: [subject_id], PREDICTION_TIME: [as_of]},
        schema={s.SUBJECT_ID: pl.Int64, PREDICTION_TIME: pl.Datetime("us")},
    )
    risk = model.risk_from_inputs(model.inputs(dataset, keys, ontology=ontology), horizon_days)[0]
    had = set(
        dataset.scan()
        .filter((pl.col(s.SUBJECT_ID) == subject_id) & (pl.col(s.TIME).is_null() | (pl.col(s.TIME) <= as_of)))
        .select(s.CODE)
        .unique()
        .collect()
        .get_column(s.CODE)
        .to_list()
    )
    items = [
        OutlookItem(code, descriptions[code], round(float(p), 4))
        for code, p in zip(model.target_codes, risk, strict=True)
        if code not in had and descriptions.get(code)
    ]
    return sorted(items, key=lambda item: (-item.probability, item.code))[:top]
