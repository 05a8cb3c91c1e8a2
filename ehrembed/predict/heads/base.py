"""The head contract (scikit-learn style) and how heads are saved without pickle.

A head is fitted on feature rows ``X`` and binary labels ``y``; with a validation set it picks its
hyperparameters from a small grid by validation AUROC (the first grid point when the validation
set is missing or holds one class). ``predict_proba(X)`` returns ``(n, 2)`` probabilities of
classes 0 and 1, as scikit-learn and LightGBM do. ``save(folder)`` writes ``head.json`` (type,
chosen parameters, grid scores, training size) beside the library's own model format (LightGBM's
text model, coefficients as JSON, the kNN's vectors as ``.npy``); :func:`load_head` reads any of
them back. Folders are written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeAlias

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from ehrembed.fsutil import atomic_dir

HEAD_FILE = "head.json"
FORMAT = "ehrembed-head/1"
Matrix: TypeAlias = np.ndarray | sp.csr_matrix


class HeadError(ValueError):
    """A head cannot be fitted or read as asked (e.g. one class only, or a corrupt folder)."""


class Head(Protocol):
    """What the benchmark and the API need from a few-shot head."""

    kind: ClassVar[str]
    params: dict[str, Any]

    def fit(self, X: Matrix, y: np.ndarray, X_val: Matrix | None = None, y_val: np.ndarray | None = None) -> Head: ...

    def predict_proba(self, X: Matrix) -> np.ndarray: ...

    def save(self, path: Path | str) -> Path: ...


def check_training_labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y).astype(np.int64).ravel()
    if y.size == 0:
        raise HeadError("no training examples")
    if not np.isin(y, (0, 1)).all():
        raise HeadError("labels must be binary (0/1 or false/true)")
    if len(np.unique(y)) < 2:
        raise HeadError(f"training labels hold one class only ({int(y[0])}); a head needs positives and negatives")
    return y


def n_rows(X: Matrix) -> int:
    return int(X.shape[0])


def select_params(
    grid: Sequence[dict[str, Any]],
    fit: Callable[[dict[str, Any]], Any],
    score: Callable[[Any], np.ndarray],
    y_val: np.ndarray | None,
) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """Fit every grid point and keep the best by validation AUROC (the first when it cannot be measured)."""
    usable = y_val is not None and len(np.unique(y_val)) == 2
    candidates = grid if usable else grid[:1]
    best: tuple[float, Any, dict[str, Any]] | None = None
    scores: list[dict[str, Any]] = []
    for params in candidates:
        model = fit(params)
        auroc = float(roc_auc_score(y_val, score(model))) if usable else float("nan")
        scores.append({**params, "val_auroc": None if np.isnan(auroc) else round(auroc, 6)})
        if best is None or (usable and auroc > best[0]):
            best = (auroc, model, params)
    assert best is not None
    return best[1], dict(best[2]), scores


def write_head(path: Path | str, meta: dict[str, Any], files: dict[str, Callable[[Path], object]]) -> Path:
    """An atomic head folder: ``head.json`` plus files written by the callables (name → writer)."""
    target = Path(path)
    with atomic_dir(target, overwrite=True) as tmp:
        for name, writer in files.items():
            writer(tmp / name)
        (tmp / HEAD_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=2) + "\n")
    return target


def read_head_meta(path: Path | str) -> dict[str, Any]:
    folder = Path(path)
    meta_path = folder / HEAD_FILE
    if not meta_path.is_file():
        raise HeadError(f"{folder} is not a head folder (no {HEAD_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise HeadError(f"{meta_path}: not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise HeadError(f"{meta_path}: unknown head format {meta.get('format')!r}")
    return dict(meta)


def two_columns(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64).ravel(), 0.0, 1.0)
    return np.column_stack([1.0 - p, p])
