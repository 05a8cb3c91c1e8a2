"""The head contract (the scikit-learn estimator's) and how heads are saved without pickle.

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
from typing import Any, ClassVar, Protocol, Self, TypeAlias

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import roc_auc_score
from sklearn.utils.validation import check_is_fitted

from ehrembed.errors import InputError
from ehrembed.fsutil import atomic_dir

HEAD_FILE = "head.json"
FORMAT = "ehrembed-head/1"
Matrix: TypeAlias = np.ndarray | sp.csr_matrix


class HeadError(InputError):
    """A head cannot be fitted or read as asked (e.g. one class only, or a corrupt folder)."""


class Head(Protocol):
    """What the benchmark and the API need from a few-shot head."""

    kind: ClassVar[str]
    params_: dict[str, Any]

    def fit(self, X: Matrix, y: np.ndarray, X_val: Matrix | None = None, y_val: np.ndarray | None = None) -> Head: ...

    def predict_proba(self, X: Matrix) -> np.ndarray: ...

    def save(self, path: Path | str) -> Path: ...

    @classmethod
    def load(cls, path: Path | str) -> Head: ...


class BaseHead(ClassifierMixin, BaseEstimator):
    """The scikit-learn estimator contract and the save/load skeleton the three heads share.

    Subclasses take only hyperparameters in ``__init__`` (so ``get_params`` / ``set_params`` and
    ``sklearn.base.clone`` work) and implement ``_fit`` (set the fitted ``*_`` attributes),
    ``_proba`` (probability of class 1), ``_files`` / ``_meta`` (what ``save`` writes beside
    ``head.json``) and ``_restore`` (read it back). Fitted attributes end in ``_``: ``params_`` (the
    grid point chosen), ``grid_scores_``, ``n_train_``, ``classes_`` (``[0, 1]``). Using an unfitted
    head raises scikit-learn's ``NotFittedError``.
    """

    kind: ClassVar[str]
    n_features_: int

    def fit(self, X: Matrix, y: np.ndarray, X_val: Matrix | None = None, y_val: np.ndarray | None = None) -> Self:
        y = check_training_labels(y)
        self._fit(X, y, X_val, None if y_val is None else np.asarray(y_val).astype(np.int64).ravel())
        self.classes_ = np.array([0, 1])
        self.n_train_ = len(y)
        self.n_features_ = int(X.shape[1])
        return self

    def predict_proba(self, X: Matrix) -> np.ndarray:
        check_is_fitted(self, "classes_")
        if X.shape[1] != self.n_features_:
            raise HeadError(f"features have {X.shape[1]} columns; the head was fitted on {self.n_features_}")
        return two_columns(self._proba(X))

    def predict(self, X: Matrix) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)

    def save(self, path: Path | str) -> Path:
        check_is_fitted(self, "classes_")
        meta = {
            "kind": self.kind,
            "params": self.params_,
            "grid": self.grid_scores_,
            "n_train": self.n_train_,
            "n_features": self.n_features_,
            **self._meta(),
        }
        return write_head(path, meta, self._files())

    @classmethod
    def load(cls, path: Path | str) -> Self:
        meta = read_head_meta(path)
        if meta.get("kind") != cls.kind:
            raise HeadError(f"{path}: a {meta.get('kind')!r} head, not {cls.kind!r}")
        head = cls(**{k: meta[k] for k in cls._init_keys_saved if k in meta})
        head.params_, head.grid_scores_ = dict(meta["params"]), list(meta.get("grid", []))
        head.n_train_, head.n_features_ = int(meta.get("n_train", 0)), int(meta["n_features"])
        head._restore(Path(path), meta)
        head.classes_ = np.array([0, 1])
        return head

    # --- what each head supplies -------------------------------------------------------------
    _init_keys_saved: ClassVar[tuple[str, ...]] = ()
    """Hyperparameters ``save`` writes into ``head.json`` and ``load`` passes back to ``__init__``."""

    def _fit(self, X: Matrix, y: np.ndarray, X_val: Matrix | None, y_val: np.ndarray | None) -> None:
        raise NotImplementedError

    def _proba(self, X: Matrix) -> np.ndarray:
        raise NotImplementedError

    def _files(self) -> dict[str, Callable[[Path], object]]:
        raise NotImplementedError

    def _meta(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._init_keys_saved}

    def _restore(self, folder: Path, meta: dict[str, Any]) -> None:
        raise NotImplementedError


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
