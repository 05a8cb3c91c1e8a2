"""Embedding sets as recorded artifacts, with the one spec the export endpoint finds them by.

The spec is the set's encoder spec plus ``encoder``: the name the user gave the encoder (``student``,
``distilled``, a model folder), so ``GET /v1/embeddings/export?encoder=student`` finds a set made by
``ehrembed embed --encoder student`` or by the main job alike.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from ehrembed.ehr.meds import MedsDataset
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.store.catalog import record_artifact


def record_embeddings(
    session: Session, dataset: MedsDataset, path: Path, *, encoder: str, name: str | None = None
) -> EmbeddingSet:
    """Record the embedding set at ``path`` (made by ``encoder``) for ``dataset``; the set, loaded."""
    written = EmbeddingSet.load(path)
    spec = {**written.spec.to_dict(), "encoder": encoder}
    record_artifact(session, "embeddings", name or Path(path).name, Path(path), spec, dataset.name, dataset.root)
    return written
