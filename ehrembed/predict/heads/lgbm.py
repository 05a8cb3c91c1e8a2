"""LightGBM gradient-boosted trees (EHRSHOT's GBM head and the count baseline's model).

A small grid over leaves and learning rate, picked by validation AUROC; leaf sizes shrink with
the training set so a few-shot fit can still split. Saved as LightGBM's own text model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np

from ehrembed.predict.heads.base import BaseHead, HeadError, Matrix, select_params

GRID: tuple[dict[str, Any], ...] = (
    {"num_leaves": 15, "learning_rate": 0.1, "n_estimators": 100},
    {"num_leaves": 7, "learning_rate": 0.1, "n_estimators": 50},
    {"num_leaves": 31, "learning_rate": 0.05, "n_estimators": 200},
)
MODEL_FILE = "model.txt"


class LightGBMHead(BaseHead):
    """``lightgbm.LGBMClassifier`` over :data:`GRID`; ``min_child_samples`` follows the training size."""

    kind: ClassVar[str] = "lightgbm"

    def __init__(self, grid: tuple[dict[str, Any], ...] = GRID, seed: int = 0, n_jobs: int = 1) -> None:
        self.grid = grid
        self.seed = seed
        self.n_jobs = n_jobs

    def _fit(self, X: Matrix, y: np.ndarray, X_val: Matrix | None, y_val: np.ndarray | None) -> None:
        leaf = int(max(1, min(20, len(y) // 10)))

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

        model, self.params_, self.grid_scores_ = select_params(
            list(self.grid), fit_one, lambda m: m.predict_proba(X_val)[:, 1], y_val
        )
        self.params_["min_child_samples"] = leaf
        self.booster_: lgb.Booster = model.booster_

    def _proba(self, X: Matrix) -> np.ndarray:
        return np.asarray(self.booster_.predict(X))

    def _files(self) -> dict[str, Callable[[Path], object]]:
        booster = self.booster_
        return {MODEL_FILE: lambda p: booster.save_model(str(p))}

    def _restore(self, folder: Path, meta: dict[str, Any]) -> None:
        try:
            self.booster_ = lgb.Booster(model_file=str(folder / MODEL_FILE))
        except lgb.basic.LightGBMError as exc:
            raise HeadError(f"{folder}: unreadable LightGBM model ({exc})") from None
