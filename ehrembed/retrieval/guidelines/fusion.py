"""Reciprocal rank fusion of the BM25 and dense rankings (``sum(w / (k + rank))``, k = 60)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FusionConfig:
    """Reciprocal rank fusion: a passage scores ``sum(weight / (k + rank))`` over the rankings it is in."""

    k: int = 60
    bm25_weight: float = 1.0
    dense_weight: float = 1.0
    depth: int = 100
    """How deep each ranking goes into the fusion."""


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
