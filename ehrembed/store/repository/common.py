"""Helpers every repository module shares: enum coercion, name checks, bulk inserts, the splits type."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import polars as pl
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from ehrembed import schema as s
from ehrembed.store.errors import StoreError
from ehrembed.store.tables import (
    ApiScope,
    ArtifactKind,
    DatasetSource,
)

_BULK_CHUNK = 20_000

E = TypeVar("E", ApiScope, ArtifactKind, DatasetSource, s.Split)


def _coerce(enum_cls: type[E], value: str, what: str) -> E:
    try:
        return enum_cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum_cls)
        raise StoreError(f"unknown {what} {value!r}; expected one of {choices}") from None


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise StoreError(f"{what} name must be a non-empty string, got {name!r}")
    if len(name) > 200:
        raise StoreError(f"{what} name is longer than 200 characters: {name[:40]!r}...")
    return name


def _known(session: Session, column: Any) -> str:
    names = session.scalars(select(column).order_by(column).limit(20)).all()
    return ", ".join(repr(n) for n in names) if names else "none registered"


SplitsLike = Iterable[tuple[int, str, str | None]] | pl.DataFrame
"""Subjects of a dataset: ``(subject_id, split, source_id)`` tuples, or a frame with columns
``subject_id``, ``split`` and optionally ``source_id`` (e.g. ``metadata/subject_splits.parquet``)."""


def _bulk_insert(session: Session, table: type[Any], rows: Sequence[dict[str, Any]]) -> None:
    """``INSERT`` many rows as executemany batches (no per-row ORM objects)."""
    for start in range(0, len(rows), _BULK_CHUNK):
        session.execute(insert(table), list(rows[start : start + _BULK_CHUNK]))
