"""Repository: plain functions over a :class:`~sqlalchemy.orm.Session`.

Functions add, change and query rows and ``flush`` when they need database ids; they never
commit. Wrap a unit of work in :func:`ehrembed.store.db.session_scope`, which commits at the end
of the block and rolls everything back if it raises::

    with session_scope(engine) as session:
        register_dataset(session, "eunomia", path, "omop", n, m, fingerprint, {}, splits)

Lookups of a missing name raise :class:`NotFoundError`, invalid input :class:`StoreError`, and
broken uniqueness rules :class:`ConflictError` (all ``ValueError``). Timestamps are naive UTC
(aware inputs are converted); see :mod:`ehrembed.store.tables`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from ehrembed import schema as s
from ehrembed.fsutil import sha256_file
from ehrembed.store.errors import ConflictError, NotFoundError, StoreError
from ehrembed.store.tables import (
    ApiKey,
    ApiScope,
    Artifact,
    ArtifactKind,
    AuditLog,
    Dataset,
    DatasetSource,
    LabelRow,
    Subject,
    Task,
    to_naive_utc,
    utcnow,
)

__all__ = [
    "API_KEY_PREFIX",
    "SplitsLike",
    "audit",
    "count_labels",
    "create_api_key",
    "current_artifact",
    "delete_artifact",
    "delete_dataset",
    "finish_audit",
    "get_api_key",
    "get_artifact",
    "get_dataset",
    "get_labels",
    "get_subjects",
    "get_task",
    "list_api_keys",
    "list_artifacts",
    "list_audit",
    "list_datasets",
    "list_tasks",
    "register_artifact",
    "register_dataset",
    "replace_labels",
    "revoke_api_key",
    "scope_allows",
    "upsert_task",
    "verify_api_key",
]

SplitsLike = Iterable[tuple[int, str, str | None]] | pl.DataFrame
"""Subjects of a dataset: ``(subject_id, split, source_id)`` tuples, or a frame with columns
``subject_id``, ``split`` and optionally ``source_id`` (e.g. ``metadata/subject_splits.parquet``)."""

API_KEY_PREFIX = "ehr_"
"""Every secret starts with this, followed by ``secrets.token_urlsafe(32)`` (256 random bits)."""

_KEY_PREFIX_LEN = 8
_BULK_CHUNK = 20_000
_SCOPE_RANK = {ApiScope.READ: 0, ApiScope.WRITE: 1, ApiScope.ADMIN: 2}

E = TypeVar("E", ApiScope, ArtifactKind, DatasetSource, s.Split)


def _coerce(enum_cls: type[E], value: str, what: str) -> E:
    try:
        return enum_cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum_cls)
        raise StoreError(f"unknown {what} {value!r}; expected one of {choices}") from None


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise StoreError(f"{what} name must be a non-empty string, got {name!r}")
    if len(name) > 200:
        raise StoreError(f"{what} name is longer than 200 characters: {name[:40]!r}...")
    return name


def _known(session: Session, column: Any) -> str:
    names = session.scalars(select(column).order_by(column).limit(20)).all()
    return ", ".join(repr(n) for n in names) if names else "none registered"


# --- datasets -----------------------------------------------------------------------------------


def _subject_rows(splits: SplitsLike) -> list[dict[str, Any]]:
    """Validated subject rows (no dataset id yet) from tuples or a frame."""
    if isinstance(splits, pl.DataFrame):
        missing = {s.SUBJECT_ID, s.SPLIT} - set(splits.columns)
        if missing:
            raise StoreError(f"splits frame lacks column(s) {sorted(missing)}; it has {splits.columns}")
        ids = splits.get_column(s.SUBJECT_ID).to_list()
        names = splits.get_column(s.SPLIT).to_list()
        source_ids = (
            splits.get_column(s.SOURCE_ID).cast(pl.String).to_list()
            if s.SOURCE_ID in splits.columns
            else [None] * len(ids)
        )
    else:
        ids, names, source_ids = [], [], []
        for row in splits:
            if len(row) not in (2, 3):
                raise StoreError(f"a split row is (subject_id, split[, source_id]), got {row!r}")
            ids.append(row[0])
            names.append(row[1])
            source_ids.append(row[2] if len(row) == 3 else None)
    valid = {m.value for m in s.Split}
    bad = {n for n in names if n not in valid}
    if bad:
        raise StoreError(f"unknown split name(s) {sorted(map(str, bad))}; expected one of {sorted(valid)}")
    if any(i is None for i in ids):
        raise StoreError("a subject_id in the splits is null")
    ids = [int(i) for i in ids]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise StoreError(f"subject ids appear more than once in the splits: {dupes[:10]}")
    return [
        {"subject_id": i, "split": str(n), "source_id": None if src is None else str(src)}
        for i, n, src in zip(ids, names, source_ids, strict=True)
    ]


def _bulk_insert(session: Session, table: type[Any], rows: Sequence[dict[str, Any]]) -> None:
    """``INSERT`` many rows as executemany batches (no per-row ORM objects)."""
    for start in range(0, len(rows), _BULK_CHUNK):
        session.execute(insert(table), list(rows[start : start + _BULK_CHUNK]))


def register_dataset(
    session: Session,
    name: str,
    path: str | Path,
    source: DatasetSource | str,
    n_subjects: int,
    n_events: int,
    fingerprint: str,
    meta: Mapping[str, Any] | None,
    splits: SplitsLike,
) -> Dataset:
    """Register dataset ``name``, or update it if it exists, and replace all its subject rows.

    ``source`` is one of ``omop``, ``fhir``, ``meds``, ``synth``; ``fingerprint`` is the
    caller's SHA-256 of the code metadata and shard files. ``splits`` gives every subject's split
    (``train``/``tuning``/``held_out``) and optional source-system id; the old subject rows are
    deleted and the new ones bulk-inserted (100k subjects take about a second). Everything is
    validated before anything is written. Returns the dataset row (flushed, so ``id`` is set).
    """
    _check_name(name, "dataset")
    source_value = _coerce(DatasetSource, source, "dataset source")
    if n_subjects < 0 or n_events < 0:
        raise StoreError(f"n_subjects and n_events must be >= 0, got {n_subjects} and {n_events}")
    rows = _subject_rows(splits)
    now = utcnow()
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        dataset = Dataset(name=name, created_at=now)
        session.add(dataset)
    dataset.path = str(path)
    dataset.source = source_value
    dataset.n_subjects = int(n_subjects)
    dataset.n_events = int(n_events)
    dataset.fingerprint = fingerprint
    dataset.meta = dict(meta or {})
    dataset.updated_at = now
    session.flush()
    session.execute(
        delete(Subject).where(Subject.dataset_id == dataset.id),
        execution_options={"synchronize_session": False},
    )
    for row in rows:
        row["dataset_id"] = dataset.id
    _bulk_insert(session, Subject, rows)
    return dataset


def get_dataset(session: Session, name: str) -> Dataset:
    """The dataset called ``name``; :class:`NotFoundError` naming the known ones if there is none."""
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFoundError(f"unknown dataset {name!r}; known: {_known(session, Dataset.name)}")
    return dataset


def list_datasets(session: Session) -> list[Dataset]:
    """All datasets, by name."""
    return list(session.scalars(select(Dataset).order_by(Dataset.name)))


def delete_dataset(session: Session, name: str) -> None:
    """Delete a dataset with its subjects and labels; its artifacts stay, detached from it."""
    dataset = get_dataset(session, name)
    session.execute(delete(Dataset).where(Dataset.id == dataset.id), execution_options={"synchronize_session": False})
    session.expunge(dataset)


def _resolve_dataset(session: Session, dataset: Dataset | str) -> Dataset:
    return dataset if isinstance(dataset, Dataset) else get_dataset(session, dataset)


def get_subjects(session: Session, dataset: Dataset | str, split: s.Split | str | None = None) -> pl.DataFrame:
    """Subjects of a dataset (optionally one split) as ``subject_id``/``split``/``source_id``, by id."""
    ds = _resolve_dataset(session, dataset)
    query = select(Subject.subject_id, Subject.split, Subject.source_id).where(Subject.dataset_id == ds.id)
    if split is not None:
        query = query.where(Subject.split == _coerce(s.Split, split, "split"))
    result = session.execute(query.order_by(Subject.subject_id)).all()
    return pl.DataFrame(
        {
            s.SUBJECT_ID: [r[0] for r in result],
            s.SPLIT: [str(r[1]) for r in result],
            s.SOURCE_ID: [r[2] for r in result],
        },
        schema={s.SUBJECT_ID: pl.Int64, s.SPLIT: pl.String, s.SOURCE_ID: pl.String},
    )


# --- artifacts ----------------------------------------------------------------------------------


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def register_artifact(
    session: Session,
    kind: ArtifactKind | str,
    name: str,
    path: str | Path,
    sha256: str | None = None,
    size_bytes: int | None = None,
    *,
    spec: Mapping[str, Any] | None = None,
    dataset: Dataset | str | None = None,
) -> Artifact:
    """Register artifact (``kind``, ``name``) or replace the registration that exists.

    ``sha256`` and ``size_bytes`` describe the file or folder at ``path``; when left out they are
    computed from it (a folder's checksum as :func:`ehrembed.fsutil.sha256_file` defines it).
    ``spec`` holds its description (encoder spec, config, metrics); ``dataset`` links the dataset
    it was built from. Re-registering resets ``created_at`` to now.
    """
    kind_value = _coerce(ArtifactKind, kind, "artifact kind")
    _check_name(name, "artifact")
    if sha256 is None or size_bytes is None:
        on_disk = Path(path)
        if not on_disk.exists():
            raise StoreError(f"cannot checksum artifact {name!r}: {on_disk} does not exist")
        sha256 = sha256_file(on_disk) if sha256 is None else sha256
        size_bytes = _size_of(on_disk) if size_bytes is None else size_bytes
    digest = sha256.lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise StoreError(f"sha256 of artifact {name!r} must be 64 hex characters, got {sha256!r}")
    if size_bytes < 0:
        raise StoreError(f"size_bytes of artifact {name!r} must be >= 0, got {size_bytes}")
    ds = None if dataset is None else _resolve_dataset(session, dataset)
    artifact = session.scalar(select(Artifact).where(Artifact.kind == kind_value, Artifact.name == name))
    if artifact is None:
        artifact = Artifact(kind=kind_value, name=name)
        session.add(artifact)
    artifact.path = str(path)
    artifact.sha256 = digest
    artifact.size_bytes = int(size_bytes)
    artifact.spec = dict(spec or {})
    artifact.dataset = ds
    artifact.created_at = utcnow()
    session.flush()
    return artifact


def get_artifact(session: Session, kind: ArtifactKind | str, name: str) -> Artifact:
    """The artifact (``kind``, ``name``); :class:`NotFoundError` if none is registered."""
    kind_value = _coerce(ArtifactKind, kind, "artifact kind")
    artifact = session.scalar(select(Artifact).where(Artifact.kind == kind_value, Artifact.name == name))
    if artifact is None:
        known = session.scalars(
            select(Artifact.name).where(Artifact.kind == kind_value).order_by(Artifact.name).limit(20)
        ).all()
        raise NotFoundError(
            f"unknown {kind_value.value} artifact {name!r}; known: "
            + (", ".join(map(repr, known)) if known else "none registered")
        )
    return artifact


def list_artifacts(
    session: Session, kind: ArtifactKind | str | None = None, dataset: Dataset | str | None = None
) -> list[Artifact]:
    """Artifacts, optionally of one kind and/or built from one dataset, by kind then name."""
    query = select(Artifact)
    if kind is not None:
        query = query.where(Artifact.kind == _coerce(ArtifactKind, kind, "artifact kind"))
    if dataset is not None:
        query = query.where(Artifact.dataset_id == _resolve_dataset(session, dataset).id)
    return list(session.scalars(query.order_by(Artifact.kind, Artifact.name)))


def current_artifact(
    session: Session,
    kind: ArtifactKind | str,
    dataset: Dataset | str,
    *,
    matches: Callable[[Artifact], bool] | None = None,
) -> Artifact | None:
    """The newest artifact of ``kind`` recorded for ``dataset`` whose files still exist (and that ``matches``).

    The one rule for "the current index / embedding set of a dataset": newest by recording time (then
    id), skipping any whose path is gone; None when there is none (or the dataset is unknown).
    """
    try:
        artifacts = list_artifacts(session, kind, dataset=dataset)
    except NotFoundError:
        return None
    for artifact in sorted(artifacts, key=lambda a: (a.created_at, a.id), reverse=True):
        if Path(artifact.path).exists() and (matches is None or matches(artifact)):
            return artifact
    return None


def delete_artifact(session: Session, kind: ArtifactKind | str, name: str) -> None:
    """Forget an artifact's registration (its files are left alone)."""
    session.delete(get_artifact(session, kind, name))
    session.flush()


# --- tasks and labels ---------------------------------------------------------------------------


def upsert_task(session: Session, name: str, definition: Mapping[str, Any]) -> Task:
    """Create task ``name`` or replace its definition; its labels are kept."""
    _check_name(name, "task")
    task = session.scalar(select(Task).where(Task.name == name))
    now = utcnow()
    if task is None:
        task = Task(name=name, created_at=now)
        session.add(task)
    task.definition = dict(definition)
    task.updated_at = now
    session.flush()
    return task


def get_task(session: Session, name: str) -> Task:
    """The task called ``name``; :class:`NotFoundError` naming the known ones if there is none."""
    task = session.scalar(select(Task).where(Task.name == name))
    if task is None:
        raise NotFoundError(f"unknown task {name!r}; known: {_known(session, Task.name)}")
    return task


def list_tasks(session: Session) -> list[Task]:
    """All tasks, by name."""
    return list(session.scalars(select(Task).order_by(Task.name)))


def _resolve_task(session: Session, task: Task | str) -> Task:
    return task if isinstance(task, Task) else get_task(session, task)


def replace_labels(session: Session, task: Task | str, dataset: Dataset | str, labels: Iterable[s.Label]) -> int:
    """Replace every label of ``task`` on ``dataset`` with ``labels``; returns how many were stored.

    Prediction times are stored naive UTC (aware ones converted). Two labels for one
    (subject, prediction time), or a non-finite value, are a :class:`StoreError` raised before
    anything is written.
    """
    task_row = _resolve_task(session, task)
    ds = _resolve_dataset(session, dataset)
    rows: list[dict[str, Any]] = []
    seen: set[tuple[int, dt.datetime]] = set()
    for label in labels:
        when = to_naive_utc(label.prediction_time)
        key = (int(label.subject_id), when)
        if key in seen:
            raise StoreError(f"task {task_row.name!r}: two labels for subject {key[0]} at {when.isoformat()}")
        seen.add(key)
        value = float(label.value)
        if not math.isfinite(value):
            raise StoreError(f"task {task_row.name!r}: label value of subject {key[0]} is {value}")
        rows.append(
            {
                "task_id": task_row.id,
                "dataset_id": ds.id,
                "subject_id": key[0],
                "prediction_time": when,
                "value": value,
            }
        )
    session.execute(
        delete(LabelRow).where(LabelRow.task_id == task_row.id, LabelRow.dataset_id == ds.id),
        execution_options={"synchronize_session": False},
    )
    _bulk_insert(session, LabelRow, rows)
    return len(rows)


def get_labels(session: Session, task: Task | str, dataset: Dataset | str) -> list[s.Label]:
    """Labels of ``task`` on ``dataset`` ordered by subject and prediction time (values as floats)."""
    task_row = _resolve_task(session, task)
    ds = _resolve_dataset(session, dataset)
    result = session.execute(
        select(LabelRow.subject_id, LabelRow.prediction_time, LabelRow.value)
        .where(LabelRow.task_id == task_row.id, LabelRow.dataset_id == ds.id)
        .order_by(LabelRow.subject_id, LabelRow.prediction_time)
    )
    return [s.Label(int(sid), when, float(value)) for sid, when, value in result]


def count_labels(session: Session, task: Task | str, dataset: Dataset | str) -> int:
    """How many labels ``task`` has on ``dataset``."""
    task_row = _resolve_task(session, task)
    ds = _resolve_dataset(session, dataset)
    count = session.scalar(
        select(func.count()).select_from(LabelRow).where(LabelRow.task_id == task_row.id, LabelRow.dataset_id == ds.id)
    )
    return int(count or 0)


# --- API keys -----------------------------------------------------------------------------------


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_api_key(session: Session, name: str, scope: ApiScope | str) -> tuple[ApiKey, str]:
    """A new API key; returns the row and the secret, which is shown this once and never stored.

    The secret is ``ehr_`` plus 256 random bits (``secrets.token_urlsafe(32)``); the row keeps its
    first 8 characters (``key_prefix``) and its SHA-256. A name may belong to one active key at a
    time (:class:`ConflictError` otherwise); revoke the old key to reuse the name.
    """
    _check_name(name, "API key")
    scope_value = _coerce(ApiScope, scope, "API key scope")
    clash = session.scalar(select(ApiKey.id).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)))
    if clash is not None:
        raise ConflictError(f"an active API key named {name!r} already exists; revoke it or pick another name")
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name,
        scope=scope_value,
        key_prefix=secret[:_KEY_PREFIX_LEN],
        key_hash=_hash_secret(secret),
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return key, secret


