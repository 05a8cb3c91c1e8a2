"""AUROC, AUPRC and Brier score with patient-level bootstrap confidence intervals.

Labels of one patient are not independent, so the bootstrap resamples patients (with all their
labels), as EHRSHOT does. Replicates where the resample holds one class are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("auroc", "auprc", "brier")


@dataclass(frozen=True)
class Scores:
    """Point estimates and 95% intervals (``None`` where a metric is undefined)."""

    auroc: float | None
    auprc: float | None
    brier: float | None
    auroc_ci: tuple[float, float] | None = None
    auprc_ci: tuple[float, float] | None = None
    brier_ci: tuple[float, float] | None = None
    n: int = 0
    n_positive: int = 0

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"n": self.n, "n_positive": self.n_positive}
        for name in METRICS:
            out[name] = getattr(self, name)
            ci = getattr(self, f"{name}_ci")
            out[f"{name}_lo"], out[f"{name}_hi"] = ci if ci is not None else (None, None)
        return out


def auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None with one class."""
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average rank of each tie group
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Average precision, ``Σ (R_i - R_{i-1}) P_i`` over distinct thresholds (scikit-learn's definition)."""
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(p_sorted)), len(p_sorted) - 1]
    tp = np.cumsum(y_sorted)[last_of_value]
    precision = tp / (last_of_value + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def _point(y: np.ndarray, p: np.ndarray) -> tuple[float | None, float | None, float]:
    return auroc(y, p), auprc(y, p), brier(y, p)


def score(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> Scores:
    """Metrics of probabilities ``p`` for binary ``y``; CIs resample ``groups`` (patients) when given."""
    y = np.asarray(y).astype(np.int64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} predictions")
    if len(y) == 0:
        return Scores(None, None, None)
    point_auroc, point_auprc, point_brier = _point(y, p)
    cis: dict[str, tuple[float, float] | None] = {name: None for name in METRICS}
    if n_bootstrap > 0 and point_auroc is not None:
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        _, inverse = np.unique(groups, return_inverse=True)
        by_group = np.argsort(inverse, kind="stable")
        lengths = np.bincount(inverse)
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        rng = np.random.default_rng(seed)
        samples: dict[str, list[float]] = {name: [] for name in METRICS}
        for _ in range(n_bootstrap):
            picked = rng.integers(0, len(lengths), len(lengths))
            sizes = lengths[picked]
            offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            rows = by_group[np.repeat(starts[picked], sizes) + offsets]
            a, b, c = _point(y[rows], p[rows])
            if a is None or b is None:
                continue
            samples["auroc"].append(a)
            samples["auprc"].append(b)
            samples["brier"].append(c)
        for name, values in samples.items():
            if len(values) >= 10:
                lo, hi = np.percentile(values, [2.5, 97.5])
                cis[name] = (float(lo), float(hi))
    return Scores(
        point_auroc,
        point_auprc,
        point_brier,
        cis["auroc"],
        cis["auprc"],
        cis["brier"],
        n=len(y),
        n_positive=int(y.sum()),
    )
