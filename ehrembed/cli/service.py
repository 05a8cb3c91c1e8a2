"""CLI for the service: API keys and `ehrembed serve`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated

import typer

from ehrembed.cli.common import JsonFlag, Scope, app, err_console, out_console, print_json, user_errors

keys_app = typer.Typer(help="API keys: create (the secret is shown once), list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create_cmd(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
    scope: Annotated[
        Scope, typer.Option("--scope", help="read, write or admin (each includes the ones before).")
    ] = Scope.read,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key; its secret is printed once and only its SHA-256 is stored."""
    from ehrembed.store.db import catalog
    from ehrembed.store.repository import create_api_key

    with user_errors(), catalog() as session:
        key, secret = create_api_key(session, name, scope.value)
        data = {"id": key.id, "name": key.name, "scope": str(key.scope), "key": secret}
    if as_json:
        print_json(data)
        return
    out_console.print(
        f"created {data['scope']} key {data['name']!r} (id {data['id']}); keep it now, it is not shown again:"
    )
    print(secret)


@keys_app.command("list")
def keys_list_cmd(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False, as_json: JsonFlag = False
) -> None:
    """API keys (never their secrets): id, name, scope, prefix, created, last used, revoked."""
    from ehrembed.store.db import catalog
    from ehrembed.store.repository import list_api_keys

    with catalog() as session:
        rows = [
            {
                "id": k.id,
                "name": k.name,
                "scope": str(k.scope),
                "prefix": k.key_prefix,
                "created_at": k.created_at,
                "last_used_at": k.last_used_at,
                "revoked_at": k.revoked_at,
            }
            for k in list_api_keys(session, include_revoked=all_keys)
        ]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        revoked = f" revoked {row['revoked_at']:%Y-%m-%d}" if row["revoked_at"] else ""
        out_console.print(f"{row['id']:>4} {row['name']:<24} {row['scope']:<6} {row['prefix']}…{revoked}")


@keys_app.command("revoke")
def keys_revoke_cmd(key: Annotated[str, typer.Argument(help="Key id or name.")], as_json: JsonFlag = False) -> None:
    """Revoke a key (it stops working within 10 seconds on a running service)."""
    from ehrembed.store.db import catalog
    from ehrembed.store.repository import revoke_api_key

    with user_errors(), catalog() as session:
        row = revoke_api_key(session, int(key) if key.isdigit() else key)
        data = {"id": row.id, "name": row.name, "revoked_at": row.revoked_at}
    if as_json:
        print_json(data)
        return
    out_console.print(f"revoked key {data['name']!r} (id {data['id']})")


def worker_threads(workers: int, threads: int | None, env: Mapping[str, str], cpus: int) -> int | None:
    """Intra-op threads each worker should use (torch, OpenMP), or None to leave the libraries' default.

    Several workers each running all-core thread pools oversubscribe the CPUs: on 2 cores, 2 workers with
    one thread each served inline-record predictions about 20 % faster than with two each. An explicit
    ``threads`` wins; a user's ``OMP_NUM_THREADS`` is kept; one worker keeps every core.
    """
    if threads is not None:
        return threads
    if "OMP_NUM_THREADS" in env or workers <= 1:
        return None
    return max(1, cpus // workers)


def _cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers narrow), else the machine's."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


@app.command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (each loads the models).")] = 1,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Threads per worker for model inference and search (default: the CPUs shared among the workers, "
            "or OMP_NUM_THREADS when set).",
        ),
    ] = None,
) -> None:
    """Serve the HTTP API (models, indexes and heads load once at startup)."""
    import uvicorn

    from ehrembed.api.app import logging_config

    per_worker = worker_threads(workers, threads, os.environ, _cpus())
    if per_worker is not None:  # read by torch and OpenMP when a worker starts (workers inherit the environment)
        os.environ["OMP_NUM_THREADS"] = str(per_worker)
    shown = f", {per_worker} thread(s) each" if per_worker is not None else ""
    err_console.print(
        f"serving on http://{host}:{port} with {workers} worker(s){shown} (OpenAPI at /docs); stop with Ctrl-C"
    )
    # uvicorn's own access log would keep query strings (ids, filters); ours keeps route templates only.
    uvicorn.run(
        "ehrembed.api.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="info",
        access_log=False, log_config=logging_config(),
    )  # fmt: skip


db_app = typer.Typer(help="The store's schema: upgrade it to the newest revision, or show the current one.")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade_cmd(as_json: JsonFlag = False) -> None:
    """Migrate the store (EHREMBED_DATABASE_URL, else the SQLite file under EHREMBED_HOME) to the newest schema."""
    from ehrembed.store.db import current_revision, make_engine, migrate

    engine = make_engine()
    with user_errors():
        before = current_revision(engine)
        migrate(engine)
        after = current_revision(engine)
    engine.dispose()
    if as_json:
        print_json({"before": before, "after": after})
        return
    out_console.print(f"schema revision {before or 'none'} → {after}")


@db_app.command("current")
def db_current_cmd(as_json: JsonFlag = False) -> None:
    """Print the store's schema revision ('none' before the first migration)."""
    from ehrembed.store.db import current_revision, make_engine

    engine = make_engine()
    with user_errors():
        revision = current_revision(engine)
    engine.dispose()
    if as_json:
        print_json({"revision": revision})
        return
    print(revision or "none")
