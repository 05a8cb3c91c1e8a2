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

from sqlalchemy.orm import Session, sessionmaker

from ehrembed.store.db import session_scope
from ehrembed.store.repository.audit import AuditEntry, audit_many

_KEPT_ERRORS = 64
"""Failed batches remembered until their waiters have seen the error."""


class AuditWriter:
    """Writes :class:`AuditEntry` rows with group commit (see the module docstring); thread-safe."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._cond = threading.Condition()
        self._pending: list[AuditEntry] = []
        self._collecting = 0
        """Id of the batch that new rows join."""
        self._done = 0
        """Batches with an id below this are committed or failed."""
        self._writing = False
        self._errors: dict[int, BaseException] = {}
        self.batches = 0
        self.rows = 0

    def write(self, entry: AuditEntry) -> None:
        """Add ``entry`` and return once it is committed (or raise the error its batch met)."""
        with self._cond:
            self._pending.append(entry)
            batch = self._collecting
            while batch >= self._done and self._writing:
                self._cond.wait()
            if batch < self._done:  # another caller committed (or failed) our batch
                failed = self._errors.get(batch)
                if failed is not None:
                    raise failed
                return
            rows, self._pending = self._pending, []
            self._collecting += 1
            self._writing = True
        error: BaseException | None = None
        try:
            with session_scope(self._sessions) as session:
                audit_many(session, rows)
        except BaseException as exc:
            error = exc
        with self._cond:
            if error is not None:
                self._errors[batch] = error
                for old in [b for b in self._errors if b < batch - _KEPT_ERRORS]:
                    del self._errors[old]
            else:
                self.batches += 1
                self.rows += len(rows)
            self._done = batch + 1
            self._writing = False
            self._cond.notify_all()
        if error is not None:
            raise error
