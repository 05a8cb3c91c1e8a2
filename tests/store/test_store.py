"""The SQL store on SQLite (always) and PostgreSQL (when EHREMBED_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.orm import Session

from ehrembed.schema import Label
from ehrembed.settings import get_settings
from ehrembed.store import (
    ApiKey,
    ApiScope,
    ArtifactKind,
    AuditLog,
    ConflictError,
    Dataset,
    DatasetSource,
    NotFoundError,
    StoreError,
    Subject,
    audit,
    create_all,
    create_api_key,
    delete_dataset,
    get_api_key,
    get_artifact,
    get_dataset,
    get_labels,
    get_subjects,
    get_task,
    list_api_keys,
    list_artifacts,
    list_audit,
    list_datasets,
    list_tasks,
    make_engine,
    register_artifact,
    register_dataset,
    replace_labels,
    revoke_api_key,
    scope_allows,
    session_scope,
    upsert_task,
    verify_api_key,
)
from ehrembed.store.tables import Base

FINGERPRINT = "ab" * 32


def _splits(n: int, start: int = 1) -> list[tuple[int, str, str | None]]:
    names = ("train", "tuning", "held_out")
    return [(i, names[i % 3], f"src-{i}" if i % 2 else None) for i in range(start, start + n)]


def _register(session: Session, name: str = "demo", n: int = 10, start: int = 1) -> Dataset:
    return register_dataset(
        session, name, f"/data/{name}", "synth", n, n * 7, FINGERPRINT, {"note": name}, _splits(n, start)
    )


def test_create_all_is_idempotent(engine: Engine) -> None:
    create_all(engine)
    create_all(engine)
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert {"datasets", "subjects", "artifacts", "tasks", "labels", "api_keys", "audit_log"} <= tables


def test_sqlite_pragmas(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'deep' / 'er' / 'x.db'}")
    assert (tmp_path / "deep" / "er").is_dir()
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower() == "wal"
    eng.dispose()


def test_in_memory_sqlite_is_shared_between_sessions() -> None:
    eng = make_engine("sqlite://")
    create_all(eng)
    with session_scope(eng) as session:
        _register(session, "mem", n=3)
    with session_scope(eng) as session:
        assert get_subjects(session, "mem").height == 3
    eng.dispose()


def test_dataset_register_and_replace(engine: Engine) -> None:
    with session_scope(engine) as session:
        ds = _register(session, "demo", n=10)
        first_id = ds.id
    assert ds.name == "demo" and ds.source == DatasetSource.SYNTH and ds.meta == {"note": "demo"}

    with session_scope(engine) as session:
        got = get_dataset(session, "demo")
        assert (got.id, got.path, got.n_subjects, got.n_events, got.fingerprint) == (
            first_id,
            "/data/demo",
            10,
            70,
            FINGERPRINT,
        )
        subjects = get_subjects(session, "demo")
        assert subjects.get_column("subject_id").to_list() == list(range(1, 11))
        assert subjects.filter(pl.col("subject_id") == 1).get_column("source_id").item() == "src-1"
        assert subjects.filter(pl.col("subject_id") == 2).get_column("source_id").item() is None
        assert get_subjects(session, "demo", "tuning").get_column("subject_id").to_list() == [1, 4, 7, 10]

    # Re-registering the same name updates the row and replaces every subject (no duplicates).
    frame = pl.DataFrame({"subject_id": [100, 101, 102], "split": ["train", "held_out", "train"]})
    with session_scope(engine) as session:
        again = register_dataset(session, "demo", "/elsewhere", "meds", 3, 9, "cd" * 32, None, frame)
        assert again.id == first_id
    with session_scope(engine) as session:
        assert [d.name for d in list_datasets(session)] == ["demo"]
        got = get_dataset(session, "demo")
        assert (got.path, got.source, got.n_subjects, got.meta) == ("/elsewhere", DatasetSource.MEDS, 3, {})
        assert got.created_at <= got.updated_at
        assert get_subjects(session, "demo").get_column("subject_id").to_list() == [100, 101, 102]
        assert session.scalar(select(func.count()).select_from(Subject)) == 3

    with session_scope(engine) as session:
        _register(session, "other", n=5, start=1)  # same subject ids in another dataset are fine
        assert [d.name for d in list_datasets(session)] == ["demo", "other"]


def test_dataset_errors(engine: Engine) -> None:
    with session_scope(engine) as session:
        with pytest.raises(NotFoundError, match="unknown dataset 'nope'"):
            get_dataset(session, "nope")
        with pytest.raises(StoreError, match="unknown dataset source 'csv'"):
            register_dataset(session, "x", "/x", "csv", 1, 1, FINGERPRINT, None, [])
        with pytest.raises(StoreError, match="unknown split name"):
            register_dataset(session, "x", "/x", "omop", 1, 1, FINGERPRINT, None, [(1, "test", None)])
        with pytest.raises(StoreError, match="more than once"):
            register_dataset(
                session, "x", "/x", "omop", 2, 1, FINGERPRINT, None, [(1, "train", None), (1, "tuning", None)]
            )
        with pytest.raises(StoreError, match="lacks column"):
            register_dataset(session, "x", "/x", "omop", 1, 1, FINGERPRINT, None, pl.DataFrame({"a": [1]}))


def test_bulk_subjects(engine: Engine) -> None:
    n = 100_000
    frame = pl.DataFrame(
        {
            "subject_id": range(n),
            "split": ["train", "tuning", "held_out", "train"] * (n // 4),
            "source_id": [f"p{i}" for i in range(n)],
        }
    )
    start = time.perf_counter()
    with session_scope(engine) as session:
        register_dataset(session, "big", "/big", "omop", n, 10 * n, FINGERPRINT, None, frame)
    with session_scope(engine) as session:  # replace: the old 100k rows go, the new ones come
        register_dataset(session, "big", "/big", "omop", n, 10 * n, FINGERPRINT, None, frame)
    elapsed = time.perf_counter() - start
    print(f"2 x {n} subjects registered in {elapsed:.2f} s on {engine.dialect.name}")
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Subject)) == n
        assert get_subjects(session, "big", "tuning").height == n // 4


def test_delete_dataset_cascades(engine: Engine) -> None:
    with session_scope(engine) as session:
        ds = _register(session, "gone", n=4)
        upsert_task(session, "t", {})
        replace_labels(session, "t", ds, [Label(1, dt.datetime(2020, 1, 1), 1.0)])
        register_artifact(session, "embeddings", "e", "/e", "0" * 64, 1, dataset=ds)
    with session_scope(engine) as session:
        delete_dataset(session, "gone")
    with session_scope(engine) as session:
        assert list_datasets(session) == []
        assert session.scalar(select(func.count()).select_from(Subject)) == 0
        artifact = get_artifact(session, "embeddings", "e")
        assert artifact.dataset_id is None


def test_artifact_upsert(engine: Engine, tmp_path: Path) -> None:
    with session_scope(engine) as session:
        ds = _register(session, "demo")
        first = register_artifact(
            session,
            ArtifactKind.EMBEDDINGS,
            "student-v1",
            "/a/1",
            "A" * 64,
            123,
            spec={"dim": 384},
            dataset=ds,
        )
        register_artifact(session, "model", "student-v1", "/m/1", "b" * 64, 5)  # same name, other kind
    assert first.sha256 == "a" * 64  # stored lower-case
    with session_scope(engine) as session:
        again = register_artifact(session, "embeddings", "student-v1", "/a/2", "c" * 64, 456, spec={"dim": 8})
        assert again.id == first.id
    with session_scope(engine) as session:
        got = get_artifact(session, "embeddings", "student-v1")
        assert (got.path, got.sha256, got.size_bytes, got.spec, got.dataset_id) == (
            "/a/2",
            "c" * 64,
            456,
            {"dim": 8},
            None,
        )
        assert got.kind == ArtifactKind.EMBEDDINGS
        assert [(a.kind, a.name) for a in list_artifacts(session)] == [
            (ArtifactKind.EMBEDDINGS, "student-v1"),
            (ArtifactKind.MODEL, "student-v1"),
        ]
        assert [a.path for a in list_artifacts(session, kind="model")] == ["/m/1"]
        with pytest.raises(NotFoundError, match="unknown head artifact"):
            get_artifact(session, "head", "student-v1")
        with pytest.raises(StoreError, match="unknown artifact kind"):
            list_artifacts(session, kind="weights")
        with pytest.raises(StoreError, match="64 hex"):
            register_artifact(session, "model", "bad", "/m", "xyz", 1)

    # Checksum and size computed from the path when not given.
    folder = tmp_path / "head"
    folder.mkdir()
    (folder / "model.txt").write_text("hello")
    with session_scope(engine) as session:
        head = register_artifact(session, "head", "h", folder)
    assert head.size_bytes == 5 and len(head.sha256) == 64 and head.path == str(folder)


def test_tasks_and_labels(engine: Engine) -> None:
    t0 = dt.datetime(2021, 3, 4, 23, 59, 0, 123456)
    aware = dt.datetime(2021, 3, 5, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    labels = [
        Label(3, t0, True),
        Label(1, t0 + dt.timedelta(days=1), 0.0),
        Label(1, t0, 1.0),
        Label(2, aware, 0.25),
    ]
    with session_scope(engine) as session:
        _register(session, "demo")
        _register(session, "other")
        task = upsert_task(session, "long_los", {"kind": "los", "days": 7})
        upsert_task(session, "readmission", {"kind": "readmission", "days": 30})
        assert replace_labels(session, task, "demo", labels) == 4
        replace_labels(session, "long_los", "other", [Label(9, t0, 1.0)])
    with session_scope(engine) as session:
        again = upsert_task(session, "long_los", {"kind": "los", "days": 3})
        assert again.id == task.id
        assert get_task(session, "long_los").definition == {"kind": "los", "days": 3}
        assert [t.name for t in list_tasks(session)] == ["long_los", "readmission"]
        got = get_labels(session, "long_los", "demo")
    assert got == [
        Label(1, t0, 1.0),
        Label(1, t0 + dt.timedelta(days=1), 0.0),
        Label(2, dt.datetime(2021, 3, 4, 23, 0), 0.25),  # aware time stored as naive UTC
        Label(3, t0, 1.0),
    ]
    assert all(label.prediction_time.tzinfo is None for label in got)

    with session_scope(engine) as session:  # replace only touches (task, dataset)
        replace_labels(session, "long_los", "demo", [Label(5, t0, 1.0)])
    with session_scope(engine) as session:
        assert get_labels(session, "long_los", "demo") == [Label(5, t0, 1.0)]
        assert get_labels(session, "long_los", "other") == [Label(9, t0, 1.0)]
        assert get_labels(session, "readmission", "demo") == []
        with pytest.raises(StoreError, match="two labels for subject 1"):
            replace_labels(session, "long_los", "demo", [Label(1, t0, 1.0), Label(1, t0, 0.0)])
        with pytest.raises(StoreError, match="nan"):
            replace_labels(session, "long_los", "demo", [Label(1, t0, float("nan"))])
        with pytest.raises(NotFoundError, match="unknown task 'mortality'"):
            get_labels(session, "mortality", "demo")


def test_api_keys(engine: Engine) -> None:
    with session_scope(engine) as session:
        key, secret = create_api_key(session, "analyst", "read")
        admin_key, admin_secret = create_api_key(session, "root", ApiScope.ADMIN)
    assert secret.startswith("ehr_") and len(secret) >= 40 and secret != admin_secret
    assert key.key_prefix == secret[:8] and key.scope == ApiScope.READ and key.last_used_at is None

    with session_scope(engine) as session:
        found = verify_api_key(session, secret)
        assert found is not None and found.id == key.id and found.name == "analyst"
        assert found.last_used_at is not None
        assert verify_api_key(session, secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
        assert verify_api_key(session, "ehr_wrong") is None
        assert verify_api_key(session, "") is None
        found_admin = verify_api_key(session, admin_secret)
        assert found_admin is not None and found_admin.id == admin_key.id
        assert found_admin.scope == ApiScope.ADMIN
        with pytest.raises(ConflictError, match="analyst"):
            create_api_key(session, "analyst", "write")
        with pytest.raises(StoreError, match="unknown API key scope"):
            create_api_key(session, "x", "superuser")

    with session_scope(engine) as session:
        revoked = revoke_api_key(session, "analyst")
        assert revoked.revoked_at is not None
    with session_scope(engine) as session:
        assert verify_api_key(session, secret) is None
        assert [k.name for k in list_api_keys(session)] == ["root"]
        assert len(list_api_keys(session, include_revoked=True)) == 2
        assert revoke_api_key(session, key.id).revoked_at == revoked.revoked_at  # idempotent
        with pytest.raises(NotFoundError):
            get_api_key(session, "analyst")
        rotated, new_secret = create_api_key(session, "analyst", "write")  # name free again
        assert rotated.id != key.id
    with session_scope(engine) as session:
        found_rotated = verify_api_key(session, new_secret)
        assert found_rotated is not None and found_rotated.id == rotated.id

    # The secret is nowhere in the database.
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    for plain in (secret, admin_secret, new_secret):
                        assert plain not in str(value)
                        assert plain[8:] not in str(value)


def test_scope_ordering() -> None:
    assert scope_allows("admin", "read") and scope_allows("admin", "write") and scope_allows("admin", "admin")
    assert scope_allows("write", "read") and scope_allows("write", "write")
    assert not scope_allows("write", "admin")
    assert scope_allows(ApiScope.READ, ApiScope.READ)
    assert not scope_allows("read", "write") and not scope_allows("read", "admin")
    with pytest.raises(StoreError):
        scope_allows("root", "read")


def test_audit_log(engine: Engine) -> None:
    with session_scope(engine) as session:
        key, _ = create_api_key(session, "svc", "read")
        audit(session, key.id, "/v1/similar", "post", [3, 1, 2], "demo", 200)
        audit(session, None, "/v1/datasets", "GET", None, None, 401)
        audit(session, key.id, "/v1/embed", "POST", [7], "other", 200)
    with session_scope(engine) as session:
        rows = list_audit(session)
        assert [r.endpoint for r in rows] == ["/v1/embed", "/v1/datasets", "/v1/similar"]  # newest first
        similar = rows[-1]
        assert (similar.method, similar.subject_ids, similar.dataset, similar.status_code) == (
            "POST",
            [3, 1, 2],
            "demo",
            200,
        )
        assert rows[1].api_key_id is None and rows[1].subject_ids == []
        assert [r.endpoint for r in list_audit(session, api_key_id=key.id)] == ["/v1/embed", "/v1/similar"]
        assert [r.endpoint for r in list_audit(session, dataset="demo")] == ["/v1/similar"]
        assert list_audit(session, since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)) == []
        assert len(list_audit(session, limit=2)) == 2
        assert session.scalar(select(func.count()).select_from(AuditLog)) == 3


def test_audit_keeps_a_dataset_name_with_nul_bytes(engine: Engine) -> None:
    """A client may send any bytes as a dataset name; the refused request is still audited, on every backend."""
    with session_scope(engine) as session:
        audit(session, None, "/v1/patients/{subject_id}/record", "GET", [1], "demo\x00x", 404)
    with session_scope(engine) as session:
        assert [r.dataset for r in list_audit(session)] == ["demo\\x00x"]


def test_failed_transaction_rolls_back(engine: Engine) -> None:
    with session_scope(engine) as session:
        _register(session, "demo", n=10)
        create_api_key(session, "kept", "read")

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom), session_scope(engine) as session:
        _register(session, "demo", n=3, start=500)  # replaces subjects inside the transaction ...
        _register(session, "new", n=2)
        create_api_key(session, "lost", "admin")
        raise Boom  # ... which never commits

    with pytest.raises(ConflictError), session_scope(engine) as session:
        upsert_task(session, "half", {})
        create_api_key(session, "kept", "write")

    with session_scope(engine) as session:
        assert [d.name for d in list_datasets(session)] == ["demo"]
        assert get_subjects(session, "demo").get_column("subject_id").to_list() == list(range(1, 11))
        assert [k.name for k in list_api_keys(session)] == ["kept"]
        assert list_tasks(session) == []
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 1


def test_default_url_uses_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "custom-home"
    monkeypatch.setenv("EHREMBED_HOME", str(home))
    monkeypatch.delenv("EHREMBED_DATABASE_URL", raising=False)
    assert get_settings().resolved_database_url == f"sqlite:///{home / 'ehrembed.db'}"
    eng = make_engine()
    assert eng.url.database == str(home / "ehrembed.db")
    create_all(eng)
    with session_scope(eng) as session:
        _register(session, "demo", n=2)
    eng.dispose()
    assert (home / "ehrembed.db").is_file()

    other = tmp_path / "elsewhere.db"
    monkeypatch.setenv("EHREMBED_DATABASE_URL", f"sqlite:///{other}")
    eng = make_engine()
    create_all(eng)
    eng.dispose()
    assert other.is_file()


def test_bad_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHREMBED_DATABASE_URL", "not a url")
    with pytest.raises(StoreError, match="EHREMBED_DATABASE_URL"):
        make_engine()
    with pytest.raises(StoreError, match="EHREMBED_DATABASE_URL"):
        make_engine("nosuchdialect://user@host/db")
    pytest.importorskip("psycopg")
    unreachable = make_engine("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    with pytest.raises(StoreError, match="EHREMBED_DATABASE_URL") as info:
        create_all(unreachable)
    assert "secret" not in str(info.value)
