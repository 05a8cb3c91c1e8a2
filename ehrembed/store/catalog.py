"""Record datasets (size, fingerprint, every subject's split) and their derived artifacts in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import select
from sqlalchemy.orm import Session

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.fsutil import sha256_file
from ehrembed.store.errors import NotFoundError
from ehrembed.store.repository import register_artifact, register_dataset
from ehrembed.store.tables import Artifact, ArtifactKind, Dataset, DatasetSource


def register_meds(
    session: Session, dataset: MedsDataset, source: DatasetSource | str, name: str | None = None
) -> Dataset:
    """Upsert ``dataset`` under ``name`` (default: its metadata name) with its subjects and splits."""
    splits = dataset.splits()
    source_ids = dataset.source_ids()
    if source_ids is not None:
        splits = splits.join(source_ids, on=s.SUBJECT_ID, how="left")
    else:
        splits = splits.with_columns(pl.lit(None, dtype=pl.String).alias(s.SOURCE_ID))
    n_events = dataset.scan().select(pl.len()).collect().item()
    return register_dataset(
        session,
        name=name or dataset.name,
        path=str(dataset.root.resolve()),
        source=source,
        n_subjects=splits.height,
        n_events=int(n_events),
        fingerprint=sha256_file(dataset.root),
        meta=dataset.metadata,
        splits=splits,
    )


def record_artifact(
    session: Session,
    kind: ArtifactKind | str,
    name: str,
    path: Path,
    spec: dict[str, Any],
    dataset: str | None,
    dataset_root: Path | None = None,
) -> Artifact:
    """Register an output (embeddings, model, index...) with its checksum, linked to its dataset if known.

    With ``dataset_root``, the dataset registered for that folder is the one linked, whatever name
    it was registered under (``ehrembed embed DIR`` then links to the name the service knows DIR by);
    ``dataset`` wins if the folder is registered under it too.
    """
    if dataset_root is not None:
        root = str(Path(dataset_root).resolve())
        names = list(session.scalars(select(Dataset.name).where(Dataset.path == root).order_by(Dataset.id.desc())))
        if names and dataset not in names:
            dataset = names[0]  # the newest registration of the folder
    try:
        return register_artifact(session, kind, name, path.resolve(), spec=spec, dataset=dataset)
    except NotFoundError:  # the dataset was never registered here: keep the artifact unlinked
        return register_artifact(session, kind, name, path.resolve(), spec=spec, dataset=None)
