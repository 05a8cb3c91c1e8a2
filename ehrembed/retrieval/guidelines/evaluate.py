"""Retrieval quality on labelled queries: rank of the first right guideline, hit@k and MRR per mode."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ehrembed.retrieval.guidelines.base import MODES, GuidelineError, Mode
from ehrembed.retrieval.guidelines.kb import GuidelineKB


@dataclass(frozen=True)
class LabelledQuery:
    """A clinical question and the guideline ids that answer it."""

    query: str
    guideline_ids: tuple[str, ...]


def load_queries(path: Path | str | None = None) -> list[LabelledQuery]:
    """A labelled query set (default: the packaged ``retrieval/data/guideline_queries.json``)."""
    target = Path(path) if path is not None else Path(__file__).parents[1] / "data" / "guideline_queries.json"
    data = json.loads(target.read_text(encoding="utf-8"))
    items = data["queries"] if isinstance(data, dict) else data
    queries: list[LabelledQuery] = []
    for i, item in enumerate(items):
        ids = item.get("guideline_ids")
        if not isinstance(item.get("query"), str) or not isinstance(ids, list) or not ids:
            raise GuidelineError(f"{target}: query {i} needs a 'query' string and a non-empty 'guideline_ids' list")
        queries.append(LabelledQuery(item["query"], tuple(str(x) for x in ids)))
    return queries


def query_ranks(kb: GuidelineKB, queries: Sequence[LabelledQuery], mode: Mode = "hybrid") -> list[int | None]:
    """For each query, the 1-based rank of the first correct guideline (None: not retrieved at all)."""
    vectors = kb.query_vectors([q.query for q in queries]) if mode in ("dense", "hybrid") else None
    ranks: list[int | None] = []
    for n, q in enumerate(queries):
        order = kb.rank_guidelines(q.query, mode, query_vector=None if vectors is None else vectors[n])
        hit = next((r for r, gid in enumerate(order, start=1) if gid in q.guideline_ids), None)
        ranks.append(hit)
    return ranks


def evaluate(
    kb: GuidelineKB,
    queries: Sequence[LabelledQuery] | None = None,
    modes: Sequence[Mode] = MODES,
) -> dict[str, dict[str, float]]:
    """hit@1, hit@5 and MRR of guideline retrieval per mode (a guideline ranks at its best passage)."""
    queries = list(queries) if queries is not None else load_queries()
    if not queries:
        raise GuidelineError("no queries to evaluate")
    unknown = sorted({g for q in queries for g in q.guideline_ids} - set(kb.guideline_ids))
    if unknown:
        raise GuidelineError(f"queries name guidelines the knowledge base lacks: {', '.join(unknown)}")
    results: dict[str, dict[str, float]] = {}
    for mode in modes:
        ranks = query_ranks(kb, queries, mode)
        n = len(ranks)
        results[mode] = {
            "hit@1": round(sum(r == 1 for r in ranks) / n, 4),
            "hit@5": round(sum(r is not None and r <= 5 for r in ranks) / n, 4),
            "mrr": round(sum(1.0 / r for r in ranks if r is not None) / n, 4),
            "n": n,
        }
    return results
