from __future__ import annotations

import numpy as np
import pytest

from ehrembed.distill.retention import RetentionError, knn_cosine, overlap_at_k, retention_report


def test_identical_arrays_retain_everything() -> None:
    x = np.random.default_rng(0).normal(size=(120, 16)).astype(np.float32)
    report = retention_report(x, x.copy(), k=10)
    assert report["student"]["cosine_mean"] == pytest.approx(1.0, abs=1e-5)
    assert report["student"]["overlap@10"] == 1.0
    assert report["undistilled"] is None
    assert report["n"] == 120 and report["dim"] == 16


def test_random_arrays_overlap_low_and_undistilled_comparison() -> None:
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(150, 16))
    close = teacher + 0.05 * rng.normal(size=teacher.shape)
    report = retention_report(teacher, close, k=10, undistilled=rng.normal(size=(150, 16)), chunk=40)
    assert report["student"]["overlap@10"] > 0.7
    assert report["undistilled"]["overlap@10"] < 0.2  # chance level is 10/149
    assert abs(report["undistilled"]["cosine_mean"]) < 0.2


def test_knn_matches_brute_force_and_excludes_self() -> None:
    x = np.random.default_rng(2).normal(size=(50, 8)).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.sort(np.argsort(-sims, axis=1)[:, :5], axis=1)
    got = knn_cosine(x, 5, chunk=7)
    assert (np.sort(got, axis=1) == expected).all()
    assert not (got == np.arange(50)[:, None]).any()
    # overlap works across different dimensions (student bare embedding vs teacher)
    assert overlap_at_k(x, x[:, :4], k=5).shape == (50,)


def test_dimension_mismatch_names_the_projection() -> None:
    with pytest.raises(RetentionError, match="projection"):
        retention_report(np.ones((10, 16)), np.ones((10, 8)))
    with pytest.raises(RetentionError, match="rows"):
        retention_report(np.ones((10, 16)), np.ones((9, 16)))
    with pytest.raises(RetentionError, match="k must"):
        retention_report(np.eye(5), np.eye(5), k=5)
