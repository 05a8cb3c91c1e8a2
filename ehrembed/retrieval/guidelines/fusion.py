"""Reciprocal rank fusion of the BM25 and dense rankings (``sum(w / (k + rank))``, k = 60), and the hybrid
search's other settings: query expansion and guideline-level aggregation (see :class:`FusionConfig`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FusionConfig:
    """How the hybrid search scores a passage.

    A passage's own score is reciprocal rank fusion, ``sum(weight / (k + rank))`` over the BM25 and dense
    rankings it is in. Its guideline adds ``guideline_weight`` times the guideline's score: the fused
    contributions of its ``aggregate_depth`` best passages in each ranking (the j-th counted
    ``aggregate_decay ** j``), plus ``metadata_weight / (k + rank)`` of the guideline in a BM25 ranking of
    the guidelines' registry fields (title, organisation, topics). So a guideline that several passages
    and its own title support outranks one lucky passage elsewhere. With ``expand``, queries are expanded
    with the clinical abbreviation table (:mod:`.expansion`) before BM25 and, with ``expand_dense``,
    before the dense model. Every field enters the knowledge base's fingerprint.

    Defaults were chosen on the packaged ``guideline_queries.json`` and ``guideline_queries_shorthand_dev.json``
    (pooled MRR; ``bench/guidelines.py`` reports the held-out ``guideline_queries_shorthand.json`` beside
    them): expansion helped there (0.970 -> 0.980), guideline aggregation and the registry field did not
    (0.971-0.975 with them), so they are off unless asked for.
    """

    k: int = 60
    bm25_weight: float = 1.0
    dense_weight: float = 1.0
    depth: int = 100
    """How deep each ranking goes into the fusion."""
    guideline_weight: float = 0.0
    aggregate_depth: int = 3
    aggregate_decay: float = 0.5
    metadata_weight: float = 0.0
    expand: bool = True
    expand_dense: bool = True


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], weights: Sequence[float], *, k: int = 60
) -> list[tuple[int, float]]:
    """Fuse ranked id lists (best first) into ``(id, score)`` best first; ties keep the first ranking's order."""
    scores: dict[int, float] = {}
    first_seen: dict[int, tuple[int, int]] = {}
    for r, (ranking, weight) in enumerate(zip(rankings, weights, strict=True)):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
            first_seen.setdefault(item, (rank, r))
    return sorted(scores.items(), key=lambda kv: (-kv[1], first_seen[kv[0]]))
