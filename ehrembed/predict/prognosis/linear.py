"""Closed-form prognostic encoders and controls: linear maps from the transformed count inputs.

- ``svd``: the inputs' top right singular vectors (no targets: what counts alone give at this size);
- ``rrr``: reduced-rank ridge regression from the inputs to the targets' occurrence within each horizon
  and before the end of the record (a cell whose record ends before the horizon without the target is
  filled with its column's train mean; the last block keeps cohorts whose events lie beyond every
  horizon from giving constant targets), the ridge penalty chosen on the validation subjects, then the
  fitted values' top ``dim`` directions: ``projection = B · V_dim``.
Both work in the span of a truncated SVD of the inputs, so they cost seconds at a few thousand columns.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd

from ehrembed.predict.prognosis.targets import TargetTimes

RIDGE_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
"""Ridge penalties, as fractions of the inputs' mean squared singular value."""
MAX_RANK = 1024


def _svd(inputs: sp.csr_matrix, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rank = max(1, min(rank, min(inputs.shape) - 1))
    return randomized_svd(inputs, rank, n_iter=4, random_state=seed)


def svd_projection(inputs: sp.csr_matrix, dim: int, seed: int = 0) -> np.ndarray:
    """``(n_inputs, dim)``: the top right singular vectors of the inputs."""
    _u, _s, vt = _svd(inputs, dim, seed)
    return np.ascontiguousarray(vt.T, dtype=np.float32)


def occurrence_matrix(times: TargetTimes, horizons: tuple[float, ...], fill: np.ndarray | None = None) -> np.ndarray:
    """Occurrence within each horizon, then at all before the end of the record: ``(rows, targets × (horizons
    + 1))``; unknown cells take ``fill`` (the known cells' column means when None)."""
    blocks = []
    for h in horizons:
        label, known = times.occurred_within(h)
        blocks.append(np.where(known, label.astype(np.float32), np.nan))
    blocks.append(times.event.astype(np.float32))
    y = np.concatenate(blocks, axis=1)
    if fill is None:
        fill = np.nan_to_num(np.nanmean(y, axis=0), nan=0.0)
    return np.where(np.isnan(y), fill[None, :], y).astype(np.float32)


def rrr_projection(
    inputs: sp.csr_matrix,
    times: TargetTimes,
    horizons: tuple[float, ...],
    dim: int,
    *,
    validation: np.ndarray,
    standardize: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, float]]:
    """``(n_inputs, dim)`` reduced-rank ridge map and its figures (chosen penalty, validation MSE);
    ``validation`` marks the rows that choose the penalty (fitted on the others, then refitted on all)."""
    fit_rows, val_rows = np.flatnonzero(~validation), np.flatnonzero(validation)
    y_all = occurrence_matrix(times, horizons)
    if standardize:  # rare targets weigh as much as common ones
        spread = y_all[fit_rows].std(axis=0)
        y_all = y_all / np.where(spread > 1e-6, spread, 1.0)[None, :]
    mean = y_all[fit_rows].mean(axis=0)
    scores: dict[float, float] = {}
    u, sv, vt = _svd(inputs[fit_rows], MAX_RANK, seed)
    base = float(np.mean(sv**2))
    for fraction in RIDGE_GRID:
        alpha = fraction * base
        coef = vt.T @ ((sv / (sv**2 + alpha))[:, None] * (u.T @ (y_all[fit_rows] - mean)))
        if len(val_rows):
            residual = inputs[val_rows] @ coef + mean - y_all[val_rows]
            scores[fraction] = float(np.mean(residual**2))
        else:
            scores[fraction] = 0.0
    best = min(scores, key=lambda f: (scores[f], -f))
    u, sv, vt = _svd(inputs, MAX_RANK, seed)
    alpha = best * float(np.mean(sv**2))
    mean = y_all.mean(axis=0)
    coef = vt.T @ ((sv / (sv**2 + alpha))[:, None] * (u.T @ (y_all - mean)))
    fitted = np.asarray(inputs @ coef)
    rank = max(1, min(dim, min(fitted.shape) - 1))
    _fu, _fs, directions = randomized_svd(fitted, rank, n_iter=4, random_state=seed)
    projection = coef @ directions.T
    figures = {"ridge_fraction": best, "validation_mse": scores[best], "rank": float(rank)}
    return np.ascontiguousarray(projection, dtype=np.float32), figures
