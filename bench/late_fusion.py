"""Late fusion check: the count head's and an embedding head's held-out ranks averaged, per benchmark cell.

Reads the per-cell predictions ``ehrembed benchmark --predictions DIR`` writes
(``DIR/TASK/ENCODER/HEAD/k{K}_r{R}.parquet``, meds-evaluation's columns) and, for every cell of
``count`` and of each ``--with`` encoder on the same task, head, k and replicate, scores the mean of
their normalised ranks (``count|NAME``: no weight to tune). Prints the macro AUROC by head, encoder and k
(mean over replicates, then over the tasks ``count`` has at that k) beside the encoders as they are.

    python bench/late_fusion.py DIR [--with student,distilled]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl
from scipy.stats import rankdata

from ehrembed.predict.metrics import auroc

PROBABILITY = "predicted_boolean_probability"
KEYS = ["subject_id", "prediction_time"]


def cell_scores(root: Path, others: list[str]) -> pl.DataFrame:
    """One row per (task, encoder, head, k, replicate) with its held-out AUROC, late fusions included."""
    cells = {}
    for path in root.glob("*/*/*/*.parquet"):
        task, encoder, head = path.parts[-4:-1]
        k, replicate = path.stem.split("_")
        cells[(task, encoder, head, k[1:], replicate[1:])] = pl.read_parquet(path)
    if not cells:
        raise FileNotFoundError(f"no predictions under {root} (TASK/ENCODER/HEAD/k{{K}}_r{{R}}.parquet)")
    rows = []
    for (task, encoder, head, k, replicate), frame in cells.items():
        labels = frame["boolean_value"].to_numpy()
        rows.append((task, encoder, head, k, replicate, auroc(labels, frame[PROBABILITY].to_numpy())))
        if encoder != "count":
            continue
        for other in others:
            partner = cells.get((task, other, head, k, replicate))
            if partner is None:
                continue
            joined = frame.join(partner.select(*KEYS, pl.col(PROBABILITY).alias("other")), on=KEYS)
            ranks = rankdata(joined[PROBABILITY].to_numpy()) + rankdata(joined["other"].to_numpy())
            rows.append((task, f"count|{other}", head, k, replicate, auroc(joined["boolean_value"].to_numpy(), ranks)))
    schema = ["task", "encoder", "head", "k", "replicate", "auroc"]
    return pl.DataFrame(rows, schema=schema, orient="row").drop_nulls("auroc")


def macro_table(scores: pl.DataFrame) -> pl.DataFrame:
    """Macro AUROC per (head, encoder, k) over the tasks ``count`` has at that (head, k)."""
    per_task = scores.group_by("task", "encoder", "head", "k").agg(pl.col("auroc").mean())
    tasks = per_task.filter(pl.col("encoder") == "count").select("task", "head", "k")
    return (
        per_task.join(tasks, on=["task", "head", "k"])
        .group_by("head", "encoder", "k")
        .agg(pl.col("auroc").mean().round(3), pl.len().alias("tasks"))
        .sort("head", "encoder", "k")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", type=Path, help="the folder given to `ehrembed benchmark --predictions`")
    parser.add_argument("--with", dest="others", default="student", help="embedding encoders to fuse with count")
    args = parser.parse_args()
    try:
        scores = cell_scores(args.predictions, args.others.split(","))
    except FileNotFoundError as exc:
        parser.error(str(exc))
    table = macro_table(scores)
    ks = sorted(table["k"].unique().to_list(), key=lambda k: (k == "all", int(k) if k != "all" else 0))
    wide = table.pivot(on="k", index=["head", "encoder"], values="auroc").select("head", "encoder", *ks)
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_hide_dataframe_shape=True):
        print(wide)


if __name__ == "__main__":
    main()
