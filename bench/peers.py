"""Peers side by side: our count features + LightGBM, an embedding, count + embedding, and meds-tab's XGBoost,
on the same data, labels and splits, with the wall time of each.

Labels are the main job's: its tasks (Eunomia's four new-diagnosis tasks) and its case-cohort sample (60
positives a task, 160 background patients, one time each), written as MEDS label files. Every method trains
on the train split, tunes on the tuning split and is scored on the held-out split (AUROC). Our cells use
k = all, one replicate; the columns are fixed (no choice made on the held-out split): count + LightGBM,
EMBEDDING + logistic, count+EMBEDDING + LightGBM.

meds-tab runs in its own virtual environment, because it pins an old meds-evaluation: ``--medstab-venv DIR``
(default ``bench/.venv-medstab``) is created with ``python3.11 -m venv`` and ``pip install meds-tab==0.2.0``
when it has no ``meds-tab-describe``. It reads the dataset in the split layout (``ehrembed export meds
--layout split``) and the label files; its XGBoost is tuned with ``--trials`` Optuna trials on the tuning
split (its own launcher), and its held-out predictions are scored here like ours.

Run ``.venv/bin/python bench/peers.py [--dataset MEDS] [--embedding student] [--trials 10]``; figures go to
bench/results/peers.json and the table is printed.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save

HERE = Path(__file__).resolve().parent
MEDSTAB = "meds-tab==0.2.0"
WINDOWS = "[1d,30d,365d,full]"
CODE_AGGS = "static/present,code/count"
VALUE_AGGS = "value/count,value/sum,value/sum_sqd,value/min,value/max"
"""Used when the dataset has numeric values (meds-tab refuses value aggregations without any: Eunomia)."""


def medstab_venv(folder: Path) -> Path:
    """The venv's bin folder, created (and meds-tab installed) when it has no meds-tab yet."""
    bin_dir = folder / "bin"
    if not (bin_dir / "meds-tab-describe").exists():
        print(f"creating {folder} with {MEDSTAB} (its own environment: meds-tab pins an old meds-evaluation)")
        try:
            subprocess.run(["python3.11", "-m", "venv", str(folder)], check=True)
            subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", MEDSTAB], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            sys.exit(
                f"could not create the meds-tab environment in {folder} ({exc}); make it by hand with "
                f"`python3.11 -m venv {folder} && {folder}/bin/pip install {MEDSTAB}` and pass --medstab-venv"
            )
    return bin_dir


