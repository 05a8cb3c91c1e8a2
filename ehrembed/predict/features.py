"""Feature matrices keyed by (subject_id, prediction_time): embedding lookups and the count baseline.

:class:`Features` is what a head trains on: a row per (subject, prediction time) and a matrix
(dense float32 for embeddings, sparse CSR for counts). :func:`embedding_features` wraps an
:class:`~ehrembed.encoders.embeddings.EmbeddingSet`; :func:`count_features` builds EHRSHOT's
count baseline: for every code recorded at or before the prediction time, and every ancestor of
it in the dataset's ontology, how often it occurred in each time bin before the prediction
(``< 1 day``, ``< 7``, ``< 30``, ``< 365``, older; static codes such as sex in their own bin), plus
age in years. Only events at or before the prediction time are counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.encoders.embeddings import PREDICTION_TIME, EmbeddingSet
from ehrembed.predict.ontology import Ontology

DEFAULT_BINS_DAYS: tuple[float, ...] = (1.0, 7.0, 30.0, 365.0)
"""Upper edges of the count baseline's time bins in days before the prediction time (older counts go last)."""

_ROW = "__row"


class FeatureError(ValueError):
    """Features are missing for some labels, or cannot be built as asked."""


@dataclass(frozen=True)
class Features:
    """``matrix[i]`` describes subject ``keys[i, subject_id]`` at ``keys[i, prediction_time]``."""

    name: str
    keys: pl.DataFrame  # subject_id (i64), prediction_time (datetime[us])
    matrix: np.ndarray | sp.csr_matrix
    columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.matrix.shape[0] != self.keys.height:
            raise FeatureError(f"{self.name}: {self.keys.height} keys but {self.matrix.shape[0]} feature rows")

    @property
    def dense(self) -> bool:
        return not sp.issparse(self.matrix)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def positions(self, subject_ids: Sequence[int] | np.ndarray, times: Sequence[object] | np.ndarray) -> np.ndarray:
        """Row of each (subject, time); -1 where these features have none."""
        wanted = pl.DataFrame(
            {
                s.SUBJECT_ID: np.asarray(subject_ids, dtype=np.int64),
                PREDICTION_TIME: np.asarray(times, dtype="datetime64[us]"),
            }
        ).with_row_index("__want")
        table = (
            self.keys.select(s.SUBJECT_ID, PREDICTION_TIME)
            .with_row_index(_ROW)
            .unique(subset=[s.SUBJECT_ID, PREDICTION_TIME], keep="last")
        )
        joined = wanted.join(table, on=[s.SUBJECT_ID, PREDICTION_TIME], how="left").sort("__want")
        return joined.get_column(_ROW).fill_null(-1).cast(pl.Int64).to_numpy()

    def take(self, positions: np.ndarray) -> np.ndarray | sp.csr_matrix:
        if (positions < 0).any():
            raise FeatureError(f"{self.name}: {(positions < 0).sum()} requested rows have no features")
        return self.matrix[positions]


def embedding_features(name: str, embeddings: EmbeddingSet) -> Features:
    keys = pl.DataFrame(
        {
            s.SUBJECT_ID: embeddings.subject_ids.astype(np.int64),
            PREDICTION_TIME: embeddings.as_of.astype("datetime64[us]"),
        }
    )
    return Features(name, keys, np.asarray(embeddings.vectors, dtype=np.float32))


def _bin_labels(bins: Sequence[float]) -> list[str]:
    edges = [0.0, *bins]
    names = [f"<{edges[i + 1]:g}d" for i in range(len(bins))]
    return [*names, f">={edges[-1]:g}d"]


