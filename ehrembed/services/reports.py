"""Benchmark reports as recorded artifacts: a written report folder registered for its dataset, found again
by name, and read back as numbers (:func:`ehrembed.predict.report_summary.report_summary`).

A report artifact's name is the folder's name plus 8 hex digits of its resolved path, so re-running a
benchmark into the same folder replaces its registration and two runs elsewhere never collide. Its spec
holds ``title``, ``encoders``, ``tasks`` (names) and ``heads``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from ehrembed.errors import NotFoundError
from ehrembed.predict.report_summary import report_summary
from ehrembed.store.catalog import record_artifact
from ehrembed.store.repository import get_artifact, list_artifacts
from ehrembed.store.tables import Artifact, ArtifactKind


def report_name(folder: Path) -> str:
    resolved = Path(folder).resolve()
    return f"{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def record_report(session: Session, folder: Path, dataset_name: str, dataset_root: Path | None = None) -> Artifact:
    """Register the report written in ``folder`` for its dataset; its spec summarises what it compares."""
    summary = report_summary(folder)
    spec = {
        "title": summary["title"],
        "encoders": summary["encoders"],
        "heads": summary["heads"],
        "tasks": [t["task"] for t in summary["tasks"]],
    }
    name = report_name(folder)
    return record_artifact(session, ArtifactKind.REPORT, name, Path(folder), spec, dataset_name, dataset_root)


def recorded_reports(session: Session, dataset: str | None = None) -> list[Artifact]:
    """The recorded reports whose folders still exist, newest first."""
    found = [a for a in list_artifacts(session, ArtifactKind.REPORT, dataset=dataset) if Path(a.path).is_dir()]
    return sorted(found, key=lambda a: (a.created_at, a.id), reverse=True)


def recorded_report(session: Session, name: str) -> tuple[Artifact, dict[str, Any]]:
    """A recorded report and its numbers; NotFoundError when unknown or its folder is gone."""
    artifact = get_artifact(session, ArtifactKind.REPORT, name)
    if not Path(artifact.path).is_dir():
        raise NotFoundError(f"report {name!r} is recorded but its folder is gone")
    return artifact, report_summary(artifact.path)