def run(bin_dir: Path, command: str, *args: str) -> float:
    """One meds-tab command (Hydra overrides as args); its wall time in seconds."""
    started = time.perf_counter()
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "POLARS_MAX_THREADS": str(os.cpu_count() or 1)}
    done = subprocess.run([str(bin_dir / command), *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{command} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


SWEEPS: dict[str, tuple[str, ...]] = {
    "its sweep": (),
    "small-data sweep": ("+model_launcher.model.min_child_weight=interval(0.01,2)",
                         "+model_launcher.model.eta=tag(log,interval(0.01,0.5))"),
}  # fmt: skip
"""meds-tab's own XGBoost search space, and the same with ``min_child_weight`` <= 2 and ``eta`` >= 0.01: on a
few hundred training rows its default space (``min_child_weight`` up to 100, ``eta`` down to 0.001) can leave
every trial without a split, i.e. constant predictions (AUROC 0.5)."""


def medstab(
    bin_dir: Path, data: Path, labels: Path, work: Path, tasks: list[str], trials: int, aggs: str
) -> dict[str, dict[str, dict]]:
    """meds-tab describe → tabularize → per task: cache → an XGBoost sweep per :data:`SWEEPS` entry;
    held-out predictions and seconds per sweep and task."""
    common = [f"input_dir={data / 'data'}", f"output_dir={work}"]  # a fresh folder: nothing to overwrite
    tab = [f"tabularization.window_sizes={WINDOWS}", f"tabularization.aggs=[{aggs}]",
           "tabularization.min_code_inclusion_count=1"]  # fmt: skip
    seconds = run(bin_dir, "meds-tab-describe", *common)
    seconds += run(bin_dir, "meds-tab-tabularize-static", *common, *tab)
    seconds += run(bin_dir, "meds-tab-tabularize-time-series", *common, *tab)
    shared = seconds / len(tasks)  # the tabularization serves every task: each carries its share
    out: dict[str, dict[str, dict]] = {sweep: {} for sweep in SWEEPS}
    for task in tasks:
        cache = run(
            bin_dir, "meds-tab-cache-task", *common, *tab, f"task_name={task}", f"input_label_dir={labels / task}"
        )
        for sweep, overrides in SWEEPS.items():
            models = work / "models" / sweep.replace(" ", "_") / task
            t = run(
                bin_dir, "meds-tab-model", "--multirun", *common, *tab, f"task_name={task}",
                f"output_model_dir={models}", "model_launcher=xgboost", f"hydra.sweeper.n_trials={trials}",
                "hydra.sweeper.n_jobs=1", "hydra.sweeper.sampler.seed=0", "hydra/launcher=basic",
                "prediction_splits=[held_out]", *overrides,
            )  # fmt: skip
            found = sorted(models.rglob("held_out_predictions.parquet"))
            if not found:
                sys.exit(f"meds-tab wrote no held-out predictions under {models}")
            out[sweep][task] = {"predictions": pl.read_parquet(found[-1]), "seconds": round(shared + cache + t, 1)}
    return out


def auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None


def main() -> None:
    from ehrembed.ehr.meds import MedsDataset, export_meds
    from ehrembed.ehr.omop import ingest_omop
    from ehrembed.pipeline import MAIN_JOB_TASKS
    from ehrembed.predict.benchmark import BenchmarkConfig
    from ehrembed.predict.job import (
        BenchmarkJobConfig,
        benchmark_dataset,
        case_cohort_keys,
        label_tasks,
        restrict,
    )
    from ehrembed.predict.meds_labels import write_labels
    from ehrembed.predict.tasks import resolve_tasks

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=None, help="a MEDS folder (default: Eunomia, ingested)")
    parser.add_argument("--tasks", default=",".join(MAIN_JOB_TASKS), help="comma-separated; globs are expanded")
    parser.add_argument("--embedding", default="student", help="NAME or NAME=SPEC of the embedding encoder")
    parser.add_argument("--trials", type=int, default=10, help="meds-tab XGBoost Optuna trials")
    parser.add_argument("--medstab-venv", type=Path, default=HERE / ".venv-medstab")
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ehrembed-peers-"))
    if args.dataset is None:
        ingest_omop(out=work / "meds")
    dataset = MedsDataset.open(args.dataset or work / "meds")
    refs = [found for ref in args.tasks.split(",") for found in (sorted(glob.glob(ref)) or [ref])]
    labelsets, skipped = label_tasks(dataset, resolve_tasks(refs))
    keys = case_cohort_keys(labelsets, positives=60, background=160, seed=0)
    labelsets = [restrict(ls, keys) for ls in labelsets]
    tasks = [ls.task.name for ls in labelsets]
    write_labels(((ls.task.name, ls.frame()) for ls in labelsets), work / "labels")
    embedding = args.embedding.split("=", 1)[0]

    started = time.perf_counter()
    encoders = ("count", args.embedding, f"count+{embedding}")
    config = BenchmarkJobConfig(
        encoders=encoders,
        benchmark=BenchmarkConfig(ks=("all",), replicates=1, heads=("lightgbm", "logistic"), n_bootstrap=0),
        max_tokens=args.max_tokens,
    )
    specs = [ls.task for ls in labelsets]
    ours = benchmark_dataset(dataset, specs, work / "report", config, labelled=(labelsets, skipped))
    ours_seconds = time.perf_counter() - started
    cells = ours.result.results
    timings = ours.timings

    export_meds(dataset, work / "split", layout="split")
    bin_dir = medstab_venv(args.medstab_venv)
    has_values = bool(dataset.scan().select(pl.col("numeric_value").is_not_null().any()).collect().item())
    aggs = f"{CODE_AGGS},{VALUE_AGGS}" if has_values else CODE_AGGS
    peer = medstab(bin_dir, work / "split", work / "labels", work / "medstab", tasks, args.trials, aggs)

    def ours_auroc(task: str, encoder: str, head: str) -> float | None:
        row = cells.filter((pl.col("task") == task) & (pl.col("encoder") == encoder) & (pl.col("head") == head))
        return None if row.is_empty() else float(row.get_column("auroc")[0])

    held_out = {
        ls.task.name: ls.frame().join(dataset.splits(), on="subject_id").filter(pl.col("split") == "held_out").height
        for ls in labelsets
    }
    rows = []
    for task in tasks:
        row: dict[str, object] = {
            "task": task,
            "held-out rows": held_out[task],
            "count + LightGBM": ours_auroc(task, "count", "lightgbm"),
            f"{embedding} + logistic": ours_auroc(task, embedding, "logistic"),
            f"count+{embedding} + LightGBM": ours_auroc(task, f"count+{embedding}", "lightgbm"),
        }
        for sweep, per_task in peer.items():
            predictions = per_task[task]["predictions"]
            y = predictions.get_column("boolean_value").to_numpy().astype(int)
            row[f"meds-tab XGBoost, {sweep}"] = auroc(
                y, predictions.get_column("predicted_boolean_probability").to_numpy()
            )
            row[f"meds-tab held-out rows, {sweep}"] = predictions.height
        rows.append(row)
    table = pl.DataFrame(rows)
    means = {c: table.get_column(c).mean() for c in table.columns if c != "task" and "rows" not in c}
    seconds = {
        "count features": round(timings.get("features:count", 0.0), 1),
        f"{embedding} embedding": round(timings.get(f"features:{embedding}", 0.0), 1),
        "our benchmark cells (all encoders, both heads)": round(timings.get("benchmark", 0.0), 1),
        "ours in total": round(ours_seconds, 1),
        **{f"meds-tab, {sweep}": round(sum(p["seconds"] for p in per.values()), 1) for sweep, per in peer.items()},
    }
    save(
        "peers",
        {
            "dataset": str(dataset.root),
            "tasks": tasks,
            "labels": {ls.task.name: ls.summary() for ls in labelsets},
            "meds_tab": {"version": MEDSTAB, "trials": args.trials, "windows": WINDOWS, "aggs": aggs},
            "auroc": table.to_dicts(),
            "mean": means,
            "seconds": seconds,
        },
        args.json,
    )
    with pl.Config(tbl_rows=50, tbl_cols=20, fmt_float="mixed"):
        print(table.with_columns(pl.selectors.float().round(3)))
    print("mean:", {k: None if v is None else round(float(v), 3) for k, v in means.items()})  # type: ignore[arg-type]
    print("seconds:", seconds)


if __name__ == "__main__":
    main()
