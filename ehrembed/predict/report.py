"""The benchmark report: tidy results as Parquet and CSV, a Markdown summary and AUROC-vs-k plots.

``write_report(result, out)`` writes, atomically each:

- ``results.parquet`` / ``results.csv``: one row per scored cell (task, group, encoder, head, k,
  replicate, auroc, auprc, brier with 95% CIs, sizes, chosen parameters);
- ``missing.csv``: the cells that could not run and why;
- ``macro_auroc_ci.csv``: macro AUROC per (head, encoder, k) with a 95% patient-bootstrap CI;
- ``wins_ties_losses.csv``: per (head, encoder, k), tasks won / tied / lost against ``count``
  (paired patient-level bootstrap, :mod:`ehrembed.predict.compare`);
- ``neighbours.csv``: per (task, dense encoder), the positive rate among held-out positives' 10
  nearest train neighbours over the base rate (similar-patient search's outcome lift);
- ``report.md``: label counts per task and split, macro AUROC per head (encoders × k; the mean over
  replicates, then over the tasks every encoder has a result for) with CIs, wins / ties / losses
  against count, the neighbour lift, per-task AUROC with CIs at the largest k, anything else the
  caller adds (e.g. encoding speed), and the reasons for missing cells;
- ``auroc_vs_k_{group}.png``: per task group, one panel per head, one line per encoder with its CI
  band; an encoder keeps its colour in every panel and figure.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from ehrembed.fsutil import atomic_write_bytes, atomic_write_text
from ehrembed.predict.benchmark import BenchmarkResult
from ehrembed.predict.compare import macro_auroc_ci, wins_ties_losses
from ehrembed.predict.fewshot import ALL

REPORT_FILE = "report.md"


def k_order(k: str) -> float:
    """Sort key of a k label: numeric, with "all" last."""
    return float("inf") if k == ALL else float(k)


def _ks(frame: pl.DataFrame) -> list[str]:
    return sorted(frame.get_column("k").unique().to_list(), key=k_order)


def macro_auroc(results: pl.DataFrame, head: str | None = None) -> pl.DataFrame:
    """Macro AUROC per (head, encoder, k): the mean over replicates per task, then over the tasks that
    every encoder has a result for at that (head, k), so encoders are compared on the same tasks."""
    frame = results if head is None else results.filter(pl.col("head") == head)
    if frame.is_empty():
        return pl.DataFrame(
            schema={"head": pl.String, "encoder": pl.String, "k": pl.String, "auroc": pl.Float64, "tasks": pl.Int64}
        )
    per_task = frame.group_by("head", "encoder", "k", "task").agg(pl.col("auroc").mean())
    n_encoders = per_task.group_by("head", "k").agg(pl.col("encoder").n_unique().alias("__n"))
    common = (
        per_task.group_by("head", "k", "task")
        .agg(pl.col("encoder").n_unique().alias("__have"))
        .join(n_encoders, on=["head", "k"])
        .filter(pl.col("__have") == pl.col("__n"))
        .select("head", "k", "task")
    )
    return (
        per_task.join(common, on=["head", "k", "task"])
        .group_by("head", "encoder", "k")
        .agg(pl.col("auroc").mean(), pl.col("task").n_unique().alias("tasks"))
        .sort("head", "encoder")
    )


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_tables(results: pl.DataFrame, encoders: Sequence[str] | None = None) -> dict[str, str]:
    """head → Markdown table of macro AUROC (rows: encoders, columns: k)."""
    out: dict[str, str] = {}
    if results.is_empty():
        return out
    for head in sorted(results.get_column("head").unique().to_list()):
        macro = macro_auroc(results, head)
        if macro.is_empty():
            continue
        ks = _ks(macro)
        order = [e for e in (encoders or []) if e in set(macro.get_column("encoder").to_list())]
        order += sorted(set(macro.get_column("encoder").to_list()) - set(order))
        lookup = {(r["encoder"], r["k"]): (r["auroc"], r["tasks"]) for r in macro.iter_rows(named=True)}
        rows = [[enc, *(lookup.get((enc, k), (None, 0))[0] for k in ks)] for enc in order]
        tasks_row = ["(tasks)", *(max((lookup.get((e, k), (None, 0))[1] for e in order), default=0) for k in ks)]
        out[head] = _markdown_table(["encoder", *[f"k={k}" for k in ks]], [*rows, tasks_row])
    return out


def _per_task_table(results: pl.DataFrame) -> str:
    if results.is_empty():
        return ""
    ks = _ks(results)
    top = ks[-1]
    frame = (
        results.filter(pl.col("k") == top)
        .group_by("task", "encoder", "head")
        .agg(
            pl.col("auroc").mean(),
            pl.col("auroc_lo").mean(),
            pl.col("auroc_hi").mean(),
            pl.col("n_held_out_positive").first(),
        )
        .sort("task", "head", "encoder")
    )
    rows = [
        [
            r["task"],
            r["head"],
            r["encoder"],
            r["auroc"],
            "–" if r["auroc_lo"] is None else f"{r['auroc_lo']:.3f}–{r['auroc_hi']:.3f}",
            r["n_held_out_positive"],
        ]
        for r in frame.iter_rows(named=True)
    ]
    return f"AUROC at k={top} (95% patient-bootstrap CI):\n\n" + _markdown_table(
        ["task", "head", "encoder", "AUROC", "95% CI", "held-out positives"], rows
    )


def _colours(encoders: Sequence[str]) -> dict[str, Any]:
    """One colour per encoder for every panel and figure (a panel without some encoder shifts nothing)."""
    import matplotlib

    palette = matplotlib.colormaps["tab10" if len(encoders) <= 10 else "tab20"]
    return {enc: palette(i % palette.N) for i, enc in enumerate(encoders)}


def _plot(results: pl.DataFrame, group: str, encoders: Sequence[str], bands: pl.DataFrame | None = None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = _colours(encoders)
    frame = results.filter(pl.col("group") == group)
    heads = sorted(frame.get_column("head").unique().to_list())
    fig, axes = plt.subplots(1, len(heads), figsize=(5 * len(heads), 4), squeeze=False, sharey=True)
    for ax, head in zip(axes[0], heads, strict=True):
        macro = macro_auroc(frame, head)
        ks = _ks(macro)
        for enc in [e for e in encoders if e in set(macro.get_column("encoder").to_list())]:
            line = macro.filter(pl.col("encoder") == enc)
            points = {r["k"]: r["auroc"] for r in line.iter_rows(named=True)}
            xs = [i for i, k in enumerate(ks) if k in points]
            ax.plot(xs, [points[ks[i]] for i in xs], marker="o", label=enc, color=colours[enc])
            if bands is not None and not bands.is_empty():
                band = bands.filter((pl.col("head") == head) & (pl.col("encoder") == enc))
                ci = {r["k"]: (r["auroc_lo"], r["auroc_hi"]) for r in band.iter_rows(named=True)}
                shown = [i for i in xs if ci.get(ks[i], (None, None))[0] is not None]
                if shown:
                    ax.fill_between(
                        shown,
                        [ci[ks[i]][0] for i in shown],
                        [ci[ks[i]][1] for i in shown],
                        color=colours[enc],
                        alpha=0.12,
                        linewidth=0,
                    )
        ax.set_xticks(range(len(ks)), ks)
        ax.set_title(f"{group} — {head}")
        ax.set_xlabel("k (positives = negatives per class)")
        ax.axhline(0.5, color="grey", linewidth=0.5, linestyle="--")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("macro AUROC (held-out)")
    axes[0][-1].legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _pivot_tables(
    frame: pl.DataFrame, encoders: Sequence[str], cell: Callable[[dict[str, Any]], str]
) -> dict[str, str]:
    """head → Markdown table with one ``cell(row)`` per (encoder, k) (rows: encoders in report order, columns: k)."""
    out: dict[str, str] = {}
    for head in sorted(frame.get_column("head").unique().to_list()):
        part = frame.filter(pl.col("head") == head)
        ks = _ks(part)
        have = set(part.get_column("encoder").to_list())
        order = [e for e in encoders if e in have] + sorted(have - set(encoders))
        cells = {(r["encoder"], r["k"]): cell(r) for r in part.iter_rows(named=True)}
        rows = [[enc, *(cells.get((enc, k), "–") for k in ks)] for enc in order]
        out[head] = _markdown_table(["encoder", *[f"k={k}" for k in ks]], rows)
    return out


def _with_ci(row: dict[str, Any]) -> str:
    if row["auroc"] is None:
        return "–"
    ci = "" if row["auroc_lo"] is None else f" ({row['auroc_lo']:.3f}–{row['auroc_hi']:.3f})"
    return f"{row['auroc']:.3f}{ci}"


def _wins_ties_losses(row: dict[str, Any]) -> str:
    return f"{row['wins']}/{row['ties']}/{row['losses']}"


def _neighbour_table(neighbours: pl.DataFrame, encoders: Sequence[str]) -> str:
    summary = (
        neighbours.group_by("encoder")
        .agg(
            pl.col("lift").mean().alias("lift"),
            pl.col("neighbour_positive_rate").mean().alias("rate"),
            pl.col("base_rate").mean().alias("base"),
            pl.col("task").n_unique().alias("tasks"),
        )
        .sort("encoder")
    )
    rank = {e: i for i, e in enumerate(encoders)}
    ordered = sorted(summary.iter_rows(named=True), key=lambda r: rank.get(r["encoder"], len(rank)))
    rows = [[r["encoder"], r["rate"], r["base"], r["lift"], r["tasks"]] for r in ordered]
    return (
        "Held-out positives' 10 nearest train-split neighbours (cosine): how many share the outcome, against the "
        "train base rate (mean over tasks; per task in `neighbours.csv`).\n\n"
        + _markdown_table(["encoder", "positives among neighbours", "base rate", "lift", "tasks"], rows)
    )


def _missing_summary(missing: pl.DataFrame) -> str:
    if missing.is_empty():
        return "Every cell ran."
    grouped = (
        missing.group_by("task", "encoder", "reason")
        .agg(pl.len().alias("cells"), pl.col("head").unique().sort().str.join(", ").alias("heads"))
        .sort("task", "encoder")
    )
    rows = [[r["task"], r["encoder"], r["heads"], r["cells"], r["reason"]] for r in grouped.iter_rows(named=True)]
    return _markdown_table(["task", "encoder", "heads", "cells", "reason"], rows)


def write_report(
    result: BenchmarkResult,
    out: Path | str,
    *,
    title: str = "Few-shot benchmark",
    encoders: Sequence[str] | None = None,
    extra_sections: Mapping[str, str] | None = None,
) -> Path:
    """Write every report file into ``out`` and return the path of ``report.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = result.results.sort("task", "encoder", "head", "k", "replicate")
    buffer = io.BytesIO()
    results.write_parquet(buffer)
    atomic_write_bytes(out / "results.parquet", buffer.getvalue())
    atomic_write_text(out / "results.csv", results.write_csv())
    atomic_write_text(out / "missing.csv", result.missing.write_csv())
    atomic_write_text(out / "tasks.json", json.dumps(result.tasks, indent=2, default=str) + "\n")
    encoder_order = list(encoders or sorted(results.get_column("encoder").unique().to_list()))
    ci = macro_auroc_ci(result.predictions, n_bootstrap=result.n_bootstrap) if result.n_bootstrap else None
    wtl = wins_ties_losses(result.predictions, n_bootstrap=result.n_bootstrap) if result.n_bootstrap else None
    for name, frame in (("macro_auroc_ci", ci), ("wins_ties_losses", wtl), ("neighbours", result.neighbours)):
        if frame is not None:
            atomic_write_text(out / f"{name}.csv", frame.write_csv())

    parts = [f"# {title}", ""]
    task_rows = [
        [
            t["task"],
            t["group"],
            f"{t['train_labels']} / {t['train_positives']}",
            f"{t['tuning_labels']} / {t['tuning_positives']}",
            f"{t['held_out_labels']} / {t['held_out_positives']}",
        ]
        for t in result.tasks
    ]
    parts += [
        "## Tasks (labels / positives per split)",
        "",
        _markdown_table(["task", "group", "train", "tuning", "held_out"], task_rows),
        "",
    ]
    tables = summary_tables(results, encoder_order)
    if tables:
        parts += ["## Macro AUROC by encoder and k", ""]
        for head, table in tables.items():
            parts += [f"### {head}", "", table, ""]
    if ci is not None and not ci.is_empty():
        parts += ["## Macro AUROC with 95% CI (patient bootstrap)", ""]
        for head, table in _pivot_tables(ci, encoder_order, _with_ci).items():
            parts += [f"### {head}", "", table, ""]
    if wtl is not None and not wtl.is_empty():
        parts += [
            "## Wins / ties / losses against count",
            "",
            "Tasks where the encoder's AUROC is significantly above / not distinguishable from / below the count "
            "baseline's with the same head (paired patient-level bootstrap of the difference, 95%).",
            "",
        ]
        for head, table in _pivot_tables(wtl, encoder_order, _wins_ties_losses).items():
            parts += [f"### {head}", "", table, ""]
    if not result.neighbours.is_empty():
        parts += [
            "## Similar-patient search: neighbour outcome lift",
            "",
            _neighbour_table(result.neighbours, encoder_order),
            "",
        ]
    for heading, body in (extra_sections or {}).items():
        parts += [f"## {heading}", "", body, ""]
    per_task = _per_task_table(results)
    if per_task:
        parts += ["## Per task", "", per_task, ""]
    figures = []
    if not results.is_empty():
        for group in sorted(results.get_column("group").unique().to_list()):
            name = f"auroc_vs_k_{group}.png"
            atomic_write_bytes(out / name, _plot(results, group, encoder_order, ci))
            figures.append(f"![{group}]({name})")
    if figures:
        parts += ["## AUROC vs k", "", *figures, ""]
    parts += ["## Missing cells", "", _missing_summary(result.missing), ""]
    parts += [f"Benchmark wall time: {result.seconds:.1f} s. Tidy results: `results.parquet`, `results.csv`.", ""]
    path = out / REPORT_FILE
    atomic_write_text(path, "\n".join(parts))
    return path
