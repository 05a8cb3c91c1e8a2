"""Task labels for soft-label (CKD-EHR) distillation, aligned with a teacher set's rows.

Input labels are a plain frame — ``subject_id`` (Int64), ``prediction_time`` (Datetime), ``task``
(String), ``value`` (Boolean) — one row per (task, labelled time), the shape the benchmark's label
sets give. A teacher row is labelled for a task when its (subject_id, as_of) equals one of the
task's (subject_id, prediction_time); the result is ``(n_rows, n_tasks)`` float32 with 0/1 where
labelled and NaN elsewhere (a missing label is left out of the loss, never read as negative).

Teacher probabilities ("soft labels") come from the frozen teacher: per task, an L2 logistic
regression on the teacher vectors of the labelled rows, cross-fitted over patient folds, so no
row's probability comes from a head that saw its label (an in-sample fit would only echo the hard
labels). Rows of a task with too few labels or one class keep NaN.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.distill.config import DistillError
from ehrembed.encoders.embeddings import EmbeddingSet

LABEL_COLUMNS = (s.SUBJECT_ID, "prediction_time", "task", "value")
FOLDS = 5


@dataclass(frozen=True)
class TaskLabels:
    """Hard labels and teacher probabilities over a teacher set's rows (``(n_rows, len(tasks))``, NaN = none)."""

    tasks: tuple[str, ...]
    hard: np.ndarray
    soft: np.ndarray

    def take(self, rows: np.ndarray) -> TaskLabels:
        return TaskLabels(self.tasks, self.hard[rows], self.soft[rows])

    def summary(self) -> dict[str, dict[str, int]]:
        """Per task: labelled rows, positives, and rows with a teacher probability."""
        return {
            task: {
                "labelled": int((~np.isnan(self.hard[:, j])).sum()),
                "positives": int(np.nansum(self.hard[:, j])),
                "with_probability": int((~np.isnan(self.soft[:, j])).sum()),
            }
            for j, task in enumerate(self.tasks)
        }


def label_matrix(teacher: EmbeddingSet, labels: pl.DataFrame) -> tuple[tuple[str, ...], np.ndarray]:
    """The tasks (sorted) and the ``(len(teacher), tasks)`` 0/1/NaN matrix of ``labels`` on the teacher's rows."""
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise DistillError(f"task labels need the columns {', '.join(LABEL_COLUMNS)}; missing {', '.join(missing)}")
    tasks = tuple(sorted(labels.get_column("task").unique().to_list()))
    if not tasks:
        raise DistillError("soft-label distillation needs task labels; none were given")
    rows = pl.DataFrame(
        {
            s.SUBJECT_ID: np.asarray(teacher.subject_ids, dtype=np.int64),
            "prediction_time": np.asarray(teacher.as_of).astype("datetime64[us]"),
        }
    ).with_row_index("row")
    labelled = labels.select(
        pl.col(s.SUBJECT_ID).cast(pl.Int64),
        pl.col("prediction_time").cast(pl.Datetime("us")),
        pl.col("task").cast(pl.String),
        pl.col("value").cast(pl.Float32),
    ).unique(subset=[s.SUBJECT_ID, "prediction_time", "task"], keep="last")
    joined = rows.join(labelled, on=[s.SUBJECT_ID, "prediction_time"], how="inner")
    matrix = np.full((len(teacher), len(tasks)), np.nan, dtype=np.float32)
    column = {task: j for j, task in enumerate(tasks)}
    matrix[
        joined.get_column("row").to_numpy(),
        np.array([column[t] for t in joined.get_column("task").to_list()], dtype=np.int64),
    ] = joined.get_column("value").to_numpy()
    return tasks, matrix


def cross_fitted_probabilities(
    vectors: np.ndarray, hard: np.ndarray, groups: np.ndarray, *, folds: int = FOLDS, c: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Out-of-fold teacher probabilities per task (same shape as ``hard``; NaN where none can be made).

    Folds are by patient (``groups``), so a patient's rows never inform their own probability.
    """
    from sklearn.linear_model import LogisticRegression

    soft = np.full(hard.shape, np.nan, dtype=np.float32)
    for j in range(hard.shape[1]):
        rows = np.flatnonzero(~np.isnan(hard[:, j]))
        y = hard[rows, j]
        if len(rows) < 2 * folds or y.min() == y.max():
            continue
        patients = np.unique(groups[rows])
        fold_of = dict(zip(patients, np.random.default_rng(seed + j).permutation(len(patients)) % folds, strict=True))
        fold = np.array([fold_of[g] for g in groups[rows]])
        for f in range(folds):
            fit, score = fold != f, fold == f
            if not score.any() or y[fit].min() == y[fit].max():
                continue
            head = LogisticRegression(C=c, max_iter=2000, class_weight="balanced")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                head.fit(vectors[rows[fit]], y[fit])
            soft[rows[score], j] = head.predict_proba(vectors[rows[score]])[:, 1]
    return soft


def task_labels(teacher: EmbeddingSet, labels: pl.DataFrame, rows: np.ndarray, *, seed: int = 0) -> TaskLabels:
    """Hard labels and cross-fitted teacher probabilities for ``rows`` of ``teacher`` (e.g. its train rows)."""
    tasks, hard = label_matrix(teacher, labels)
    hard = hard[rows]
    if np.isnan(hard).all():
        raise DistillError(
            "none of the task labels falls on a teacher row used for training: were the labels made at the "
            "teacher's (subject, as-of) times?"
        )
    vectors = np.asarray(teacher.vectors, dtype=np.float32)[rows]
    soft = cross_fitted_probabilities(vectors, hard, np.asarray(teacher.subject_ids)[rows], seed=seed)
    return TaskLabels(tasks, hard, soft)
