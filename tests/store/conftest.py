"""Store fixtures: each test runs on SQLite and, when EHREMBED_TEST_POSTGRES_URL is set, on a fresh
PostgreSQL schema dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from ehrembed.store.db import create_all, make_engine
from tests.helpers import BACKENDS, POSTGRES_URL, postgres_schema


@pytest.fixture(params=BACKENDS)
def bare_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database: a SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'db' / 'store.db'}")
        yield eng
        eng.dispose()
        return
    with postgres_schema("t") as schema:
        eng = make_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"}, pool_size=10)
        try:
            yield eng
        finally:
            eng.dispose()


@pytest.fixture
def engine(bare_engine: Engine) -> Engine:
    """A store with its schema migrated to the newest revision."""
    create_all(bare_engine)
    return bare_engine