def verify_api_key(session: Session, secret: str) -> ApiKey | None:
    """The active key whose secret this is (its ``last_used_at`` set to now), else ``None``.

    Hashes are compared with :func:`hmac.compare_digest`; revoked keys and malformed secrets give
    ``None``.
    """
    if not isinstance(secret, str) or not secret.startswith(API_KEY_PREFIX) or len(secret) > 256:
        return None
    digest = _hash_secret(secret)
    candidates = session.scalars(select(ApiKey).where(ApiKey.key_prefix == secret[:_KEY_PREFIX_LEN])).all()
    match: ApiKey | None = None
    for candidate in candidates:  # compare against every candidate: timing does not tell which
        if hmac.compare_digest(candidate.key_hash, digest):
            match = candidate
    if match is None or match.revoked_at is not None:
        return None
    match.last_used_at = utcnow()
    session.flush()
    return match


def get_api_key(session: Session, key: int | str) -> ApiKey:
    """A key by id, or the active key of a name; :class:`NotFoundError` if none."""
    if isinstance(key, int):
        row = session.get(ApiKey, key)
    else:
        row = session.scalar(select(ApiKey).where(ApiKey.name == key, ApiKey.revoked_at.is_(None)))
    if row is None:
        what = "API key with id" if isinstance(key, int) else "active API key named"
        raise NotFoundError(f"no {what} {key!r}")
    return row


