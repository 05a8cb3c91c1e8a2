"""Alembic environment: the store's tables, on the connection :func:`ehrembed.store.db.migrate` hands over."""

from __future__ import annotations

from alembic import context

from ehrembed.store.tables import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the `alembic` command line is not how ehrembed migrates
    raise RuntimeError("run migrations through ehrembed.store.db.migrate(engine) or `ehrembed db upgrade`")
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
