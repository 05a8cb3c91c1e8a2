"""Artifacts (embeddings, indexes, models, heads): registered with checksums, found by kind and dataset."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ehrembed.fsutil import sha256_file
from ehrembed.store.errors import NotFoundError, StoreError
from ehrembed.store.repository.common import _check_name, _coerce
from ehrembed.store.repository.datasets import _resolve_dataset
from ehrembed.store.tables import (
    Artifact,
    ArtifactKind,
    Dataset,
    utcnow,
)


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
