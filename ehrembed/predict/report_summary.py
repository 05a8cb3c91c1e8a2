"""A written benchmark report folder read back as numbers: what the console plots and the API serves.

``report_summary(folder)`` reads the files :func:`ehrembed.predict.report.write_report` wrote and
returns a JSON-ready dict (no patient-level content, only aggregates):

- ``title``: the first heading of ``report.md``;
- ``tasks``: ``tasks.json`` (label counts per task and split);
- ``macro_auroc``: rows ``{head, encoder, k, auroc, auroc_lo, auroc_hi, tasks}`` from
  ``macro_auroc_ci.csv``, or from ``results.parquet`` without a CI when the run had no bootstrap;
  ``k`` stays a string (``"all"`` is a k), rows ordered by head, encoder and numeric k;
- ``wins_ties_losses``: rows ``{head, encoder, k, wins, ties, losses}`` against ``count`` (may be empty);
- ``heads``, ``encoders``, ``ks``: the axes present, in display order.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from ehrembed.errors import InputError
from ehrembed.predict.report import REPORT_FILE, k_order, macro_auroc


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [{name: _finite(value) for name, value in row.items()} for row in frame.iter_rows(named=True)]


def _read_csv(path: Path) -> pl.DataFrame | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    return pl.read_csv(path, schema_overrides={"k": pl.String}, infer_schema_length=None)


def report_summary(folder: Path | str) -> dict[str, Any]:
    """The report in ``folder`` as numbers (see the module docstring); InputError when it is not a report."""
    folder = Path(folder)
    if not (folder / REPORT_FILE).is_file() or not (folder / "results.parquet").is_file():
        raise InputError(f"{folder.name} is not a benchmark report folder (no {REPORT_FILE} and results.parquet)")
    first = (folder / REPORT_FILE).read_text(encoding="utf-8").splitlines()[:1]
    title = first[0].lstrip("# ").strip() if first else folder.name
    tasks_file = folder / "tasks.json"
    tasks = json.loads(tasks_file.read_text(encoding="utf-8")) if tasks_file.is_file() else []
    ci = _read_csv(folder / "macro_auroc_ci.csv")
    if ci is None or ci.is_empty():
        ci = macro_auroc(pl.read_parquet(folder / "results.parquet")).with_columns(
            pl.lit(None, pl.Float64).alias("auroc_lo"), pl.lit(None, pl.Float64).alias("auroc_hi")
        )
    ci = ci.select("head", "encoder", "k", "auroc", "auroc_lo", "auroc_hi", "tasks")
    ci = ci.with_columns(pl.col("k").map_elements(k_order, return_dtype=pl.Float64).alias("__k")).sort(
        "head", "encoder", "__k"
    )
    wtl = _read_csv(folder / "wins_ties_losses.csv")
    wtl_rows = [] if wtl is None else _rows(wtl.select("head", "encoder", "k", "wins", "ties", "losses"))
    wtl_rows.sort(key=lambda r: (r["head"], r["encoder"], k_order(r["k"])))
    return {
        "title": title,
        "tasks": tasks,
        "heads": sorted(ci.get_column("head").unique().to_list()),
        "encoders": sorted(ci.get_column("encoder").unique().to_list()),
        "ks": sorted(ci.get_column("k").unique().to_list(), key=k_order),
        "macro_auroc": _rows(ci.drop("__k")),
        "wins_ties_losses": wtl_rows,
    }
