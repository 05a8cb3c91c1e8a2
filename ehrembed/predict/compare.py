"""Comparisons across encoders from the benchmark's held-out predictions.

- :func:`macro_auroc_ci`: macro AUROC per (head, encoder, k) — the mean over replicates per task,
  then over the tasks every encoder has — with a 95% CI from a patient-level bootstrap (each task's
  held-out patients resampled, the same draw for every encoder).
- :func:`wins_ties_losses`: per (head, encoder, k), on how many tasks the encoder beats, ties or
  loses to a baseline (``count``): a paired patient-level bootstrap of the AUROC difference on the
  rows both have; a win or loss needs the 95% interval to exclude 0 (the reference's Table 4).
- :func:`neighbour_lift`: similar-patient search as a task sees it — for each held-out positive,
  the share of positives among its 10 nearest train-split neighbours (cosine), over the share among
  random train rows (the base rate); a lift above 1 means neighbours share the outcome.

:class:`HeldOutPredictions` is what the benchmark collects for these: per (task, encoder) the
held-out rows (their index in the task's label frame), labels and patients, and per cell the
held-out probabilities of each replicate. It stays in memory; nothing here reads labels of other
splits except the train split's, for the neighbours.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from ehrembed.encoders.base import l2_normalize
from ehrembed.predict.metrics import auroc

_QUERY_CHUNK = 1024
"""Queries scored at once by :func:`neighbour_lift` (their similarity rows to every train row)."""

CellKey = tuple[str, str, str, str]
"""(task, encoder, head, k)."""


@dataclass(frozen=True)
class HeldOut:
    """One (task, encoder)'s held-out rows: label-frame index, label and patient of each."""

    rows: np.ndarray
    y: np.ndarray
    groups: np.ndarray


@dataclass
class HeldOutPredictions:
    """Held-out rows per (task, encoder) and probabilities per cell (one array per replicate)."""

    held_out: dict[tuple[str, str], HeldOut] = field(default_factory=dict)
    probabilities: dict[CellKey, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))

    def add(self, task: str, encoder: str, head: str, k: str, p: np.ndarray) -> None:
        self.probabilities[(task, encoder, head, k)].append(np.asarray(p, dtype=np.float64))


_CI_SCHEMA = {
    "head": pl.String,
    "encoder": pl.String,
    "k": pl.String,
    "auroc": pl.Float64,
    "auroc_lo": pl.Float64,
    "auroc_hi": pl.Float64,
    "tasks": pl.Int64,
}
_WTL_SCHEMA = {
    "head": pl.String,
    "encoder": pl.String,
    "k": pl.String,
    "wins": pl.Int64,
    "ties": pl.Int64,
    "losses": pl.Int64,
    "tasks": pl.Int64,
}


class _Resampler:
    """Patient-level bootstrap draws for one task, mapped to the rows of each set of held-out rows."""

    def __init__(self, patients: np.ndarray, n_bootstrap: int, seed: int) -> None:
        self.patients = np.unique(patients)
        rng = np.random.default_rng(seed)
        self.draws = [rng.integers(0, len(self.patients), len(self.patients)) for _ in range(n_bootstrap)]

    def rows(self, groups: np.ndarray) -> list[np.ndarray]:
        """For every draw, the row indices of ``groups`` (a held-out patient column) it picks."""
        index = np.searchsorted(self.patients, groups)
        order = np.argsort(index, kind="stable")
        lengths = np.bincount(index, minlength=len(self.patients))
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        out = []
        for picked in self.draws:
            sizes = lengths[picked]
            offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            out.append(order[np.repeat(starts[picked], sizes) + offsets])
        return out


def _mean_auroc(y: np.ndarray, replicates: list[np.ndarray], rows: np.ndarray | None = None) -> float | None:
    values = [auroc(y if rows is None else y[rows], p if rows is None else p[rows]) for p in replicates]
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _by_head_k(predictions: HeldOutPredictions) -> dict[tuple[str, str], dict[str, set[str]]]:
    """(head, k) → encoder → tasks with predictions."""
    out: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for task, encoder, head, k in predictions.probabilities:
        out[(head, k)][encoder].add(task)
    return out


