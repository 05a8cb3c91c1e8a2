"""The audit log: one row per patient-level request, written before a write's change and finished after."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from ehrembed.store.tables import (
    AuditLog,
    to_naive_utc,
    utcnow,
)


@dataclass(frozen=True)
class AuditEntry:
    """One audit row before it is written (see :func:`audit` for the fields' meaning)."""

    api_key_id: int | None
    endpoint: str
    method: str
    subject_ids: Sequence[int] | None
    dataset: str | None
    status_code: int
    time: dt.datetime = field(default_factory=utcnow)

    def values(self) -> dict[str, Any]:
        """The row's column values, normalised (upper-case method, int ids, NUL bytes escaped)."""
        return {
            "time": to_naive_utc(self.time),
            "api_key_id": self.api_key_id,
            "endpoint": self.endpoint,
            "method": self.method.upper(),
            "subject_ids": [int(i) for i in (self.subject_ids or [])],
            "dataset": self.dataset.replace("\x00", "\\x00") if self.dataset is not None else None,
            "status_code": int(self.status_code),
        }


def audit(
    session: Session,
    api_key_id: int | None,
    endpoint: str,
    method: str,
    subject_ids: Iterable[int] | None,
    dataset: str | None,
    status_code: int,
) -> AuditLog:
    """Append an audit row: who (key id) called what, on which dataset and subjects, with what status.

    ``dataset`` is what the client sent, valid or not; NUL bytes in it are stored escaped (``\\x00``),
    since PostgreSQL text cannot hold them and a refused request must still be audited.
    """
    entry = AuditEntry(api_key_id, endpoint, method, list(subject_ids or []), dataset, status_code)
    row = AuditLog(**entry.values())
    session.add(row)
    session.flush()
    return row


def audit_many(session: Session, entries: Sequence[AuditEntry]) -> None:
    """Append several audit rows in one statement (no ORM objects: the API's group commit writes these)."""
    if entries:
        session.execute(insert(AuditLog), [entry.values() for entry in entries])


def finish_audit(session: Session, row_id: int, status_code: int) -> None:
    """Set the outcome of a row written before its request finished (see ``audit(..., status_code=102)``)."""
    row = session.get(AuditLog, row_id)
    if row is not None:
        row.status_code = int(status_code)
        session.flush()


def list_audit(
    session: Session,
    *,
    api_key_id: int | None = None,
    dataset: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int | None = 1000,
) -> list[AuditLog]:
    """Audit rows, newest first, optionally for one key, one dataset and a time window [since, until)."""
    query = select(AuditLog)
    if api_key_id is not None:
        query = query.where(AuditLog.api_key_id == api_key_id)
    if dataset is not None:
        query = query.where(AuditLog.dataset == dataset)
    if since is not None:
        query = query.where(AuditLog.time >= to_naive_utc(since))
    if until is not None:
        query = query.where(AuditLog.time < to_naive_utc(until))
    query = query.order_by(AuditLog.time.desc(), AuditLog.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))
