"""Soft-label (CKD-EHR) inputs: labels aligned with teacher rows, cross-fitted teacher probabilities."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from ehrembed.distill.config import DistillError
from ehrembed.distill.soft_labels import cross_fitted_probabilities, label_matrix, task_labels
from ehrembed.encoders.base import EncoderSpec
from ehrembed.encoders.embeddings import EmbeddingSet

T = dt.datetime(2020, 1, 1)


def teacher(vectors: np.ndarray, ids: np.ndarray, days: np.ndarray) -> EmbeddingSet:
    spec = EncoderSpec("synthetic", "teacher", "/none", "0", "last", vectors.shape[1], 128)
    as_of = np.array([np.datetime64(T + dt.timedelta(days=int(d)), "us") for d in days])
    return EmbeddingSet(ids.astype(np.int64), as_of, vectors.astype(np.float32), spec, "v")


def labels(rows: list[tuple[int, int, str, bool]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subject_id": [r[0] for r in rows],
            "prediction_time": [T + dt.timedelta(days=r[1]) for r in rows],
            "task": [r[2] for r in rows],
            "value": [r[3] for r in rows],
        }
    )


def test_labels_land_on_their_rows_and_missing_ones_stay_nan() -> None:
    emb = teacher(np.eye(4), np.array([1, 1, 2, 3]), np.array([0, 5, 0, 0]))
    tasks, hard = label_matrix(
        emb,
        labels([(1, 5, "b", True), (2, 0, "a", False), (3, 0, "a", True), (1, 9, "a", True), (7, 0, "b", True)]),
    )
    assert tasks == ("a", "b")
    np.testing.assert_array_equal(
        hard, np.array([[np.nan, np.nan], [np.nan, 1.0], [0.0, np.nan], [1.0, np.nan]], dtype=np.float32)
    )  # (1, day 9) and subject 7 are no teacher rows: nothing lands


def test_probabilities_are_out_of_fold() -> None:
    """On pure-noise labels an in-sample head would be near perfect; cross-fitted ones are near chance."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 64))
    hard = rng.integers(0, 2, size=(200, 1)).astype(np.float32)
    soft = cross_fitted_probabilities(vectors, hard, np.arange(200))
    assert not np.isnan(soft).any()
    assert roc_auc_score(hard[:, 0], soft[:, 0]) < 0.7
    signal = vectors[:, :1] > 0  # a learnable task: the probabilities carry it
    soft = cross_fitted_probabilities(vectors, signal.astype(np.float32), np.arange(200))
    assert roc_auc_score(signal[:, 0], soft[:, 0]) > 0.9


def test_one_patient_never_informs_its_own_probability() -> None:
    """All rows of a patient share a fold: a patient whose rows are duplicates cannot leak to itself."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, 16))
    vectors = np.repeat(base, 5, axis=0)  # every patient 5 identical rows
    hard = np.repeat(rng.integers(0, 2, size=40), 5).astype(np.float32)[:, None]
    soft = cross_fitted_probabilities(vectors, hard, np.repeat(np.arange(40), 5))
    assert roc_auc_score(hard[:, 0], soft[:, 0]) < 0.75


def test_no_label_on_a_training_row_is_an_error() -> None:
    emb = teacher(np.eye(3), np.array([1, 2, 3]), np.zeros(3))
    with pytest.raises(DistillError, match="none of the task labels"):
        task_labels(emb, labels([(1, 4, "a", True)]), np.arange(3))
    with pytest.raises(DistillError, match="columns"):
        task_labels(emb, pl.DataFrame({"subject_id": [1]}), np.arange(3))
