"""Engine and session factory of the store.

By default the store is a SQLite file, ``$EHREMBED_HOME/ehrembed.db`` (``~/.ehrembed`` unless set);
``EHREMBED_DATABASE_URL`` (any SQLAlchemy URL, e.g. ``postgresql+psycopg://user@host:5432/db``)
points it elsewhere. SQLite connections get ``foreign_keys=ON`` (so deletes cascade) and the WAL
journal (readers do not block the writer, e.g. the API serving while the CLI registers).

Sessions do not expire objects on commit: rows returned from a :func:`session_scope` block stay
readable after it ends.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from ehrembed.settings import get_settings
from ehrembed.store.errors import StoreError

_URL_HELP = (
    "set EHREMBED_DATABASE_URL to a SQLAlchemy URL such as "
    "'sqlite:////abs/path/ehrembed.db' or 'postgresql+psycopg://user@host:5432/ehrembed', "
    "or unset it to use the SQLite file under EHREMBED_HOME"
)


def _describe(url: URL | str) -> str:
    return url.render_as_string(hide_password=True) if isinstance(url, URL) else repr(url)


def _parse_url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise StoreError(f"invalid database URL {raw!r}: {exc}; {_URL_HELP}") from None
    return url


def _is_memory_sqlite(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or url.query.get("mode") == "memory" or "mode=memory" in database


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):  # pragma: no cover - other sqlite drivers
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")  # an in-memory database answers 'memory'; fine
        # WAL + NORMAL: a commit survives a process crash and the file stays consistent; only an OS crash
        # or power loss can drop the last commits (PostgreSQL is the store where that matters).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.fetchall()
    finally:
        cursor.close()


def make_engine(url: str | URL | None = None, **engine_kwargs: Any) -> Engine:
    """An engine for ``url``, else for ``Settings.resolved_database_url`` (env ``EHREMBED_*``).

    For a SQLite file the parent folder is created and connections get ``foreign_keys=ON`` and
    the WAL journal; an in-memory SQLite URL shares one connection (so every session sees the
    same database). ``engine_kwargs`` go to :func:`sqlalchemy.create_engine` (``connect_args``
    are merged with the store's own). No connection is opened here; :func:`create_all` opens the
    first one and reports an unreachable database as a :class:`StoreError`.
    """
    parsed = url if isinstance(url, URL) else _parse_url(get_settings().resolved_database_url if url is None else url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        connect_args["check_same_thread"] = False  # sessions may move between threads (web workers)
        if _is_memory_sqlite(parsed):
            engine_kwargs.setdefault("poolclass", StaticPool)
        elif parsed.database and not parsed.database.startswith("file:"):
            path = Path(parsed.database).expanduser()
            parsed = parsed.set(database=str(path))
            path.parent.mkdir(parents=True, exist_ok=True)
            _private_file(path)
    connect_args.update(engine_kwargs.pop("connect_args", {}))
    try:
        engine = create_engine(parsed, connect_args=connect_args, **engine_kwargs)
    except (ArgumentError, ImportError) as exc:
        raise StoreError(
            f"cannot use database URL {_describe(parsed)}: {type(exc).__name__}: {exc}; {_URL_HELP}"
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def _private_file(path: Path) -> None:
    """Create the SQLite file (and its WAL / shared-memory files, which SQLite gives the same mode) as 0600.

    The store holds key hashes and the audit trail: no other local user may read it. An existing
    file we own is tightened; one we do not own is left as its owner set it.
    """
    if not path.exists():
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        return
    with contextlib.suppress(PermissionError):
        os.chmod(path, 0o600)


MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 7_215_403  # pg_advisory_xact_lock key: one migrating process at a time
_MIGRATION_THREAD_LOCK = threading.Lock()  # Alembic's context is process-global: one migrating thread at a time


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory(str(MIGRATIONS)).get_current_head())


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None: no ehrembed schema yet)."""
    with engine.connect() as conn:
        if "alembic_version" not in inspect(conn).get_table_names():
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def create_all(engine: Engine) -> None:
    """Bring the database to the newest schema revision (Alembic migrations; idempotent and cheap when current).

    A database made before migrations existed (tables but no ``alembic_version``) is stamped at the
    first revision, then upgraded. On PostgreSQL an advisory lock lets one process migrate at a time.
    """
    try:
        revision = current_revision(engine)
    except DBAPIError as exc:
        raise StoreError(f"cannot connect to database {_describe(engine.url)}: {exc.orig}; {_URL_HELP}") from None
    if revision is not None and revision == _head_revision():
        return
    migrate(engine)


def migrate(engine: Engine, target: str = "head") -> None:
    """Run the Alembic migrations up to ``target`` on ``engine``."""
    from alembic import command
    from alembic.config import Config

    try:
        with _MIGRATION_THREAD_LOCK, engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            tables = set(inspect(conn).get_table_names())
            if "alembic_version" not in tables and "datasets" in tables:
                command.stamp(config, "0001")
            command.upgrade(config, target)
    except OperationalError:
        # Another process migrated the same SQLite file at the same moment: fine if it reached the head.
        if current_revision(engine) != _head_revision():
            raise


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory for ``engine`` whose sessions keep objects readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def catalog(url: str | URL | None = None) -> Iterator[Session]:
    """One unit of work on the store, owning the engine's whole life: make, migrate, session, dispose.

    For one-shot callers (the CLI, the main job); a long-lived service keeps its own engine and
    session factory. Commits when the block ends normally, rolls back if it raises.
    """
    engine = make_engine(url)
    try:
        create_all(engine)
        with session_scope(engine) as session:
            yield session
    finally:
        engine.dispose()


@contextmanager
def session_scope(bind: Engine | sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back if it raises.

    ``bind`` is an engine or a factory from :func:`make_session_factory`. The session is closed
    either way; objects loaded in it stay readable (attributes are not expired on commit).
    """
    session = make_session_factory(bind)() if isinstance(bind, Engine) else bind()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
