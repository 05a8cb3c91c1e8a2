"""Prediction tasks (their definitions) and their labels per dataset."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from ehrembed import schema as s
from ehrembed.store.errors import NotFoundError, StoreError
from ehrembed.store.repository.common import _bulk_insert, _check_name, _known
from ehrembed.store.repository.datasets import _resolve_dataset
from ehrembed.store.tables import (
    Dataset,
    LabelRow,
    Task,
    to_naive_utc,
    utcnow,
)


def upsert_task(session: Session, name: str, definition: Mapping[str, Any]) -> Task:
    """Create task ``name`` or replace its definition; its labels are kept."""
    _check_name(name, "task")
    task = session.scalar(select(Task).where(Task.name == name))
    now = utcnow()
    if task is None:
        task = Task(name=name, created_at=now)
        session.add(task)
    task.definition = dict(definition)
    task.updated_at = now
    session.flush()
    return task


def get_task(session: Session, name: str) -> Task:
    """The task called ``name``; :class:`NotFoundError` naming the known ones if there is none."""
    task = session.scalar(select(Task).where(Task.name == name))
    if task is None:
        raise NotFoundError(f"unknown task {name!r}; known: {_known(session, Task.name)}")
    return task


def list_tasks(session: Session) -> list[Task]:
    """All tasks, by name."""
    return list(session.scalars(select(Task).order_by(Task.name)))


def _resolve_task(session: Session, task: Task | str) -> Task:
    return task if isinstance(task, Task) else get_task(session, task)


def replace_labels(session: Session, task: Task | str, dataset: Dataset | str, labels: Iterable[s.Label]) -> int:
    """Replace every label of ``task`` on ``dataset`` with ``labels``; returns how many were stored.

    Prediction times are stored naive UTC (aware ones converted). Two labels for one
    (subject, prediction time), or a non-finite value, are a :class:`StoreError` raised before
    anything is written.
    """
    task_row = _resolve_task(session, task)
    ds = _resolve_dataset(session, dataset)
    rows: list[dict[str, Any]] = []
    seen: set[tuple[int, dt.datetime]] = set()
    for label in labels:
        when = to_naive_utc(label.prediction_time)
        key = (int(label.subject_id), when)
        if key in seen:
            raise StoreError(f"task {task_row.name!r}: two labels for subject {key[0]} at {when.isoformat()}")
        seen.add(key)
        value = float(label.value)
        if not math.isfinite(value):
            raise StoreError(f"task {task_row.name!r}: label value of subject {key[0]} is {value}")
        rows.append(
            {
                "task_id": task_row.id,
                "dataset_id": ds.id,
                "subject_id": key[0],
                "prediction_time": when,
                "value": value,
            }
        )
    session.execute(
        delete(LabelRow).where(LabelRow.task_id == task_row.id, LabelRow.dataset_id == ds.id),
        execution_options={"synchronize_session": False},
    )
    _bulk_insert(session, LabelRow, rows)
    return len(rows)


def get_labels(session: Session, task: Task | str, dataset: Dataset | str) -> list[s.Label]:
    """Labels of ``task`` on ``dataset`` ordered by subject and prediction time (values as floats)."""
    task_row = _resolve_task(session, task)
    ds = _resolve_dataset(session, dataset)
    result = session.execute(
        select(LabelRow.subject_id, LabelRow.prediction_time, LabelRow.value)
        .where(LabelRow.task_id == task_row.id, LabelRow.dataset_id == ds.id)
        .order_by(LabelRow.subject_id, LabelRow.prediction_time)
    )
    return [s.Label(int(sid), when, float(value)) for sid, when, value in result]


def count_labels(session: Session, task: Task | str, dataset: Dataset | str) -> int:
    """How many labels ``task`` has on ``dataset``."""
    task_row = _resolve_task(session, task)
    ds = _resolve_dataset(session, dataset)
    count = session.scalar(
        select(func.count()).select_from(LabelRow).where(LabelRow.task_id == task_row.id, LabelRow.dataset_id == ds.id)
    )
    return int(count or 0)
