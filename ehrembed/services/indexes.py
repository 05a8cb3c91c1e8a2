"""Similar-patient indexes as recorded artifacts: built from embedding sets, found by dataset.

Every index artifact has one spec shape: ``kind``, ``encoder`` (the embeddings' encoder spec),
``embeddings`` (the sets' resolved paths; empty for sets made in memory), ``params`` and ``rows``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from ehrembed.ehr.meds import MedsDataset
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.errors import InputError, NotFoundError
from ehrembed.retrieval.index import IndexBuildReport, build_index
from ehrembed.retrieval.sharded import build_sharded_index
from ehrembed.store.catalog import record_artifact
from ehrembed.store.repository import current_artifact

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RecordedIndex:
    report: IndexBuildReport
    subjects_not_in_dataset: int
    """Rows whose subject the dataset does not hold (a warning; all of them is an error)."""


def build_recorded_index(
    dataset: MedsDataset,
    embeddings: Sequence[Path | EmbeddingSet],
    target: Path,
    *,
    session: Session,
    kind: str = "auto",
    ray_address: str | None = None,
    progress: Progress | None = None,
) -> RecordedIndex:
    """Index the embedding sets (several: one IVF-PQ index shard by shard) at ``target`` and record it in the
    store through ``session``."""
    if not embeddings:
        raise InputError("no embedding sets to index")
    sets = [e if isinstance(e, EmbeddingSet) else EmbeddingSet.load(e) for e in embeddings]
    known = np.asarray(dataset.subject_ids(), dtype=np.int64)
    total = sum(len(emb) for emb in sets)
    unknown = sum(int((~np.isin(emb.subject_ids, known)).sum()) for emb in sets)
    if unknown == total:
        raise InputError(
            f"none of the {total:,} subjects in the embeddings is in dataset {dataset.root}; wrong dataset?"
        )
    paths = [Path(e).resolve() for e in embeddings if not isinstance(e, EmbeddingSet)]
    if len(sets) > 1:
        if kind not in ("auto", "ivfpq"):
            raise InputError("several embedding sets build one IVF-PQ index shard by shard; use kind ivfpq (or auto)")
        if len(paths) != len(sets):
            raise InputError("a sharded index is built from embedding sets on disk: pass their paths")
        report = build_sharded_index(paths, target, ray_address=ray_address, progress=progress)
    else:
        # prognostic vectors are not unit length; similar-patient search compares them by cosine, as the
        # benchmark's neighbour lift does
        normalize = True if sets[0].spec.kind == "prognosis" else None
        report = build_index(sets[0], target, kind=kind, normalize=normalize, progress=progress)
    spec = {
        "kind": report.kind,
        "encoder": sets[0].spec.to_dict(),
        "embeddings": [str(p) for p in paths],
        "params": report.params,
        "rows": report.rows,
    }
    record_artifact(session, "index", Path(target).name, Path(target), spec, dataset.name, dataset.root)
    return RecordedIndex(report, unknown)


def recorded_index(session: Session, dataset_name: str) -> Path:
    """The newest index recorded for a dataset whose folder still exists; NotFoundError says how to make one."""
    artifact = current_artifact(session, "index", dataset_name)
    if artifact is not None:
        return Path(artifact.path)
    raise NotFoundError(
        f"no index is recorded for dataset {dataset_name!r}; build one with "
        "`ehrembed index DIR --embeddings FILE` or pass --index PATH"
    )