def macro_auroc_ci(predictions: HeldOutPredictions, *, n_bootstrap: int = 200, seed: int = 0) -> pl.DataFrame:
    """Macro AUROC with a 95% patient-bootstrap CI per (head, encoder, k), on the tasks every encoder has."""
    rows: list[dict[str, object]] = []
    resamplers: dict[str, _Resampler] = {}
    for (head, k), encoders in sorted(_by_head_k(predictions).items()):
        common = sorted(set.intersection(*encoders.values()))
        if not common:
            continue
        for task in common:
            if task not in resamplers:
                patients = np.concatenate([h.groups for (t, _), h in predictions.held_out.items() if t == task])
                resamplers[task] = _Resampler(patients, n_bootstrap, seed)
        for encoder in sorted(encoders):
            point: list[float] = []
            samples = np.full((n_bootstrap, len(common)), np.nan)
            for j, task in enumerate(common):
                held = predictions.held_out[(task, encoder)]
                replicates = predictions.probabilities[(task, encoder, head, k)]
                value = _mean_auroc(held.y, replicates)
                if value is not None:
                    point.append(value)
                for b, picked in enumerate(resamplers[task].rows(held.groups)):
                    sample = _mean_auroc(held.y, replicates, picked)
                    samples[b, j] = np.nan if sample is None else sample
            macro = samples[~np.isnan(samples).any(axis=1)].mean(axis=1)
            lo, hi = np.percentile(macro, [2.5, 97.5]) if len(macro) >= 10 else (None, None)
            rows.append(
                {
                    "head": head,
                    "encoder": encoder,
                    "k": k,
                    "auroc": float(np.mean(point)) if point else None,
                    "auroc_lo": None if lo is None else float(lo),
                    "auroc_hi": None if hi is None else float(hi),
                    "tasks": len(common),
                }
            )
    return pl.DataFrame(rows, schema=_CI_SCHEMA) if rows else pl.DataFrame(schema=_CI_SCHEMA)


def paired_difference(
    y: np.ndarray,
    groups: np.ndarray,
    ours: list[np.ndarray],
    theirs: list[np.ndarray],
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> tuple[float | None, tuple[float, float] | None]:
    """Mean-over-replicates AUROC of ``ours`` minus ``theirs`` on the same rows, with a 95% patient-bootstrap CI."""
    a, b = _mean_auroc(y, ours), _mean_auroc(y, theirs)
    if a is None or b is None:
        return None, None
    diffs = []
    for picked in _Resampler(groups, n_bootstrap, seed).rows(groups):
        x, z = _mean_auroc(y, ours, picked), _mean_auroc(y, theirs, picked)
        if x is not None and z is not None:
            diffs.append(x - z)
    if len(diffs) < 10:
        return a - b, None
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return a - b, (float(lo), float(hi))


def wins_ties_losses(
    predictions: HeldOutPredictions, baseline: str = "count", *, n_bootstrap: int = 200, seed: int = 0
) -> pl.DataFrame:
    """Per (head, encoder, k): tasks where the encoder's AUROC is significantly above (win), below (loss) or
    not distinguishable from (tie) the baseline's with the same head, on the held-out rows both have."""
    rows: list[dict[str, object]] = []
    for (head, k), encoders in sorted(_by_head_k(predictions).items()):
        if baseline not in encoders:
            continue
        for encoder in sorted(set(encoders) - {baseline}):
            tally = {"wins": 0, "ties": 0, "losses": 0}
            for task in sorted(encoders[encoder] & encoders[baseline]):
                ours, theirs = predictions.held_out[(task, encoder)], predictions.held_out[(task, baseline)]
                shared, i, j = np.intersect1d(ours.rows, theirs.rows, assume_unique=True, return_indices=True)
                if len(shared) == 0:
                    continue
                _, ci = paired_difference(
                    ours.y[i],
                    ours.groups[i],
                    [p[i] for p in predictions.probabilities[(task, encoder, head, k)]],
                    [p[j] for p in predictions.probabilities[(task, baseline, head, k)]],
                    n_bootstrap=n_bootstrap,
                    seed=seed,
                )
                outcome = "ties" if ci is None or ci[0] <= 0 <= ci[1] else ("wins" if ci[0] > 0 else "losses")
                tally[outcome] += 1
            rows.append({"head": head, "encoder": encoder, "k": k, **tally, "tasks": sum(tally.values())})
    return pl.DataFrame(rows, schema=_WTL_SCHEMA) if rows else pl.DataFrame(schema=_WTL_SCHEMA)


def neighbour_lift(
    train: np.ndarray, train_y: np.ndarray, queries: np.ndarray, query_y: np.ndarray, *, k: int = 10
) -> dict[str, float | int | None]:
    """Share of positives among the ``k`` nearest train rows (cosine) of each positive query, over the
    train base rate. ``train`` / ``queries`` are dense vectors; labels are 0/1."""
    positives = np.flatnonzero(query_y == 1)
    base = float(np.mean(train_y)) if len(train_y) else None
    if len(positives) == 0 or not base or len(train) <= k:
        return {"queries": len(positives), "k": k, "neighbour_positive_rate": None, "base_rate": base, "lift": None}

    candidates = l2_normalize(np.asarray(train, dtype=np.float32))
    asked = l2_normalize(np.asarray(queries, dtype=np.float32)[positives])
    hits = 0.0
    for start in range(0, len(asked), _QUERY_CHUNK):  # bounded memory: a chunk of queries x the train rows
        sims = asked[start : start + _QUERY_CHUNK] @ candidates.T
        hits += float(train_y[np.argpartition(-sims, k - 1, axis=1)[:, :k]].sum())
    rate = hits / (len(asked) * k)
    return {"queries": len(positives), "k": k, "neighbour_positive_rate": rate, "base_rate": base, "lift": rate / base}
