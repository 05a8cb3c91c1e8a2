"""Benchmark reports recorded in the store (``ehrembed benchmark`` and the main job record theirs): the list,
and one report's macro AUROC against k with CIs and wins / ties / losses, as the console plots them.
Aggregates over held-out patients only, so not audited."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from ehrembed.api.deps import ReadKey, StateDep
from ehrembed.services.reports import recorded_report, recorded_reports

router = APIRouter(prefix="/v1/reports", tags=["reports"])


class ReportOut(BaseModel):
    name: str
    dataset: str | None
    title: str
    encoders: list[str]
    tasks: list[str]
    created_at: datetime


class ReportDetailOut(ReportOut):
    heads: list[str]
    ks: list[str]
    macro_auroc: list[dict[str, Any]]
    """Rows ``{head, encoder, k, auroc, auroc_lo, auroc_hi, tasks}``; the CI is null without a bootstrap."""
    wins_ties_losses: list[dict[str, Any]]
    task_labels: list[dict[str, Any]]
    """Label counts per task and split."""


def _card(artifact: Any) -> dict[str, Any]:
    spec = artifact.spec or {}
    return {
        "name": artifact.name,
        "dataset": None if artifact.dataset is None else artifact.dataset.name,
        "title": spec.get("title", artifact.name),
        "encoders": spec.get("encoders", []),
        "tasks": spec.get("tasks", []),
        "created_at": artifact.created_at,
    }


@router.get("", response_model=list[ReportOut])
def reports(
    state: StateDep, _key: ReadKey, dataset: Annotated[str | None, Query(max_length=200)] = None
) -> list[ReportOut]:
    """The recorded benchmark reports (optionally of one dataset), newest first."""
    if dataset is not None:
        state.dataset(dataset)  # an unknown dataset is a 404, not an empty list
    with state.session() as session:
        return [ReportOut(**_card(a)) for a in recorded_reports(session, dataset)]


@router.get("/{name}", response_model=ReportDetailOut)
def report(name: str, state: StateDep, _key: ReadKey) -> ReportDetailOut:
    """One report's numbers: macro AUROC per (head, encoder, k) with its 95% CI, and wins / ties / losses."""
    with state.session() as session:
        artifact, summary = recorded_report(session, name)
        card = _card(artifact)
    return ReportDetailOut(
        **card,
        heads=summary["heads"],
        ks=summary["ks"],
        macro_auroc=summary["macro_auroc"],
        wins_ties_losses=summary["wins_ties_losses"],
        task_labels=summary["tasks"],
    )
