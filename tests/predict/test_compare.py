"""Encoder comparisons from held-out predictions: macro AUROC CIs, wins/ties/losses, neighbour lift."""

from __future__ import annotations

import numpy as np
import polars as pl

from ehrembed.predict.compare import (
    HeldOut,
    HeldOutPredictions,
    macro_auroc_ci,
    neighbour_lift,
    paired_difference,
    wins_ties_losses,
)
from ehrembed.predict.metrics import auroc


def _store(rng: np.random.Generator) -> HeldOutPredictions:
    """Two tasks, 200 patients with two rows each; 'good' separates the classes, 'noise' does not,
    'count' in between; 'partial' only has half the rows of task a."""
    store = HeldOutPredictions()
    for task in ("a", "b"):
        groups = np.repeat(np.arange(200), 2)
        y = (rng.uniform(size=400) < 0.3).astype(np.int64)
        rows = np.arange(400)
        for encoder, signal in (("count", 1.0), ("good", 3.0), ("noise", 0.0)):
            store.held_out[(task, encoder)] = HeldOut(rows, y, groups)
            for _ in range(2):
                store.add(task, encoder, "logistic", "4", signal * y + rng.normal(size=400))
    keep = np.arange(0, 400, 2)
    store.held_out[("a", "partial")] = HeldOut(keep, store.held_out[("a", "good")].y[keep], np.arange(200))
    store.add("a", "partial", "logistic", "4", store.probabilities[("a", "good", "logistic", "4")][0][keep])
    return store


def test_paired_bootstrap_and_wins_ties_losses() -> None:
    rng = np.random.default_rng(0)
    store = _store(rng)
    held = store.held_out[("a", "good")]
    good = store.probabilities[("a", "good", "logistic", "4")]
    count = store.probabilities[("a", "count", "logistic", "4")]
    diff, ci = paired_difference(held.y, held.groups, good, count, n_bootstrap=100)
    assert diff is not None and ci is not None and 0 < ci[0] <= diff <= ci[1]
    wtl = wins_ties_losses(store, n_bootstrap=100)
    tally = {r["encoder"]: (r["wins"], r["ties"], r["losses"]) for r in wtl.iter_rows(named=True)}
    assert tally["good"] == (2, 0, 0) and tally["noise"] == (0, 0, 2)
    assert tally["partial"] == (1, 0, 0)  # compared on the rows both have, task a only


def test_macro_auroc_ci_brackets_the_point_estimate() -> None:
    store = _store(np.random.default_rng(1))
    ci = macro_auroc_ci(store, n_bootstrap=100).filter(pl.col("encoder") != "partial")
    assert set(ci.get_column("tasks").to_list()) == {1}  # 'partial' has task a only: the common tasks shrink
    full = macro_auroc_ci(
        HeldOutPredictions(
            held_out={k: v for k, v in store.held_out.items() if k[1] != "partial"},
            probabilities={k: v for k, v in store.probabilities.items() if k[1] != "partial"},
        ),
        n_bootstrap=100,
    )
    for row in full.iter_rows(named=True):
        assert row["tasks"] == 2 and row["auroc_lo"] <= row["auroc"] <= row["auroc_hi"]
    good = full.filter(pl.col("encoder") == "good").row(0, named=True)
    expected = np.mean(
        [
            np.mean(
                [auroc(store.held_out[(t, "good")].y, p) for p in store.probabilities[(t, "good", "logistic", "4")]]
            )
            for t in ("a", "b")
        ]
    )
    assert abs(good["auroc"] - expected) < 1e-12


def test_neighbour_lift() -> None:
    rng = np.random.default_rng(2)
    centre = np.zeros(8)
    centre[0] = 5.0
    y_train = (rng.uniform(size=300) < 0.2).astype(np.int64)
    train = rng.normal(size=(300, 8)) + np.outer(y_train, centre)
    y_query = np.array([1] * 20 + [0] * 20)
    queries = rng.normal(size=(40, 8)) + np.outer(y_query, centre)
    lift = neighbour_lift(train, y_train, queries, y_query, k=10)
    assert lift["queries"] == 20 and lift["lift"] is not None and lift["lift"] > 3
    flat = neighbour_lift(rng.normal(size=(300, 8)), y_train, rng.normal(size=(40, 8)), y_query, k=10)
    assert flat["lift"] is not None and flat["lift"] < 2
    assert neighbour_lift(train, y_train, queries, np.zeros(40, dtype=np.int64))["lift"] is None