def count_features(
    dataset: MedsDataset,
    keys: pl.DataFrame,
    *,
    ontology: Ontology | None = None,
    bins_days: Sequence[float] = DEFAULT_BINS_DAYS,
    expand_ontology: bool = True,
    min_rows: int = 5,
    name: str = "count",
) -> Features:
    """The count baseline for each (subject_id, prediction_time) row of ``keys``.

    Columns are ``{code}@{bin}`` for every code the dataset records (and, with ``expand_ontology``,
    every ancestor concept) plus ``age_years``. Columns present in fewer than ``min_rows`` rows are
    dropped, and so are ancestor columns that copy another column (an ancestor whose only recorded
    descendant is one code): the layout depends on the rows, never on their labels.
    """
    if list(bins_days) != sorted(bins_days) or any(b <= 0 for b in bins_days):
        raise FeatureError(f"count bins must be increasing positive day counts, got {list(bins_days)}")
    ontology = ontology or Ontology.from_dataset(dataset)
    keys = keys.select(pl.col(s.SUBJECT_ID).cast(pl.Int64), pl.col(PREDICTION_TIME).cast(pl.Datetime("us")))
    codes = sorted(ontology.codes)
    expansion: dict[str, list[str]] = {c: [c, *(ontology.ancestors(c) if expand_ontology else [])] for c in codes}
    # Recorded codes first, then ancestors: of two identical columns the specific code is kept.
    feature_codes = codes + sorted({f for fs in expansion.values() for f in fs} - set(codes))
    bin_names = [*_bin_labels(bins_days), "static"]
    code_index = {c: i for i, c in enumerate(feature_codes)}
    n_bins = len(bin_names)
    columns = (*tuple(f"{c}@{b}" for c in feature_codes for b in bin_names), "age_years")

    # (code, feature) pairs as a small frame to explode codes into their ontology features.
    pairs = pl.DataFrame(
        {
            s.CODE: [c for c in codes for _ in expansion[c]],
            "__feature": [code_index[f] for c in codes for f in expansion[c]],
        },
        schema={s.CODE: pl.String, "__feature": pl.Int64},
    )
    rows = keys.with_row_index(_ROW)
    subjects = rows.get_column(s.SUBJECT_ID).unique()
    events = (
        dataset.scan()
        .filter(pl.col(s.SUBJECT_ID).is_in(subjects.implode()))
        .select(s.SUBJECT_ID, s.TIME, s.CODE)
        .collect()
    )
    joined = events.join(rows, on=s.SUBJECT_ID, how="inner").filter(
        pl.col(s.TIME).is_null() | (pl.col(s.TIME) <= pl.col(PREDICTION_TIME))
    )
    days = (pl.col(PREDICTION_TIME) - pl.col(s.TIME)).dt.total_microseconds() / 86_400e6
    bin_expr: Any = pl.when(pl.col(s.TIME).is_null()).then(pl.lit(n_bins - 1))
    for i, edge in enumerate(bins_days):
        bin_expr = bin_expr.when(days < edge).then(pl.lit(i))
    joined = joined.with_columns(bin_expr.otherwise(pl.lit(len(bins_days))).cast(pl.Int64).alias("__bin"))
    counts = joined.join(pairs, on=s.CODE, how="inner").group_by(_ROW, "__feature", "__bin").agg(pl.len().alias("__n"))
    row_idx = counts.get_column(_ROW).cast(pl.Int64).to_numpy()
    col_idx = counts.get_column("__feature").to_numpy() * n_bins + counts.get_column("__bin").to_numpy()
    values = counts.get_column("__n").cast(pl.Float32).to_numpy()

    births = (
        events.filter(pl.col(s.CODE) == s.BIRTH_CODE).group_by(s.SUBJECT_ID).agg(pl.col(s.TIME).min().alias("__birth"))
    )
    ages = (
        rows.join(births, on=s.SUBJECT_ID, how="left")
        .sort(_ROW)
        .select(((pl.col(PREDICTION_TIME) - pl.col("__birth")).dt.total_days() / 365.25).fill_null(-1.0))
        .to_series()
        .to_numpy()
        .astype(np.float32)
    )
    n_rows, n_cols = keys.height, len(columns)
    age_col = np.full(n_rows, n_cols - 1, dtype=np.int64)
    matrix = sp.csr_matrix(
        (
            np.concatenate([values, ages]),
            (np.concatenate([row_idx, np.arange(n_rows)]), np.concatenate([col_idx, age_col])),
        ),
        shape=(n_rows, n_cols),
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    keep = _informative_columns(matrix, min_rows, protected=len(codes) * n_bins)
    keep[-1] = True  # age
    return Features(name, keys, matrix[:, np.flatnonzero(keep)].tocsr(), tuple(np.asarray(columns)[keep].tolist()))


def _informative_columns(matrix: sp.csr_matrix, min_rows: int, protected: int) -> np.ndarray:
    """Columns with at least ``min_rows`` non-zero rows; of the rest (ancestor columns, from ``protected`` on),
    those identical to an earlier column are dropped too."""
    csc = matrix.tocsc()
    csc.sort_indices()
    keep = np.diff(csc.indptr) >= max(1, min_rows)
    seen: set[bytes] = set()
    for j in np.flatnonzero(keep):
        lo, hi = csc.indptr[j], csc.indptr[j + 1]
        fingerprint = csc.indices[lo:hi].tobytes() + b"|" + csc.data[lo:hi].tobytes()
        if fingerprint in seen and j >= protected:
            keep[j] = False
        else:
            seen.add(fingerprint)
    return keep
