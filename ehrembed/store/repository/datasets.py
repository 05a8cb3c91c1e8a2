"""Datasets and their subjects (with splits and source ids)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ehrembed import schema as s
from ehrembed.store.errors import NotFoundError, StoreError
from ehrembed.store.repository.common import SplitsLike, _bulk_insert, _check_name, _coerce, _known
from ehrembed.store.tables import (
    Dataset,
    DatasetSource,
    Subject,
    utcnow,
)


def _subject_rows(splits: SplitsLike) -> list[dict[str, Any]]:
    """Validated subject rows (no dataset id yet) from tuples or a frame."""
    if isinstance(splits, pl.DataFrame):
        missing = {s.SUBJECT_ID, s.SPLIT} - set(splits.columns)
        if missing:
            raise StoreError(f"splits frame lacks column(s) {sorted(missing)}; it has {splits.columns}")
        ids = splits.get_column(s.SUBJECT_ID).to_list()
        names = splits.get_column(s.SPLIT).to_list()
        source_ids = (
            splits.get_column(s.SOURCE_ID).cast(pl.String).to_list()
            if s.SOURCE_ID in splits.columns
            else [None] * len(ids)
        )
    else:
        ids, names, source_ids = [], [], []
        for row in splits:
            if len(row) not in (2, 3):
                raise StoreError(f"a split row is (subject_id, split[, source_id]), got {row!r}")
            ids.append(row[0])
            names.append(row[1])
            source_ids.append(row[2] if len(row) == 3 else None)
    valid = {m.value for m in s.Split}
    bad = {n for n in names if n not in valid}
    if bad:
        raise StoreError(f"unknown split name(s) {sorted(map(str, bad))}; expected one of {sorted(valid)}")
    if any(i is None for i in ids):
        raise StoreError("a subject_id in the splits is null")
    ids = [int(i) for i in ids]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise StoreError(f"subject ids appear more than once in the splits: {dupes[:10]}")
    return [
        {"subject_id": i, "split": str(n), "source_id": None if src is None else str(src)}
        for i, n, src in zip(ids, names, source_ids, strict=True)
    ]


def register_dataset(
    session: Session,
    name: str,
    path: str | Path,
    source: DatasetSource | str,
    n_subjects: int,
    n_events: int,
    fingerprint: str,
    meta: Mapping[str, Any] | None,
    splits: SplitsLike,
) -> Dataset:
    """Register dataset ``name``, or update it if it exists, and replace all its subject rows.

    ``source`` is one of ``omop``, ``fhir``, ``meds``, ``synth``; ``fingerprint`` is the
    caller's SHA-256 of the code metadata and shard files. ``splits`` gives every subject's split
    (``train``/``tuning``/``held_out``) and optional source-system id; the old subject rows are
    deleted and the new ones bulk-inserted (100k subjects take about a second). Everything is
    validated before anything is written. Returns the dataset row (flushed, so ``id`` is set).
    """
    _check_name(name, "dataset")
    source_value = _coerce(DatasetSource, source, "dataset source")
    if n_subjects < 0 or n_events < 0:
        raise StoreError(f"n_subjects and n_events must be >= 0, got {n_subjects} and {n_events}")
    rows = _subject_rows(splits)
    now = utcnow()
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        dataset = Dataset(name=name, created_at=now)
        session.add(dataset)
    dataset.path = str(path)
    dataset.source = source_value
    dataset.n_subjects = int(n_subjects)
    dataset.n_events = int(n_events)
    dataset.fingerprint = fingerprint
    dataset.meta = dict(meta or {})
    dataset.updated_at = now
    session.flush()
    session.execute(
        delete(Subject).where(Subject.dataset_id == dataset.id),
        execution_options={"synchronize_session": False},
    )
    for row in rows:
        row["dataset_id"] = dataset.id
    _bulk_insert(session, Subject, rows)
    return dataset


def get_dataset(session: Session, name: str) -> Dataset:
    """The dataset called ``name``; :class:`NotFoundError` naming the known ones if there is none."""
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFoundError(f"unknown dataset {name!r}; known: {_known(session, Dataset.name)}")
    return dataset


def list_datasets(session: Session) -> list[Dataset]:
    """All datasets, by name."""
    return list(session.scalars(select(Dataset).order_by(Dataset.name)))


def delete_dataset(session: Session, name: str) -> None:
    """Delete a dataset with its subjects and labels; its artifacts stay, detached from it."""
    dataset = get_dataset(session, name)
    session.execute(delete(Dataset).where(Dataset.id == dataset.id), execution_options={"synchronize_session": False})
    session.expunge(dataset)


def _resolve_dataset(session: Session, dataset: Dataset | str) -> Dataset:
    return dataset if isinstance(dataset, Dataset) else get_dataset(session, dataset)


def get_subjects(session: Session, dataset: Dataset | str, split: s.Split | str | None = None) -> pl.DataFrame:
    """Subjects of a dataset (optionally one split) as ``subject_id``/``split``/``source_id``, by id."""
    ds = _resolve_dataset(session, dataset)
    query = select(Subject.subject_id, Subject.split, Subject.source_id).where(Subject.dataset_id == ds.id)
    if split is not None:
        query = query.where(Subject.split == _coerce(s.Split, split, "split"))
    result = session.execute(query.order_by(Subject.subject_id)).all()
    return pl.DataFrame(
        {
            s.SUBJECT_ID: [r[0] for r in result],
            s.SPLIT: [str(r[1]) for r in result],
            s.SOURCE_ID: [r[2] for r in result],
        },
        schema={s.SUBJECT_ID: pl.Int64, s.SPLIT: pl.String, s.SOURCE_ID: pl.String},
    )
