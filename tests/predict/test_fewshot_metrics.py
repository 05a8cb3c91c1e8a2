"""Few-shot sampling (nested, patient-spread) and metrics (match scikit-learn, patient bootstrap)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from ehrembed.predict.fewshot import ALL, EHRSHOT_KS, parse_ks, replicate_orders, take_k
from ehrembed.predict.metrics import auprc, auroc, score


def test_k_samples_are_nested_balanced_and_replicates_differ() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    groups = rng.integers(0, 150, 400)
    orders = replicate_orders(y, groups, replicates=5, seed=0)
    for order in orders:
        previous: set[int] = set()
        for k in [k for k in EHRSHOT_KS if k != ALL and k <= 128]:
            rows = take_k(order, k)
            assert rows is not None
            assert int(y[rows].sum()) == k and len(rows) == 2 * k
            assert previous <= set(rows.tolist())
            previous = set(rows.tolist())
        assert len(take_k(order, ALL)) == 400
    assert not np.array_equal(orders[0][0], orders[1][0])
    assert take_k(orders[0], 10_000) is None


def test_a_sample_spreads_over_patients_first() -> None:
    y = np.ones(20, dtype=int)
    y[:10] = 0
    groups = np.array([0] * 8 + [1] * 2 + [2] * 8 + [3, 4])
    positives, _ = replicate_orders(y, groups, replicates=1, seed=3)[0]
    assert len(set(groups[positives[:3]].tolist())) == 3


def test_parse_ks() -> None:
    assert parse_ks(["all", "4", "1", "4"]) == (1, 4, ALL)
    with pytest.raises(ValueError, match="positive integer"):
        parse_ks(["two"])
    with pytest.raises(ValueError, match="at least 1"):
        parse_ks(["0"])


def test_metrics_match_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        y = rng.integers(0, 2, 60)
        p = np.round(rng.random(60), 1)
        if len(set(y)) < 2:
            continue
        assert auroc(y, p) == pytest.approx(roc_auc_score(y, p))
        assert auprc(y, p) == pytest.approx(average_precision_score(y, p))
    scores = score(y, p, n_bootstrap=0)
    assert scores.brier == pytest.approx(brier_score_loss(y, p))
    assert auroc(np.zeros(5), np.ones(5)) is None


def test_patient_bootstrap_intervals_hold_the_estimate() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1)
    groups = np.arange(300) // 3
    scores = score(y, p, groups, n_bootstrap=200, seed=0)
    assert scores.auroc_ci is not None and scores.auroc_ci[0] <= scores.auroc <= scores.auroc_ci[1]
    assert scores.as_dict()["auroc_lo"] == scores.auroc_ci[0]
    assert score(np.zeros(10), np.full(10, 0.1)).auroc is None
