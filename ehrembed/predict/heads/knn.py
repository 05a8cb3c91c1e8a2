"""k-nearest-neighbour head over a FAISS index of the training vectors.

The probability of a query is the similarity-weighted share of positives among its ``k`` most
similar training examples (weights ``exp(cosine / temperature)``), so nearer neighbours count more
and ties are rare. ``k`` is chosen on the validation set. Saved as the training vectors (``.npy``)
and labels; the FAISS index is rebuilt on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from ehrembed.predict.heads.base import (
    HeadError,
    Matrix,
    check_training_labels,
    read_head_meta,
    select_params,
    two_columns,
    write_head,
)
from ehrembed.retrieval.index import VectorIndex

K_GRID: tuple[int, ...] = (5, 15, 50)
VECTORS_FILE = "vectors.npy"
LABELS_FILE = "labels.npy"


class KnnHead:
    """Similarity-weighted vote of the ``k`` nearest training examples (cosine, exact FAISS search)."""

    kind: ClassVar[str] = "knn"

    def __init__(self, k_grid: tuple[int, ...] = K_GRID, temperature: float = 0.05) -> None:
        self.k_grid = k_grid
        self.temperature = temperature
        self.params: dict[str, Any] = {}
        self.grid_scores: list[dict[str, Any]] = []
        self.vectors: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.index: VectorIndex | None = None

    @property
    def n_train(self) -> int:
        return 0 if self.labels is None else len(self.labels)

    def _build(self) -> None:
        assert self.vectors is not None
        self.index = VectorIndex.build(self.vectors, kind="flat", normalize=True, use_gpu=False)

    def _vote(self, X: Matrix, k: int) -> np.ndarray:
        if self.index is None or self.labels is None:
            raise HeadError("the kNN head is not fitted")
        if sp.issparse(X):
            raise HeadError("the kNN head needs dense vectors (embeddings), not sparse counts")
        X = np.asarray(X, dtype=np.float32)
        if X.shape[1] != self.index.dim:
            raise HeadError(f"features have {X.shape[1]} columns; the head was fitted on {self.index.dim}")
        ids, scores = self.index.search(X, min(k, self.n_train))
        weights = np.exp((scores - scores.max(axis=1, keepdims=True)) / self.temperature)
        weights[ids < 0] = 0.0
        votes = self.labels[np.maximum(ids, 0)]
        return (weights * votes).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-12)

    def fit(self, X: Matrix, y: np.ndarray, X_val: Matrix | None = None, y_val: np.ndarray | None = None) -> KnnHead:
        if sp.issparse(X):
            raise HeadError("the kNN head needs dense vectors (embeddings), not sparse counts")
        y = check_training_labels(y)
        self.vectors = np.ascontiguousarray(X, dtype=np.float32)
        self.labels = y.astype(np.float64)
        self._build()
        grid = [{"k": k} for k in dict.fromkeys(min(k, len(y)) for k in self.k_grid)]
        _, self.params, self.grid_scores = select_params(grid, lambda p: p["k"], lambda k: self._vote(X_val, k), y_val)
        return self

    def predict_proba(self, X: Matrix) -> np.ndarray:
        return two_columns(self._vote(X, int(self.params.get("k", self.k_grid[0]))))

    def save(self, path: Path | str) -> Path:
        if self.vectors is None or self.labels is None:
            raise HeadError("the kNN head is not fitted")
        vectors, labels = self.vectors, self.labels
        meta = {
            "kind": self.kind,
            "params": self.params,
            "grid": self.grid_scores,
            "n_train": self.n_train,
            "n_features": int(vectors.shape[1]),
            "temperature": self.temperature,
        }
        return write_head(
            path,
            meta,
            {VECTORS_FILE: lambda p: np.save(p, vectors), LABELS_FILE: lambda p: np.save(p, labels.astype(np.int8))},
        )

    @classmethod
    def load(cls, path: Path | str) -> KnnHead:
        meta = read_head_meta(path)
        head = cls(temperature=float(meta.get("temperature", 0.05)))
        head.params, head.grid_scores = meta["params"], meta.get("grid", [])
        head.vectors = np.load(Path(path) / VECTORS_FILE)
        head.labels = np.load(Path(path) / LABELS_FILE).astype(np.float64)
        head._build()
        return head
