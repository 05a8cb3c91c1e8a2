"""Guideline retrieval quality and speed: hit@1, hit@5 and MRR per query set and mode, query latency, and the
precision of what record augmentation appends.

Query sets (``--queries``, repeatable; default the three packaged ones, held-out first):

- ``guideline_queries_shorthand.json`` (94, **held out**): clinician's shorthand, written without reading
  passages; no setting is chosen on it;
- ``guideline_queries_shorthand_dev.json`` (66) and ``guideline_queries.json`` (67, written from the
  guideline texts): the sets the search settings (:class:`FusionConfig`) were chosen on.

Each set is scored with the knowledge base's settings (``tuned``) and with every addition off (``plain``:
no abbreviation expansion, no guideline aggregation), so one run shows before and after. A guideline
ranks at its best passage's position; hit@k is the share of queries with a right guideline in the top k,
MRR the mean reciprocal rank of the first right one. Latency: ``kb.search(q, k=5)`` per query in
process, hybrid, after a warm-up; p50 / p99 over every query of every set.

Augmentation (``--judged``, default ``bench/data/guideline_augment_judged.json``): the most frequent query
terms augmentation issues on Eunomia and carebundle, each judged by hand (the relevant guidelines, or
none). Per cohort: precision (appended passages from a relevant guideline / appended passages), recall
(terms with a relevant guideline that get one), and silence (terms no guideline covers that get nothing).

    python bench/guidelines.py [--kb DIR | --model DIR] [--queries FILE ...] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb, save

from ehrembed.retrieval.augment import GuidelineAugmentation, GuidelineAugmenter
from ehrembed.retrieval.guidelines import (
    MODES,
    FusionConfig,
    GuidelineKB,
    RetrievalModelConfig,
    build_knowledge_base,
    evaluate,
    load_queries,
    query_ranks,
)

DATA = Path(__file__).resolve().parents[1] / "ehrembed" / "retrieval" / "data"
SETS = ("guideline_queries_shorthand.json", "guideline_queries_shorthand_dev.json", "guideline_queries.json")
JUDGED = Path(__file__).resolve().parent / "data" / "guideline_augment_judged.json"
PLAIN = FusionConfig(expand=False, expand_dense=False, guideline_weight=0.0, metadata_weight=0.0)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def augmentation_precision(kb: GuidelineKB, judged: dict[str, list[dict[str, object]]]) -> dict[str, object]:
    """Per cohort: what augmentation appends for each judged term alone, against the judgement."""
    augmenter = GuidelineAugmenter(GuidelineAugmentation(), kb=kb)
    out: dict[str, object] = {}
    for cohort, items in judged.items():
        appended = relevant = covered = covered_hit = uncovered = silent = 0
        misses = []
        for item in items:
            term, wanted = str(item["term"]), set(item["relevant"])  # type: ignore[call-overload]
            got = [p.guideline_id for p in augmenter.passages_for_terms([term])]
            appended += len(got)
            relevant += sum(g in wanted for g in got)
            if wanted:
                covered += 1
                covered_hit += any(g in wanted for g in got)
            else:
                uncovered += 1
                silent += not got
            if any(g not in wanted for g in got) or (wanted and not any(g in wanted for g in got)):
                misses.append({"term": term, "appended": got, "relevant": sorted(wanted)})
        out[cohort] = {
            "terms": len(items),
            "precision": round(relevant / appended, 4) if appended else None,
            "passages_appended": appended,
            "recall": round(covered_hit / covered, 4) if covered else None,
            "silence": round(silent / uncovered, 4) if uncovered else None,
            "not_as_judged": misses,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kb", type=Path, default=None, help="a built knowledge base folder (default: build one)")
    parser.add_argument("--model", type=Path, default=None, help="BGE folder (default: packaged MiniLM)")
    parser.add_argument("--source", type=Path, default=None, help="guideline folder (default: open-medicine)")
    parser.add_argument("--queries", type=Path, action="append", default=None, help="labelled queries (repeatable)")
    parser.add_argument("--judged", type=Path, default=JUDGED, help="judged augmentation terms")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    if args.kb is not None:
        kb = GuidelineKB.load(args.kb)
        kb.fusion = FusionConfig()  # the current defaults, whatever the folder was saved with
        kb.get_encoder()
    else:
        model = RetrievalModelConfig.bge(args.model) if args.model else RetrievalModelConfig.minilm()
        kb = build_knowledge_base(args.source, model)
    built = time.perf_counter()
    tuned = kb.fusion
    paths = args.queries or [DATA / name for name in SETS]
    results: dict[str, dict[str, object]] = {}
    not_first: dict[str, list[dict[str, object]]] = {}
    for path in paths:
        queries = load_queries(path)
        per_config: dict[str, object] = {}
        for name, fusion in (("tuned", tuned), ("plain", PLAIN)):
            kb.fusion = fusion
            per_config[name] = evaluate(kb, queries, MODES)
        kb.fusion = tuned
        results[path.name] = {"n": len(queries), **per_config}
        ranks = query_ranks(kb, queries, "hybrid")
        not_first[path.name] = [
            {"query": q.query, "expected": list(q.guideline_ids), "rank": r, "top": kb.rank_guidelines(q.query)[:3]}
            for q, r in zip(queries, ranks, strict=True)
            if r != 1
        ]
    evaluated = time.perf_counter()

    texts = [q.query for path in paths for q in load_queries(path)]
    for text in texts[:10]:
        kb.search(text, k=5)  # warm-up
    latencies = []
    for text in texts:
        tick = time.perf_counter()
        kb.search(text, k=5)
        latencies.append((time.perf_counter() - tick) * 1000)

    judged = json.loads(args.judged.read_text(encoding="utf-8"))["cohorts"]
    augmentation: dict[str, object] = {}
    for name, fusion in (("tuned", tuned), ("plain", PLAIN)):
        kb.fusion = fusion
        augmentation[name] = augmentation_precision(kb, judged)
    kb.fusion = tuned

    figures = {
        "command": "python bench/guidelines.py" + (f" --kb {args.kb}" if args.kb else ""),
        "model": kb.meta["encoder"]["name"],
        "guidelines": len(kb.guideline_ids),
        "passages": len(kb),
        "fusion": dataclasses.asdict(tuned),
        "held_out": paths[0].name,
        "results": results,
        "latency_ms": {
            "hybrid_search_p50": round(statistics.median(latencies), 2),
            "hybrid_search_p99": round(_percentile(latencies, 0.99), 2),
            "queries": len(latencies),
        },
        "augmentation": augmentation,
        "seconds": {"load_or_build": round(built - started, 2), "evaluate": round(evaluated - built, 2)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "not_first": not_first,
    }
    save("guidelines", figures, args.json_out)


if __name__ == "__main__":
    main()
