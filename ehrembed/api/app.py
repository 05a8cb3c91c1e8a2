"""The FastAPI application factory: routers under /v1, auth, errors, limits, metrics, audit.

``create_app()`` reads settings from the environment (``EHREMBED_*``); models, indexes, heads and
the guideline knowledge base load once at startup. ``ehrembed serve`` runs it with uvicorn.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from anyio import to_thread
from fastapi import FastAPI

from ehrembed import __version__
from ehrembed.api.deps import _KeyCache, verify_key
from ehrembed.api.errors import install_handlers
from ehrembed.api.metrics import Metrics
from ehrembed.api.middleware import Authenticate, BodyLimit, Observe
from ehrembed.api.routers import (
    admin,
    console,
    datasets,
    embeddings,
    guidelines,
    heads,
    health,
    patients,
    reports,
    tasks,
)
from ehrembed.api.state import ServiceState
from ehrembed.settings import Settings, get_settings

DESCRIPTION = """Few-shot clinical prediction, similar-patient search and embedding export over
structured patient records. Every `/v1` endpoint needs an API key (`Authorization: Bearer ehr_...`,
from `ehrembed keys create`); errors are JSON bodies naming the field and the problem."""


def create_app(settings: Settings | None = None, *, state: ServiceState | None = None) -> FastAPI:
    """A ready-to-serve app; ``state`` lets tests (or an embedding process) supply a prepared one."""
    settings = settings or get_settings()
    service = state or ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not service.ready:
            await to_thread.run_sync(service.load)
        yield
        service.close()

    app = FastAPI(title="ehrembed", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.state.metrics = Metrics()
    app.state.key_cache = _KeyCache()
    install_handlers(app)
    for module in (health, datasets, patients, embeddings, tasks, heads, guidelines, reports, admin, console):
        app.include_router(module.router)
    # Added innermost first: a request meets Observe, then Authenticate, then BodyLimit, then the routes.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(Authenticate, verify=partial(verify_key, service), cache=app.state.key_cache)
    app.add_middleware(Observe, metrics=app.state.metrics, state=service, router=app.router)
    return app


def logging_config() -> dict[str, Any]:
    """uvicorn's logging config plus the ``ehrembed`` loggers (access lines, errors with tracebacks) on stderr."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["ehrembed"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
