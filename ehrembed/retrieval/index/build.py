"""Build and save an index from an embedding set in one call (``ehrembed index``)."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.retrieval.index.params import IndexKind, IndexParams
from ehrembed.retrieval.index.storage import META_FILE
from ehrembed.retrieval.index.vector_index import Progress, VectorIndex


@dataclass(frozen=True)
class IndexBuildReport:
    """What :func:`build_index` did."""

    out: Path
    kind: str
    rows: int
    dim: int
    seconds: float
    index_bytes: int
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out"] = str(self.out)
        data["seconds"] = round(self.seconds, 3)
        return data


def build_index(
    embeddings: EmbeddingSet,
    out: Path | str,
    *,
    kind: IndexKind | str = "auto",
    params: IndexParams | None = None,
    normalize: bool | None = None,
    progress: Progress | None = None,
) -> IndexBuildReport:
    """Index an embedding set and save it at ``out`` (atomically: a failed build keeps any old index).
    ``normalize`` None follows the encoder spec (cosine for L2-normalising encoders)."""
    started = time.perf_counter()
    index = VectorIndex.from_embeddings(embeddings, kind=kind, params=params, normalize=normalize, progress=progress)
    out = index.save(out)
    meta = json.loads((Path(out) / META_FILE).read_text())
    return IndexBuildReport(
        out=Path(out),
        kind=index.kind,
        rows=len(index),
        dim=index.dim,
        seconds=time.perf_counter() - started,
        index_bytes=int(meta["index_bytes"]),
        params=index.params.to_dict(),
    )
