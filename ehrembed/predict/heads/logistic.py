"""L2-regularised logistic regression (EHRSHOT's linear probe) with C chosen on the validation set.

Sparse features (counts, or counts beside vectors) are log-transformed (sign(x)·log(1+|x|), so negative
vector entries keep their sign) and scaled by each column's largest training magnitude;
dense embeddings are used as they are. Saved as JSON coefficients.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from ehrembed.predict.heads.base import BaseHead, Matrix, select_params

C_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
COEF_FILE = "coefficients.json"


class LogisticHead(BaseHead):
    """``LogisticRegression(penalty="l2", C=...)``; ``C`` from :data:`C_GRID` by validation AUROC."""

    kind: ClassVar[str] = "logistic"

    def __init__(self, c_grid: tuple[float, ...] = C_GRID, max_iter: int = 2000) -> None:
        self.c_grid = c_grid
        self.max_iter = max_iter

    def _transform(self, X: Matrix, scale: np.ndarray | None) -> Matrix:
        if sp.issparse(X):
            out = sp.csr_matrix(X, dtype=np.float64, copy=True)
            out.data = np.sign(out.data) * np.log1p(np.abs(out.data))
            if scale is not None:
                out = out.multiply(1.0 / scale).tocsr()
            return out
        return np.asarray(X, dtype=np.float64)

    def _fit(self, X: Matrix, y: np.ndarray, X_val: Matrix | None, y_val: np.ndarray | None) -> None:
        self.sparse_input_ = sp.issparse(X)
        self.scale_: np.ndarray | None = None
        if self.sparse_input_:
            peak = np.asarray(abs(self._transform(X, None)).max(axis=0).todense()).ravel()
            self.scale_ = np.where(peak > 0, peak, 1.0)
        Xt = self._transform(X, self.scale_)
        Xv = self._transform(X_val, self.scale_) if X_val is not None else None

        def fit_one(params: dict[str, Any]) -> LogisticRegression:
            return LogisticRegression(C=params["C"], max_iter=self.max_iter).fit(Xt, y)

        model, self.params_, self.grid_scores_ = select_params(
            [{"C": c} for c in self.c_grid], fit_one, lambda m: m.decision_function(Xv), y_val
        )
        self.coef_ = model.coef_.ravel().astype(np.float64)
        self.intercept_ = float(model.intercept_[0])

    def decision_function(self, X: Matrix) -> np.ndarray:
        return np.asarray(self._transform(X, self.scale_) @ self.coef_).ravel() + self.intercept_

    def _proba(self, X: Matrix) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.decision_function(X)))

    def _meta(self) -> dict[str, Any]:
        return {"sparse_input": self.sparse_input_}

    def _files(self) -> dict[str, Callable[[Path], object]]:
        coef = {
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
            "scale": None if self.scale_ is None else self.scale_.tolist(),
        }
        return {COEF_FILE: lambda p: p.write_text(json.dumps(coef))}

    def _restore(self, folder: Path, meta: dict[str, Any]) -> None:
        data = json.loads((folder / COEF_FILE).read_text())
        self.sparse_input_ = bool(meta.get("sparse_input"))
        self.coef_ = np.asarray(data["coef"], dtype=np.float64)
        self.intercept_ = float(data["intercept"])
        self.scale_ = None if data["scale"] is None else np.asarray(data["scale"], dtype=np.float64)
