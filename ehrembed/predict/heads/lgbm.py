"""LightGBM gradient-boosted trees (EHRSHOT's GBM head and the count baseline's model).

A small grid over leaves and learning rate, picked by validation AUROC; leaf sizes shrink with
the training set so a few-shot fit can still split. Saved as LightGBM's own text model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np

from ehrembed.predict.heads.base import (
    HeadError,
    Matrix,
    check_training_labels,
    read_head_meta,
    select_params,
    two_columns,
    write_head,
)

GRID: tuple[dict[str, Any], ...] = (
    {"num_leaves": 15, "learning_rate": 0.1, "n_estimators": 100},
    {"num_leaves": 7, "learning_rate": 0.1, "n_estimators": 50},
    {"num_leaves": 31, "learning_rate": 0.05, "n_estimators": 200},
)
MODEL_FILE = "model.txt"


class LightGBMHead:
    """``lightgbm.LGBMClassifier`` over :data:`GRID`; ``min_child_samples`` follows the training size."""

    kind: ClassVar[str] = "lightgbm"

    def __init__(self, grid: tuple[dict[str, Any], ...] = GRID, seed: int = 0, n_jobs: int = 1) -> None:
        self.grid = grid
        self.seed = seed
        self.n_jobs = n_jobs
        self.params: dict[str, Any] = {}
        self.grid_scores: list[dict[str, Any]] = []
        self.booster: lgb.Booster | None = None
        self.n_train = 0

    def fit(
        self, X: Matrix, y: np.ndarray, X_val: Matrix | None = None, y_val: np.ndarray | None = None
    ) -> LightGBMHead:
        y = check_training_labels(y)
        n = len(y)
        leaf = int(max(1, min(20, n // 10)))

        def fit_one(params: dict[str, Any]) -> lgb.LGBMClassifier:
            model = lgb.LGBMClassifier(
                **params,
                min_child_samples=leaf,
                min_child_weight=1e-3,
                subsample=0.8,
                subsample_freq=1,
                colsample_bytree=0.5,
                max_bin=63,
                reg_lambda=1.0,
                random_state=self.seed,
                n_jobs=self.n_jobs,
                verbose=-1,
            )
            return model.fit(X, y)

        model, self.params, self.grid_scores = select_params(
            list(self.grid), fit_one, lambda m: m.predict_proba(X_val)[:, 1], y_val
        )
        self.params["min_child_samples"] = leaf
        self.booster = model.booster_
        self.n_train = n
        return self

    def predict_proba(self, X: Matrix) -> np.ndarray:
        if self.booster is None:
            raise HeadError("the LightGBM head is not fitted")
        if X.shape[1] != self.booster.num_feature():
            raise HeadError(f"features have {X.shape[1]} columns; the head was fitted on {self.booster.num_feature()}")
        return two_columns(np.asarray(self.booster.predict(X)))

    def save(self, path: Path | str) -> Path:
        if self.booster is None:
            raise HeadError("the LightGBM head is not fitted")
        booster = self.booster
        meta = {
            "kind": self.kind,
            "params": self.params,
            "grid": self.grid_scores,
            "n_train": self.n_train,
            "n_features": booster.num_feature(),
        }
        return write_head(path, meta, {MODEL_FILE: lambda p: booster.save_model(str(p))})

    @classmethod
    def load(cls, path: Path | str) -> LightGBMHead:
        meta = read_head_meta(path)
        head = cls()
        head.params, head.grid_scores, head.n_train = meta["params"], meta.get("grid", []), meta["n_train"]
        try:
            head.booster = lgb.Booster(model_file=str(Path(path) / MODEL_FILE))
        except lgb.basic.LightGBMError as exc:
            raise HeadError(f"{path}: unreadable LightGBM model ({exc})") from None
        return head
