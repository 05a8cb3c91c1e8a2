"""k-nearest-neighbour head over a FAISS index of the training vectors.

The probability of a query is the similarity-weighted share of positives among its ``k`` most
similar training examples (weights ``exp(cosine / temperature)``), so nearer neighbours count more
and ties are rare. ``k`` is chosen on the validation set. Saved as the training vectors (``.npy``)
and labels; the FAISS index is rebuilt on load.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from ehrembed.predict.heads.base import BaseHead, HeadError, Matrix, select_params
from ehrembed.retrieval.index import VectorIndex

K_GRID: tuple[int, ...] = (5, 15, 50)
VECTORS_FILE = "vectors.npy"
LABELS_FILE = "labels.npy"


class KnnHead(BaseHead):
    """Similarity-weighted vote of the ``k`` nearest training examples (cosine, exact FAISS search)."""

    kind: ClassVar[str] = "knn"
    _init_keys_saved: ClassVar[tuple[str, ...]] = ("temperature",)

    def __init__(self, k_grid: tuple[int, ...] = K_GRID, temperature: float = 0.05) -> None:
        self.k_grid = k_grid
        self.temperature = temperature

    def _build(self) -> None:
        self.index_ = VectorIndex.build(self.vectors_, kind="flat", normalize=True, use_gpu=False)

    def _vote(self, X: Matrix, k: int) -> np.ndarray:
        if sp.issparse(X):
            raise HeadError("the kNN head needs dense vectors (embeddings), not sparse counts")
        X = np.asarray(X, dtype=np.float32)
        ids, scores = self.index_.search(X, min(k, len(self.labels_)))
        weights = np.exp((scores - scores.max(axis=1, keepdims=True)) / self.temperature)
        weights[ids < 0] = 0.0
        votes = self.labels_[np.maximum(ids, 0)]
        return np.asarray((weights * votes).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-12))

    def _fit(self, X: Matrix, y: np.ndarray, X_val: Matrix | None, y_val: np.ndarray | None) -> None:
        if sp.issparse(X):
            raise HeadError("the kNN head needs dense vectors (embeddings), not sparse counts")
        self.vectors_ = np.ascontiguousarray(X, dtype=np.float32)
        self.labels_ = y.astype(np.float64)
        self._build()
        grid = [{"k": k} for k in dict.fromkeys(min(k, len(y)) for k in self.k_grid)]
        _, self.params_, self.grid_scores_ = select_params(
            grid, lambda p: p["k"], lambda k: self._vote(X_val, k), y_val
        )

    def _proba(self, X: Matrix) -> np.ndarray:
        return self._vote(X, int(self.params_.get("k", self.k_grid[0])))

    def _files(self) -> dict[str, Callable[[Path], object]]:
        vectors, labels = self.vectors_, self.labels_
        return {VECTORS_FILE: lambda p: np.save(p, vectors), LABELS_FILE: lambda p: np.save(p, labels.astype(np.int8))}

    def _restore(self, folder: Path, meta: dict[str, Any]) -> None:
        self.vectors_ = np.load(folder / VECTORS_FILE)
        self.labels_ = np.load(folder / LABELS_FILE).astype(np.float64)
        self._build()
