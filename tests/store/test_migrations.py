"""Versioned schema (Alembic) and concurrent writers, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from ehrembed.store.db import _head_revision, create_all, current_revision, session_scope
from ehrembed.store.repository import audit, list_audit, register_artifact, upsert_task
from ehrembed.store.tables import Base


def test_migrations_build_exactly_the_declared_schema(bare_engine: Engine) -> None:
    assert current_revision(bare_engine) is None
    create_all(bare_engine)
    assert current_revision(bare_engine) == _head_revision()
    with bare_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    create_all(bare_engine)  # idempotent
    assert current_revision(bare_engine) == _head_revision()


def test_a_pre_migration_database_is_stamped_and_kept(bare_engine: Engine) -> None:
    Base.metadata.create_all(bare_engine)  # how stores were made before migrations
    with session_scope(bare_engine) as session:
        upsert_task(session, "kept", {"name": "kept"})
    create_all(bare_engine)
    assert current_revision(bare_engine) == _head_revision()
    assert "alembic_version" in inspect(bare_engine).get_table_names()
    with session_scope(bare_engine) as session:
        from ehrembed.store.repository import get_task

        assert get_task(session, "kept").definition == {"name": "kept"}


def test_concurrent_migrations_and_writers(bare_engine: Engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            create_all(bare_engine)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and current_revision(bare_engine) == _head_revision()

    artifact = tmp_path / "artifact.bin"
    artifact.write_bytes(b"x")

    def write(worker: int) -> None:
        try:
            for i in range(20):
                with session_scope(bare_engine) as session:
                    audit(session, None, "/v1/test", "GET", [worker, i], "demo", 200)
                    register_artifact(session, "report", f"w{worker}-{i}", artifact)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    assert errors == []
    with session_scope(bare_engine) as session:
        assert len(list_audit(session, dataset="demo", limit=None)) == 120
