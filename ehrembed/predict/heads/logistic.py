"""L2-regularised logistic regression (EHRSHOT's linear probe) with C chosen on the validation set.

Sparse features (counts, or counts beside vectors) are log-transformed (sign(x)·log(1+|x|), so negative
vector entries keep their sign) and scaled by each column's largest training magnitude;
dense embeddings are used as they are. Saved as JSON coefficients.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from ehrembed.predict.heads.base import (
    HeadError,
    Matrix,
    check_training_labels,
    read_head_meta,
    select_params,
    two_columns,
    write_head,
)

C_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
COEF_FILE = "coefficients.json"


class LogisticHead:
    """``LogisticRegression(penalty="l2", C=...)``; ``C`` from :data:`C_GRID` by validation AUROC."""

    kind: ClassVar[str] = "logistic"

    def __init__(self, c_grid: tuple[float, ...] = C_GRID, max_iter: int = 2000) -> None:
        self.c_grid = c_grid
        self.max_iter = max_iter
        self.params: dict[str, Any] = {}
        self.grid_scores: list[dict[str, Any]] = []
        self.coef: np.ndarray | None = None
        self.intercept = 0.0
        self.scale: np.ndarray | None = None
        self.sparse_input = False
        self.n_train = 0

    def _transform(self, X: Matrix) -> Matrix:
        if sp.issparse(X):
            out = sp.csr_matrix(X, dtype=np.float64, copy=True)
            out.data = np.sign(out.data) * np.log1p(np.abs(out.data))
            if self.scale is not None:
                out = out.multiply(1.0 / self.scale).tocsr()
            return out
        return np.asarray(X, dtype=np.float64)

    def fit(
        self, X: Matrix, y: np.ndarray, X_val: Matrix | None = None, y_val: np.ndarray | None = None
    ) -> LogisticHead:
        y = check_training_labels(y)
        self.sparse_input = sp.issparse(X)
        if self.sparse_input:
            self.scale = None
            logged = self._transform(X)
            peak = np.asarray(abs(logged).max(axis=0).todense()).ravel()
            self.scale = np.where(peak > 0, peak, 1.0)
        Xt = self._transform(X)
        Xv = self._transform(X_val) if X_val is not None else None

        def fit_one(params: dict[str, Any]) -> LogisticRegression:
            model = LogisticRegression(C=params["C"], max_iter=self.max_iter)
            return model.fit(Xt, y)

        model, self.params, self.grid_scores = select_params(
            [{"C": c} for c in self.c_grid], fit_one, lambda m: m.decision_function(Xv), y_val
        )
        self.coef = model.coef_.ravel().astype(np.float64)
        self.intercept = float(model.intercept_[0])
        self.n_train = len(y)
        return self

    def decision_function(self, X: Matrix) -> np.ndarray:
        if self.coef is None:
            raise HeadError("the logistic head is not fitted")
        if X.shape[1] != len(self.coef):
            raise HeadError(f"features have {X.shape[1]} columns; the head was fitted on {len(self.coef)}")
        return np.asarray(self._transform(X) @ self.coef).ravel() + self.intercept

    def predict_proba(self, X: Matrix) -> np.ndarray:
        return two_columns(1.0 / (1.0 + np.exp(-self.decision_function(X))))

    def save(self, path: Path | str) -> Path:
        if self.coef is None:
            raise HeadError("the logistic head is not fitted")
        coef = {
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "scale": None if self.scale is None else self.scale.tolist(),
        }
        meta = {
            "kind": self.kind,
            "params": self.params,
            "grid": self.grid_scores,
            "n_train": self.n_train,
            "n_features": len(self.coef),
            "sparse_input": self.sparse_input,
        }
        return write_head(path, meta, {COEF_FILE: lambda p: p.write_text(json.dumps(coef))})

    @classmethod
    def load(cls, path: Path | str) -> LogisticHead:
        meta = read_head_meta(path)
        data = json.loads((Path(path) / COEF_FILE).read_text())
        head = cls()
        head.params, head.grid_scores, head.n_train = meta["params"], meta.get("grid", []), meta["n_train"]
        head.sparse_input = bool(meta.get("sparse_input"))
        head.coef = np.asarray(data["coef"], dtype=np.float64)
        head.intercept = float(data["intercept"])
        head.scale = None if data["scale"] is None else np.asarray(data["scale"], dtype=np.float64)
        return head
