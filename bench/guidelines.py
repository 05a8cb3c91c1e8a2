"""Guideline retrieval quality: hit@1, hit@5 and MRR of BM25, dense and hybrid search on the labelled queries.

Builds the knowledge base from the open-medicine guidelines (or --source) with the packaged
all-MiniLM-L6-v2 (or --model, a BGE folder) and evaluates it on
``ehrembed/retrieval/data/guideline_queries.json`` (or --queries): a guideline ranks at its best
passage; hit@k is the share of queries with a correct guideline in the top k, MRR the mean
reciprocal rank of the first correct one. Also reports build time and passage counts, and lists
the queries each mode does not answer first.

    python bench/guidelines.py [--model DIR] [--source DIR] [--queries FILE] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb, save

from ehrembed.retrieval.guidelines import (
    MODES,
    RetrievalModelConfig,
    build_knowledge_base,
    evaluate,
    load_queries,
    query_ranks,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=None, help="BGE folder (default: packaged MiniLM)")
    parser.add_argument("--source", type=Path, default=None, help="guideline folder (default: open-medicine)")
    parser.add_argument("--queries", type=Path, default=None, help="labelled queries (default: the packaged set)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    model = RetrievalModelConfig.bge(args.model) if args.model else RetrievalModelConfig.minilm()
    started = time.perf_counter()
    encoder = model.load_encoder()
    loaded = time.perf_counter()
    kb = build_knowledge_base(args.source, model, encoder=encoder)
    built = time.perf_counter()
    queries = load_queries(args.queries)
    results = evaluate(kb, queries)
    evaluated = time.perf_counter()
    misses: dict[str, list[dict[str, object]]] = {}
    for mode in MODES:
        ranks = query_ranks(kb, queries, mode)
        misses[mode] = [
            {
                "query": q.query,
                "expected": list(q.guideline_ids),
                "rank": r,
                "top": kb.rank_guidelines(q.query, mode)[:3],
            }
            for q, r in zip(queries, ranks, strict=True)
            if r != 1
        ]
    figures = {
        "command": "python bench/guidelines.py" + (f" --model {args.model}" if args.model else ""),
        "model": kb.meta["encoder"]["name"],
        "model_config": model.to_dict(),
        "guidelines": len(kb.guideline_ids),
        "passages": len(kb),
        "queries": len(queries),
        "chunking": kb.meta["chunking"],
        "bm25": kb.meta["bm25"],
        "fusion": {"k": kb.fusion.k, "bm25_weight": kb.fusion.bm25_weight, "dense_weight": kb.fusion.dense_weight},
        "results": results,
        "seconds": {
            "load_model": round(loaded - started, 2),
            "build": round(built - loaded, 2),
            "evaluate_all_modes": round(evaluated - built, 2),
        },
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "not_first": misses,
    }
    save("guidelines", figures, args.json_out)


if __name__ == "__main__":
    main()
