"""The audit trail's group commit: every caller's row committed before it returns, rows that arrive during
a commit share the next one, and a failed batch raises in every caller it holds."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ehrembed.store.audit_writer import AuditWriter
from ehrembed.store.db import make_session_factory, session_scope
from ehrembed.store.repository import AuditEntry, create_api_key, list_audit


def _entry(subject: int, key_id: int | None = None, dataset: str | None = "demo") -> AuditEntry:
    return AuditEntry(key_id, "/v1/patients/{subject_id}", "get", [subject], dataset, 200)


def _gated_sessions(engine: Engine, gate: threading.Event, entered: threading.Event) -> Any:
    """A session factory whose first commit waits for ``gate`` (so later rows pile up behind it)."""
    factory = make_session_factory(engine)
    first = [True]

    def make() -> Session:
        session = factory()
        if first[0]:
            first[0] = False

            @event.listens_for(session, "before_commit")
            def hold(_session: Session) -> None:
                entered.set()
                assert gate.wait(30)

        return session

    return make


def _wait_pending(writer: AuditWriter, n: int) -> None:
    deadline = time.monotonic() + 30
    while writer.pending < n:  # rows waiting behind the held commit
        assert time.monotonic() < deadline, "rows did not queue"
        time.sleep(0.005)


def _leader_then_followers(
    writer: AuditWriter,
    leader: threading.Thread,
    followers: list[threading.Thread],
    entered: threading.Event,
    gate: threading.Event,
) -> None:
    """Start ``leader``, which blocks inside its commit; queue ``followers`` behind it; open the gate; join all."""
    leader.start()
    assert entered.wait(30)
    for thread in followers:
        thread.start()
    _wait_pending(writer, len(followers))
    gate.set()
    for thread in [leader, *followers]:
        thread.join(30)


def test_rows_that_arrive_during_a_commit_share_the_next(engine: Engine) -> None:
    gate, entered = threading.Event(), threading.Event()
    writer = AuditWriter(_gated_sessions(engine, gate, entered))
    errors: list[BaseException] = []

    def write(subject: int) -> None:
        try:
            writer.write(_entry(subject))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    _leader_then_followers(
        writer, threading.Thread(target=write, args=(0,)),
        [threading.Thread(target=write, args=(i,)) for i in range(1, 6)], entered, gate,
    )  # fmt: skip
    assert not errors
    assert (writer.batches, writer.rows) == (2, 6)
    with session_scope(engine) as session:
        rows = list_audit(session)
    assert sorted(r.subject_ids[0] for r in rows) == list(range(6))
    assert {(r.method, r.endpoint, r.dataset, r.status_code) for r in rows} == {
        ("GET", "/v1/patients/{subject_id}", "demo", 200)
    }


def test_a_failed_batch_raises_in_every_caller_and_the_writer_goes_on(engine: Engine) -> None:
    with session_scope(engine) as session:
        key_id = create_api_key(session, "k", "read")[0].id
    gate, entered = threading.Event(), threading.Event()
    writer = AuditWriter(_gated_sessions(engine, gate, entered))
    outcomes: dict[int, str] = {}

    def write(subject: int, key: int | None) -> None:
        try:
            writer.write(_entry(subject, key))
            outcomes[subject] = "ok"
        except IntegrityError:
            outcomes[subject] = "integrity error"

    # the next batch holds a row naming a key that does not exist (a foreign-key violation)
    followers = [threading.Thread(target=write, args=(1, key_id)), threading.Thread(target=write, args=(2, 10**9))]
    _leader_then_followers(writer, threading.Thread(target=write, args=(0, key_id)), followers, entered, gate)
    assert outcomes == {0: "ok", 1: "integrity error", 2: "integrity error"}
    writer.write(_entry(3, key_id))
    with session_scope(engine) as session:
        assert sorted(r.subject_ids[0] for r in list_audit(session)) == [0, 3]


@pytest.mark.parametrize("dataset", ["a\x00b", None])
def test_entries_are_normalised_like_single_rows(engine: Engine, dataset: str | None) -> None:
    writer = AuditWriter(make_session_factory(engine))
    writer.write(_entry(7, dataset=dataset))
    with session_scope(engine) as session:
        (row,) = list_audit(session)
    assert row.dataset == (None if dataset is None else "a\\x00b")
    assert row.subject_ids == [7]