def revoke_api_key(session: Session, key: int | str) -> ApiKey:
    """Revoke a key (by id, or the active key of a name); revoking twice keeps the first time."""
    row = get_api_key(session, key)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def list_api_keys(session: Session, include_revoked: bool = False) -> list[ApiKey]:
    """API keys (active ones unless ``include_revoked``), oldest first."""
    query = select(ApiKey)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query.order_by(ApiKey.created_at, ApiKey.id)))


def scope_allows(key_scope: ApiScope | str, required: ApiScope | str) -> bool:
    """Whether a key of ``key_scope`` may do what needs ``required`` (read < write < admin)."""
    have = _coerce(ApiScope, key_scope, "API key scope")
    need = _coerce(ApiScope, required, "API key scope")
    return _SCOPE_RANK[have] >= _SCOPE_RANK[need]


# --- audit log ----------------------------------------------------------------------------------


def audit(
    session: Session,
    api_key_id: int | None,
    endpoint: str,
    method: str,
    subject_ids: Iterable[int] | None,
    dataset: str | None,
    status_code: int,
) -> AuditLog:
    """Append an audit row: who (key id) called what, on which dataset and subjects, with what status.

    ``dataset`` is what the client sent, valid or not; NUL bytes in it are stored escaped (``\\x00``),
    since PostgreSQL text cannot hold them and a refused request must still be audited.
    """
    row = AuditLog(
        time=utcnow(),
        api_key_id=api_key_id,
        endpoint=endpoint,
        method=method.upper(),
        subject_ids=[int(i) for i in (subject_ids or [])],
        dataset=dataset.replace("\x00", "\\x00") if dataset is not None else None,
        status_code=int(status_code),
    )
    session.add(row)
    session.flush()
    return row


def finish_audit(session: Session, row_id: int, status_code: int) -> None:
    """Set the outcome of a row written before its request finished (see ``audit(..., status_code=102)``)."""
    row = session.get(AuditLog, row_id)
    if row is not None:
        row.status_code = int(status_code)
        session.flush()


def list_audit(
    session: Session,
    *,
    api_key_id: int | None = None,
    dataset: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int | None = 1000,
) -> list[AuditLog]:
    """Audit rows, newest first, optionally for one key, one dataset and a time window [since, until)."""
    query = select(AuditLog)
    if api_key_id is not None:
        query = query.where(AuditLog.api_key_id == api_key_id)
    if dataset is not None:
        query = query.where(AuditLog.dataset == dataset)
    if since is not None:
        query = query.where(AuditLog.time >= to_naive_utc(since))
    if until is not None:
        query = query.where(AuditLog.time < to_naive_utc(until))
    query = query.order_by(AuditLog.time.desc(), AuditLog.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))
