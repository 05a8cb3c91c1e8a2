"""The second cohort: a carebundle FHIR R4 cohort (a generator we did not write), ingested and benchmarked.

carebundle (an independent synthetic FHIR generator) gives each patient one outpatient visit with a
full lab panel, vitals and prescriptions, and conditions dated two years earlier; it has no inpatient
stays and no diagnosis after the first, so of EHRSHOT's groups only abnormal labs can be built. The
tasks are in ``bench/tasks/carebundle/`` (four abnormal-lab results with >= 30 held-out positives at
3,000 patients, and two new-prescription surrogates in the ``custom`` group).

Run ``.venv/bin/python bench/cohort_carebundle.py [--n 3000] [--encoders count,student,count+student]
[--encoder distilled=out/models/student] [--out DIR]``: generate, ingest (``ingest_fhir``), run the
few-shot benchmark (report in DIR, default a temporary folder) and save the macro AUROC with CIs and
the wins/ties/losses against count to bench/results/carebundle.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save

TASKS = Path(__file__).resolve().parent / "tasks" / "carebundle"


def generate(n: int, seed: int, folder: Path) -> float:
    """carebundle's cohort as bulk ndjson files in ``folder``; seconds taken."""
    import carebundle

    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    streams = carebundle.to_ndjson(carebundle.generate_cohort(count=n, seed=seed, sex="mixed", age_range=(18, 90)))
    for resource, text in streams.items():
        (folder / f"{resource}.ndjson").write_text(text)
    return time.perf_counter() - started


def main() -> None:
    from ehrembed.ehr.fhir import ingest_fhir
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.predict.benchmark import BenchmarkConfig
    from ehrembed.predict.compare import macro_auroc_ci, wins_ties_losses
    from ehrembed.predict.job import BenchmarkJobConfig, benchmark_dataset
    from ehrembed.predict.tasks import resolve_tasks

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--encoders", default="count,student,count+student")
    parser.add_argument("--encoder", action="append", default=[], help="another NAME=SPEC encoder (repeatable)")
    parser.add_argument("--k", default="1,2,4,8,16,32,64,all")
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="figures file (default bench/results/carebundle.json)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ehrembed-carebundle-"))
    out = args.out or work / "report"
    generate_seconds = generate(args.n, args.seed, work / "fhir")
    started = time.perf_counter()
    ingest_fhir([work / "fhir"], work / "meds")
    ingest_seconds = time.perf_counter() - started
    dataset = MedsDataset.open(work / "meds")
    from ehrembed.predict.fewshot import parse_ks

    encoders = tuple([*args.encoders.split(","), *args.encoder])
    config = BenchmarkJobConfig(
        encoders=encoders,
        benchmark=BenchmarkConfig(
            ks=parse_ks(args.k.split(",")), replicates=args.replicates, n_bootstrap=args.bootstrap
        ),
        max_tokens=args.max_tokens,
    )
    tasks = resolve_tasks(sorted(TASKS.glob("*.yaml")))
    result = benchmark_dataset(
        dataset, tasks, out, config, title=f"Few-shot benchmark on carebundle ({args.n} patients)"
    )
    ci = macro_auroc_ci(result.result.predictions, n_bootstrap=args.bootstrap)
    wtl = wins_ties_losses(result.result.predictions, n_bootstrap=args.bootstrap)
    figures = {
        "patients": args.n,
        "seed": args.seed,
        "encoders": list(encoders),
        "tasks": result.result.tasks,
        "seconds": {"generate": round(generate_seconds, 1), "ingest": round(ingest_seconds, 1)}
        | {k: round(v, 1) for k, v in result.timings.items()},
        "macro_auroc": ci.sort("head", "encoder", "k").to_dicts(),
        "wins_ties_losses": wtl.sort("head", "encoder", "k").to_dicts(),
        "neighbours": result.result.neighbours.to_dicts(),
        "report": str(result.report),
    }
    save("carebundle", figures, args.json)
    with pl.Config(tbl_rows=100, tbl_cols=20):
        print(ci.pivot(on="k", index=["head", "encoder"], values="auroc"))


if __name__ == "__main__":
    main()
