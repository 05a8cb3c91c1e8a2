"""Group commit for the audit trail: many requests' rows in one transaction, each caller waiting for its own.

The API writes an audit row for every patient-level request. One transaction per row made the audit
the largest fixed cost of a fast request (an ORM session, a flush and a commit each). Here a caller
adds its row to the pending batch and then either waits or, when no commit is running, becomes the
leader: it takes every row pending so far, inserts them with one statement and commits. Rows that
arrive during that commit form the next batch. So under load a commit carries as many rows as
arrived while the previous one ran, and with one request at a time it is one row per commit, as before.

Invariant: :meth:`AuditWriter.write` returns only once its row is committed, and raises if the
batch holding it failed (every caller in that batch sees the error), so a request is never answered
as audited when its row was lost. No thread of its own: nothing to start or stop, nothing queued at exit.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from ehrembed.store.db import session_scope
from ehrembed.store.repository.audit import AuditEntry, audit_many


@dataclass
class _Batch:
    """Rows that commit together, and how their commit ended (``done``; ``error`` when it failed)."""

    rows: list[AuditEntry] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None


class AuditWriter:
    """Writes :class:`AuditEntry` rows with group commit (see the module docstring); thread-safe."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._cond = threading.Condition()
        self._open = _Batch()
        """The batch new rows join; the next leader takes it and opens a new one."""
        self._writing = False
        self.batches = 0
        self.rows = 0

    @property
    def pending(self) -> int:
        """Rows waiting for the next commit."""
        with self._cond:
            return len(self._open.rows)

    def write(self, entry: AuditEntry) -> None:
        """Add ``entry`` and return once it is committed (or raise the error its batch met)."""
        with self._cond:
            batch = self._open
            batch.rows.append(entry)
            while not batch.done and self._writing:
                self._cond.wait()
            if batch.done:  # another caller committed (or failed) our batch
                if batch.error is not None:
                    raise batch.error
                return
            self._open = _Batch()  # we lead: rows from now on form the next batch
            self._writing = True
        error: BaseException | None = None
        try:
            with session_scope(self._sessions) as session:
                audit_many(session, batch.rows)
        except BaseException as exc:
            error = exc
        with self._cond:
            batch.done, batch.error = True, error
            if error is None:
                self.batches += 1
                self.rows += len(batch.rows)
            self._writing = False
            self._cond.notify_all()
        if error is not None:
            raise error
