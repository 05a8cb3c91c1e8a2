"""Store fixtures: each test runs on SQLite and, when EHREMBED_TEST_POSTGRES_URL is set, on a fresh
PostgreSQL schema dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from ehrembed.store.db import create_all, make_engine

POSTGRES_URL = os.environ.get("EHREMBED_TEST_POSTGRES_URL")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgres",
        id="postgres",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not POSTGRES_URL, reason="EHREMBED_TEST_POSTGRES_URL is not set"),
        ],
    ),
]


@pytest.fixture(params=BACKENDS)
def bare_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database: a SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'db' / 'store.db'}")
        yield eng
        eng.dispose()
        return
    assert POSTGRES_URL
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    eng = make_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"}, pool_size=10)
    try:
        yield eng
    finally:
        eng.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(bare_engine: Engine) -> Engine:
    """A store with its schema migrated to the newest revision."""
    create_all(bare_engine)
    return bare_engine
