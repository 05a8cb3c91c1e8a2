"""Heads: learn a signal, pick hyperparameters on validation, save/load without pickle, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from ehrembed.predict.heads import HEAD_NAMES, HeadError, load_head, make_head
from ehrembed.predict.metrics import auroc


def _data(n: int, seed: int, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    X[:, 0] += 2.0 * y
    return X / np.linalg.norm(X, axis=1, keepdims=True), y


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_head_learns_and_round_trips(name: str, tmp_path: Path) -> None:
    X, y = _data(200, 0)
    Xv, yv = _data(80, 1)
    Xt, yt = _data(300, 2)
    head = make_head(name).fit(X, y, Xv, yv)
    p = head.predict_proba(Xt)
    assert p.shape == (300, 2) and np.allclose(p.sum(axis=1), 1.0)
    assert auroc(yt, p[:, 1]) > (0.75 if name == "knn" else 0.85)
    folder = head.save(tmp_path / name)
    meta = json.loads((folder / "head.json").read_text())
    assert meta["kind"] == name and meta["grid"] and "val_auroc" in meta["grid"][0]
    assert not list(folder.glob("*.pkl"))
    again = load_head(folder)
    assert np.allclose(again.predict_proba(Xt), p, atol=1e-6)
    assert again.params_ == head.params_


def test_without_validation_the_first_grid_point_is_used() -> None:
    X, y = _data(60, 3)
    head = make_head("logistic").fit(X, y)
    assert head.params_ == {"C": 1e-4}


def test_one_class_and_shape_errors(tmp_path: Path) -> None:
    X, y = _data(20, 4)
    for name in HEAD_NAMES:
        with pytest.raises(HeadError, match="one class only"):
            make_head(name).fit(X, np.zeros(20))
    head = make_head("lightgbm").fit(X, y)
    with pytest.raises(HeadError, match="columns"):
        head.predict_proba(X[:, :5])
    with pytest.raises(HeadError, match="dense vectors"):
        make_head("knn").fit(sp.csr_matrix(X), y)
    with pytest.raises(HeadError, match="unknown head"):
        make_head("svm")
    with pytest.raises(HeadError, match="not a head folder"):
        load_head(tmp_path)


def test_sparse_counts_work_for_logistic_and_lightgbm() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    counts = rng.poisson(1.0, size=(300, 40)).astype(np.float32)
    counts[:, 3] += 3 * y
    X = sp.csr_matrix(counts)
    for name in ("logistic", "lightgbm"):
        head = make_head(name).fit(X[:200], y[:200], X[200:250], y[200:250])
        assert auroc(y[250:], head.predict_proba(X[250:])[:, 1]) > 0.8


def test_few_shot_sizes_still_fit() -> None:
    X, y = _data(200, 6)
    pick = np.r_[np.flatnonzero(y == 1)[:2], np.flatnonzero(y == 0)[:2]]
    for name in HEAD_NAMES:
        p = make_head(name).fit(X[pick], y[pick]).predict_proba(X)
        assert np.isfinite(p).all()


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_heads_honour_the_scikit_learn_estimator_contract(name: str) -> None:
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    head = make_head(name)
    params = head.get_params()
    assert params and all(not key.endswith("_") for key in params)
    with pytest.raises(NotFittedError):
        head.predict_proba(np.zeros((2, 16), dtype=np.float32))
    X, y = _data(120, 5)
    fitted = head.fit(X, y)
    assert list(fitted.classes_) == [0, 1] and fitted.n_train_ == 120 and fitted.params_
    twin = clone(fitted)  # same hyperparameters, nothing fitted
    assert twin.get_params() == params and not hasattr(twin, "classes_")
    key = next(iter(params))
    assert twin.set_params(**{key: params[key]}) is twin
    assert set(np.unique(fitted.predict(X))) <= {0, 1}
    assert np.allclose(twin.fit(X, y).predict_proba(X), fitted.predict_proba(X))
