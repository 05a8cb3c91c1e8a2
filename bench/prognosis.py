"""Prognostic pretraining, measured: pretrain on a cohort's train split, then benchmark the vectors.

For one MEDS dataset and a set of tasks: pretrain each method asked (``tte``, ``horizons``, ``rrr``,
``svd``, ``untrained``; ``tte-excl``: ``tte`` with every evaluated task's outcome codes removed from the
targets), then run the few-shot benchmark with ``count``, each model, and ``count+MODEL``; print and
save macro AUROC with patient-bootstrap CIs per (encoder, head, k), the difference to ``count``, and
the similar-patient neighbour lift. Pretraining sees the train split only and no task (except to
remove codes for ``tte-excl``).

Powered by default: every positive patient of every task (one time each) plus one labelled time of up to
``--sample-background`` patients (default 2,000) — the case-cohort rule of the main job, at a far larger
size, because count and prognosis features cost milliseconds per row.

Run ``.venv/bin/python bench/prognosis.py DATASET --tasks FILES... [--methods tte,rrr,svd,untrained,tte-excl]
[--models DIR] [--name NAME]``; figures to ``bench/results/prognosis_{NAME}.json``;
``bench/prognosis.py --table bench/results/prognosis_NAME.json`` prints them as the Markdown tables of
``docs/prognosis.md``.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb, save


def markdown(figures: dict, heads: tuple[str, ...] = ("logistic", "lightgbm")) -> str:
    """The saved figures as Markdown tables: macro AUROC per encoder and k (95% CI at k=all), per head; the
    pretraining figures; the neighbour lift (what ``docs/prognosis.md`` shows)."""
    table = pl.DataFrame(figures["macro_auroc"])
    ks = sorted(set(table.get_column("k")), key=lambda k: float("inf") if k == "all" else float(k))
    lines = []
    zero = {r["encoder"]: r for r in figures["macro_auroc"] if r["head"] == "zero-shot"}
    for head in heads:
        part = table.filter(pl.col("head") == head)
        if part.is_empty():
            continue
        shown = [k for k in ks if k != "0"]
        lines += [f"| {head} | " + " | ".join(f"k={k}" for k in ["0", *shown]) + " |", "|---" * (len(shown) + 2) + "|"]
        for encoder in dict.fromkeys(part.get_column("encoder").to_list()):
            rows = {r["k"]: r for r in part.filter(pl.col("encoder") == encoder).to_dicts()}
            cells = [f"{zero[encoder]['auroc']:.3f}" if encoder in zero else "–"]
            for k in shown:
                r = rows.get(k)
                if r is None or r["auroc"] is None:
                    cells.append("–")
                elif k == "all":
                    cells.append(f"{r['auroc']:.3f} ({r['auroc_lo']:.2f}–{r['auroc_hi']:.2f})")
                else:
                    cells.append(f"{r['auroc']:.3f}")
            lines.append(f"| {encoder} | " + " | ".join(cells) + " |")
        lines.append("")
    lift = pl.DataFrame(figures["neighbours"]).group_by("encoder").agg(pl.col("lift").mean()).sort("encoder")
    lines += [
        "| encoder | mean neighbour outcome lift (10 nearest train neighbours of held-out positives) |",
        "|---|---|",
    ]
    lines += [f"| {e} | {v:.2f} |" for e, v in lift.iter_rows()]
    lines += [
        "",
        "| pretrained | seconds | targets excluded | validation AUROC of 365-day risks |",
        "|---|---|---|---|",
    ]
    for method, f in figures["pretrain"].items():
        auroc = f.get("validation_auroc_365d")
        lines.append(
            f"| {method} | {f['seconds']} | {f['excluded_codes']} | {'–' if auroc is None else f'{auroc:.3f}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--table":  # print a saved run's tables
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
        return
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.predict.benchmark import BenchmarkConfig
    from ehrembed.predict.compare import macro_auroc_ci, wins_ties_losses
    from ehrembed.predict.fewshot import parse_ks
    from ehrembed.predict.job import BenchmarkJobConfig, benchmark_dataset
    from ehrembed.predict.ontology import Ontology
    from ehrembed.predict.prognosis.train import PretrainConfig, exclusion_codes_for, pretrain
    from ehrembed.predict.tasks import resolve_tasks

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--tasks", nargs="+", required=True, help="task files, globs or built-in names")
    parser.add_argument("--methods", default="tte,rrr,svd,untrained,tte-excl")
    parser.add_argument("--models", type=Path, default=None, help="where models go (default DATASET/../prognosis)")
    parser.add_argument("--reuse", action="store_true", help="reuse model folders already there")
    parser.add_argument("--name", default=None, help="results name (default: the dataset folder's name)")
    parser.add_argument("--heads", default="logistic,lightgbm")
    parser.add_argument("--k", default="1,2,4,8,16,32,64,all")
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--sample-positives", type=int, default=None)
    parser.add_argument("--sample-background", type=int, default=2000)
    parser.add_argument("--fusions", default="", help="methods also fused as count+NAME (default: every method)")
    parser.add_argument("--set", action="append", default=[], help="PretrainConfig field=value (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    args = parser.parse_args()

    dataset = MedsDataset.open(args.dataset)
    name = args.name or args.dataset.name
    models = args.models or args.dataset.parent / f"{args.dataset.name}-prognosis"
    paths = [p for pattern in args.tasks for p in (sorted(glob.glob(pattern)) or [pattern])]
    tasks = resolve_tasks(paths)
    ontology = Ontology.from_dataset(dataset)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        default = getattr(PretrainConfig(), key)
        overrides[key] = (
            type(default)(value) if not isinstance(default, tuple) else tuple(float(v) for v in value.split(","))
        )
    pretrain_figures = {}
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:
        folder = models / method
        if args.reuse and (folder / "prognosis.json").is_file():
            continue
        exclude = exclusion_codes_for(tasks, ontology) if method.endswith("-excl") else ()
        config = PretrainConfig(method=method.removesuffix("-excl"), exclude_codes=exclude, name=method, **overrides)
        started = time.perf_counter()
        result = pretrain(dataset, folder, config, ontology=ontology, say=print, overwrite=True)
        pretrain_figures[method] = {
            "seconds": round(time.perf_counter() - started, 1),
            "excluded_codes": len(exclude),
            **{k: v for k, v in result.figures.items() if k != "history"},
        }
        print(method, pretrain_figures[method])
    fusions = [m for m in (args.fusions.split(",") if args.fusions else methods) if m]
    encoders = ("count", *(f"{m}={models / m}" for m in methods), *(f"count+{m}" for m in fusions))
    config = BenchmarkJobConfig(
        encoders=encoders,
        benchmark=BenchmarkConfig(
            ks=parse_ks(args.k.split(",")),
            replicates=args.replicates,
            heads=tuple(args.heads.split(",")),
            n_bootstrap=args.bootstrap,
        ),
        sample_positives=args.sample_positives,
        sample_background=args.sample_background,
    )
    out = args.out or models / "report"
    result = benchmark_dataset(dataset, tasks, out, config, say=print, title=f"Prognostic pretraining on {name}")
    ci = macro_auroc_ci(result.result.predictions, n_bootstrap=args.bootstrap)
    wtl = wins_ties_losses(result.result.predictions, n_bootstrap=args.bootstrap)
    count = ci.filter(pl.col("encoder") == "count").select("head", "k", pl.col("auroc").alias("count_auroc"))
    best_count = count.group_by("k").agg(pl.col("count_auroc").max().alias("best_count_auroc"))
    table = (
        ci.join(count, on=["head", "k"], how="left")
        .join(best_count, on="k", how="left")
        .with_columns(
            (pl.col("auroc") - pl.col("count_auroc")).alias("minus_count_same_head"),
            (pl.col("auroc") - pl.col("best_count_auroc")).alias("minus_best_count"),
        )
    )
    figures = {
        "dataset": str(args.dataset),
        "tasks": result.result.tasks,
        "labels": {ls.task.name: {"rows": len(ls), "positives": ls.n_positive} for ls in result.labelsets},
        "pretrain": pretrain_figures,
        "encoders": list(encoders),
        "seconds": {k: round(v, 1) for k, v in result.timings.items()},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "macro_auroc": table.sort("head", "encoder", "k").to_dicts(),
        "wins_ties_losses": wtl.sort("head", "encoder", "k").to_dicts(),
        "neighbours": result.result.neighbours.to_dicts(),
        "report": str(result.report),
    }
    save(f"prognosis_{name}", figures)
    order = [str(k) for k in parse_ks(args.k.split(","))]
    with pl.Config(tbl_rows=100, tbl_cols=20, float_precision=3):
        print(ci.pivot(on="k", index=["head", "encoder"], values="auroc").select("head", "encoder", *order))
        print(result.result.neighbours)


if __name__ == "__main__":
    main()
