"""Which record layout embeds best: few-shot macro AUROC of one encoder's vectors per serializer layout,
scored on the tuning split (never the held-out one), so the default can be picked without peeking.

The held-out patients are left out entirely; the tuning patients are halved by a hash of their id:
one half validates the heads, the other half is scored. Labels are the main job's: its tasks and its
case-cohort sample (60 positives a task, 160 background patients).

Run ``.venv/bin/python bench/layouts.py [--cohort eunomia|carebundle] [--formats markdown,list]
[--encoder student] [--max-tokens 192]``; figures go to bench/results/layouts-COHORT.json.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save

from ehrembed.ehr.meds import MedsDataset


def tuning_only_splits(splits: pl.DataFrame) -> pl.DataFrame:
    """held_out dropped; tuning halved by id hash into tuning (validation) and held_out (scored)."""
    from ehrembed import schema as s

    def half(subject_id: int) -> str:
        digest = hashlib.sha256(f"layouts:{subject_id}".encode()).digest()
        return s.Split.HELD_OUT.value if digest[0] % 2 else s.Split.TUNING.value

    kept = splits.filter(pl.col(s.SPLIT) != s.Split.HELD_OUT.value)
    return kept.with_columns(
        pl.when(pl.col(s.SPLIT) == s.Split.TUNING.value)
        .then(pl.col(s.SUBJECT_ID).map_elements(half, return_dtype=pl.String))
        .otherwise(pl.col(s.SPLIT))
        .alias(s.SPLIT)
    )


def open_cohort(name: str, n: int, work: Path) -> MedsDataset:

    if name == "eunomia":
        from ehrembed.ehr.omop import ingest_omop

        ingest_omop(out=work / "meds")
    else:
        from cohort_carebundle import generate

        from ehrembed.ehr.fhir import ingest_fhir

        generate(n, 42, work / "fhir")
        ingest_fhir([work / "fhir"], work / "meds")
    return MedsDataset.open(work / "meds")


def main() -> None:
    from ehrembed.ehr.serialize import SerializerConfig
    from ehrembed.encoders import load_encoder
    from ehrembed.encoders.embeddings import EmbeddingSet
    from ehrembed.encoders.job import EmbedConfig, embed_dataset
    from ehrembed.pipeline import MAIN_JOB_TASKS
    from ehrembed.predict.benchmark import BenchmarkConfig, run_benchmark
    from ehrembed.predict.compare import macro_auroc_ci
    from ehrembed.predict.fewshot import parse_ks
    from ehrembed.predict.job import (
        case_cohort_keys,
        label_keys,
        label_tasks,
        restrict,
        task_features,
        times_by_subject,
    )
    from ehrembed.predict.tasks import resolve_tasks

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", choices=("eunomia", "carebundle"), default="eunomia")
    parser.add_argument("--n", type=int, default=3000, help="carebundle patients")
    parser.add_argument("--formats", default="markdown,list")
    parser.add_argument("--shift-dates", action="store_true", help="also run Markdown with dates shifted")
    parser.add_argument("--encoder", default="student")
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--k", default="1,4,16,all")
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ehrembed-layouts-"))
    dataset = open_cohort(args.cohort, args.n, work)
    if args.cohort == "eunomia":
        tasks = resolve_tasks(list(MAIN_JOB_TASKS))
    else:
        tasks = resolve_tasks(sorted((Path(__file__).resolve().parent / "tasks" / "carebundle").glob("*.yaml")))
    labelsets, _skipped = label_tasks(dataset, tasks)
    keys = case_cohort_keys(labelsets, positives=60, background=160, seed=0)
    labelsets = [restrict(ls, keys) for ls in labelsets]
    keys = label_keys(labelsets)
    splits = tuning_only_splits(dataset.splits())
    encoder = load_encoder(args.encoder, max_tokens=args.max_tokens)
    variants = {f: SerializerConfig(format=f) for f in args.formats.split(",")}
    if args.shift_dates:
        variants["markdown+shift"] = SerializerConfig(format="markdown", shift_dates=True)
    features, seconds, truncated = {}, {}, {}
    for name, layout in variants.items():
        started = time.perf_counter()
        out = work / "embeddings" / name
        report = embed_dataset(dataset, encoder, out, EmbedConfig(serializer=layout), as_of=times_by_subject(keys))
        seconds[name] = round(time.perf_counter() - started, 1)
        truncated[name] = report.truncated_records
        features[name] = task_features(name, EmbeddingSet.load(out))
    config = BenchmarkConfig(
        ks=parse_ks(args.k.split(",")),
        replicates=args.replicates,
        heads=("logistic", "lightgbm"),
        n_bootstrap=args.bootstrap,
    )
    result = run_benchmark(labelsets, features, splits, config)
    ci = macro_auroc_ci(result.predictions, n_bootstrap=args.bootstrap)
    figures = {
        "cohort": args.cohort,
        "scored_on": "half of the tuning split (held-out patients left out)",
        "encoder": args.encoder,
        "max_tokens": args.max_tokens,
        "rows": keys.height,
        "tasks": result.tasks,
        "embed_seconds": seconds,
        "truncated_records": truncated,
        "macro_auroc": ci.sort("head", "encoder", "k").to_dicts(),
    }
    save(f"layouts-{args.cohort}", figures, args.json)
    with pl.Config(tbl_rows=100, tbl_cols=20):
        print(ci.with_columns(pl.col("auroc").round(3)).pivot(on="k", index=["head", "encoder"], values="auroc"))


if __name__ == "__main__":
    main()
