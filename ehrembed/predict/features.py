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

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.encoders.embeddings import PREDICTION_TIME, EmbeddingSet
from ehrembed.errors import InputError
from ehrembed.predict.ontology import Ontology

DEFAULT_BINS_DAYS: tuple[float, ...] = (1.0, 7.0, 30.0, 365.0)
"""Upper edges of the count baseline's time bins in days before the prediction time (older counts go last)."""

_ROW = "__row"
FUSION_PREFIX = "count+"
"""``count+NAME``: the count features beside encoder NAME's vectors (benchmark encoders, API heads)."""
DEFAULT_FUSION_COMPONENTS = 8
"""Principal components of an encoder's vectors that ``count+NAME`` puts beside the counts."""

DEFAULT_CHUNK_ROWS = 4096
"""Prediction times per count-feature chunk: bounds the working memory whatever the labels per patient."""


class FeatureError(InputError):
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


@dataclass(frozen=True)
class DenseBlock:
    """How an encoder's vectors sit beside the counts in ``count+NAME``: centred and projected on their
    first principal components (``basis`` None: as they are), then scaled so the rows have the median L2
    norm of the log-transformed count rows. Fitted without labels, on the train rows only."""

    scale: float
    mean: np.ndarray | None = None
    basis: np.ndarray | None = None

    @classmethod
    def fit(cls, counts: sp.csr_matrix, vectors: np.ndarray, components: int | None) -> DenseBlock:
        vectors = np.asarray(vectors, dtype=np.float64)
        mean = basis = None
        if components is not None and len(vectors) >= 2:
            mean = vectors.mean(axis=0)
            basis = np.linalg.svd(vectors - mean, full_matrices=False)[2][:components]
        projected = cls(1.0, mean, basis).project(vectors)
        logged = sp.csr_matrix(counts, dtype=np.float64, copy=True)
        logged.data = np.log1p(np.maximum(logged.data, 0.0))
        norms = np.sqrt(np.asarray(logged.multiply(logged).sum(axis=1)).ravel())
        target = float(np.median(norms)) if len(norms) else 1.0
        current = float(np.median(np.linalg.norm(projected, axis=1))) if len(projected) else 1.0
        return cls(target / current if current > 0 and target > 0 else 1.0, mean, basis)

    def project(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float64)
        if self.mean is None or self.basis is None:
            return vectors * self.scale
        return ((vectors - self.mean) @ self.basis.T) * self.scale

    def fuse(self, counts: sp.csr_matrix, vectors: np.ndarray) -> sp.csr_matrix:
        """The count rows with this block beside them (one row per row of both)."""
        block = sp.csr_matrix(self.project(vectors).astype(np.float32))
        return sp.hstack([sp.csr_matrix(counts, dtype=np.float32), block], format="csr", dtype=np.float32)

    def labels(self, name: str, dim: int) -> list[str]:
        if self.basis is None:
            return [f"{name}[{i}]" for i in range(dim)]
        return [f"{name}:pc{i + 1}" for i in range(self.basis.shape[0])]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The block as plain arrays (saved as .npy beside a fitted head; no pickle)."""
        out = {"scale": np.asarray([self.scale])}
        if self.mean is not None and self.basis is not None:
            out |= {"mean": self.mean, "basis": self.basis}
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> DenseBlock:
        return cls(float(arrays["scale"][0]), arrays.get("mean"), arrays.get("basis"))


def fused_features(
    counts: Features,
    dense: Features,
    name: str,
    *,
    components: int | None = DEFAULT_FUSION_COMPONENTS,
    fit_subjects: np.ndarray | None = None,
) -> Features:
    """Count features beside an encoder's vectors (``count+NAME``), on the rows both have.

    The dense block (:class:`DenseBlock`) is fitted on the rows of ``fit_subjects`` (the train split;
    default every row) without labels. A few principal components beside thousands of count columns
    add what the vectors know without drowning the counts in hundreds of noisy columns (a head given
    all 384 dimensions did worse than counts alone on Eunomia's tuning split); the scale keeps either
    block from swamping the other. The count block is as it is (heads transform it as they transform
    counts), and each row's features come from that row's own record only.
    """
    if not dense.dense:
        raise FeatureError(f"{name}: {dense.name} features are sparse; fuse counts with an encoder's vectors")
    if components is not None and components < 1:
        raise FeatureError(f"{name}: components must be at least 1, got {components}")
    positions = dense.positions(
        counts.keys.get_column(s.SUBJECT_ID).to_numpy(), counts.keys.get_column(PREDICTION_TIME).to_numpy()
    )
    rows = np.flatnonzero(positions >= 0)
    keys = counts.keys[rows]
    count_block = sp.csr_matrix(counts.matrix[rows], dtype=np.float32)
    vectors = np.asarray(dense.matrix, dtype=np.float64)[positions[rows]]
    fit = np.ones(len(rows), dtype=bool)
    if fit_subjects is not None:
        fit = keys.get_column(s.SUBJECT_ID).is_in(np.asarray(fit_subjects).tolist()).to_numpy()
        if fit.sum() < 2:
            fit[:] = True
    block = DenseBlock.fit(count_block[np.flatnonzero(fit)], vectors[fit], components)
    columns = (*counts.columns, *block.labels(dense.name, dense.dim)) if counts.columns is not None else None
    return Features(name, keys, block.fuse(count_block, vectors), columns)


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
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    columns: Sequence[str] | None = None,
) -> Features:
    """The count baseline for each (subject_id, prediction_time) row of ``keys``.

    Columns are ``{code}@{bin}`` for every code the dataset records (and, with ``expand_ontology``,
    every ancestor concept) plus ``age_years``. Columns present in fewer than ``min_rows`` rows are
    dropped, and so are ancestor columns that copy another column (an ancestor whose only recorded
    descendant is one code): the layout depends on the rows, never on their labels. With ``columns``
    (the layout of features made earlier, e.g. a fitted head's) exactly those columns come back, in
    that order; one this dataset cannot have is all zeros.

    Streaming: rows are taken ``chunk_rows`` at a time (a patient's rows may span chunks). Within a
    chunk, each (row, recorded code) pair is counted per bin from the code's sorted event times
    (as-of joins on cumulative counts), never by pairing every event with every prediction time,
    and ontology ancestors are added once per code by a sparse product. Memory therefore grows with
    the output and the chunk, not with labels times events per patient.
    """
    if list(bins_days) != sorted(bins_days) or any(b <= 0 for b in bins_days):
        raise FeatureError(f"count bins must be increasing positive day counts, got {list(bins_days)}")
    if chunk_rows < 1:
        raise FeatureError(f"chunk_rows must be at least 1, got {chunk_rows}")
    ontology = ontology or Ontology.from_dataset(dataset)
    keys = keys.select(pl.col(s.SUBJECT_ID).cast(pl.Int64), pl.col(PREDICTION_TIME).cast(pl.Datetime("us")))
    codes = sorted(ontology.codes)
    expansion: dict[str, list[str]] = {c: [c, *(ontology.ancestors(c) if expand_ontology else [])] for c in codes}
    # Recorded codes first, then ancestors: of two identical columns the specific code is kept.
    feature_codes = codes + sorted({f for fs in expansion.values() for f in fs} - set(codes))
    bin_names = [*_bin_labels(bins_days), "static"]
    feature_index = {c: i for i, c in enumerate(feature_codes)}
    n_bins = len(bin_names)
    layout = (*tuple(f"{c}@{b}" for c in feature_codes for b in bin_names), "age_years")
    n_rows, n_cols = keys.height, len(layout)
    # code -> its features (itself and its ancestors), once per code, as a 0/1 matrix.
    expand = sp.csr_matrix(
        (
            np.ones(sum(len(expansion[c]) for c in codes), dtype=np.float32),
            (
                np.repeat(np.arange(len(codes)), [len(expansion[c]) for c in codes]),
                [feature_index[f] for c in codes for f in expansion[c]],
            ),
        ),
        shape=(len(codes), len(feature_codes)),
    )
    code_ids = pl.DataFrame({s.CODE: codes, "__code": np.arange(len(codes), dtype=np.int64)})

    accumulator = _ColumnAccumulator(n_cols) if columns is None else None  # a given layout needs no filter
    parts: list[sp.csr_matrix] = []
    for start in range(0, n_rows, chunk_rows):
        chunk = keys.slice(start, chunk_rows)
        block = _count_chunk(dataset, chunk, code_ids, expand, bins_days, n_cols)
        if accumulator is not None:
            accumulator.add(block, start)
        parts.append(block)
    if accumulator is None:
        assert columns is not None
        return Features(name, keys, _select_columns(parts, layout, columns, n_rows), tuple(columns))
    keep = accumulator.keep(min_rows, protected=len(codes) * n_bins)
    keep[-1] = True  # age
    kept = np.flatnonzero(keep)
    matrix = _stack_columns(parts, kept, n_rows)
    return Features(name, keys, matrix, tuple(np.asarray(layout)[keep].tolist()))


def _select_columns(
    parts: list[sp.csr_matrix], layout: Sequence[str], wanted: Sequence[str], n_rows: int
) -> sp.csr_matrix:
    """The ``wanted`` columns of the full-width chunks, in that order (zeros where the layout lacks one)."""
    index = {column: i for i, column in enumerate(layout)}
    present = [(j, index[c]) for j, c in enumerate(wanted) if c in index]
    stacked = _stack_columns(parts, np.asarray([i for _, i in present], dtype=np.int64), n_rows)
    place = sp.csr_matrix(
        (np.ones(len(present), dtype=np.float32), (np.arange(len(present)), [j for j, _ in present])),
        shape=(len(present), len(wanted)),
    )
    return sp.csr_matrix(stacked @ place, dtype=np.float32)


def _count_chunk(
    dataset: MedsDataset,
    rows: pl.DataFrame,
    code_ids: pl.DataFrame,
    expand: sp.csr_matrix,
    bins_days: Sequence[float],
    n_cols: int,
) -> sp.csr_matrix:
    """Full-width count rows (codes and ancestors x bins, then age) for one chunk of ``keys``."""
    n_codes, n_features = expand.shape
    n_bins = len(bins_days) + 2
    rows = rows.with_row_index(_ROW)
    subjects = rows.get_column(s.SUBJECT_ID).unique()
    events = (
        dataset.scan()
        .filter(pl.col(s.SUBJECT_ID).is_in(subjects.implode()))
        .select(s.SUBJECT_ID, s.TIME, s.CODE)
        .collect()
        .join(code_ids, on=s.CODE, how="inner")
    )
    last = rows.get_column(PREDICTION_TIME).max()
    static = events.filter(pl.col(s.TIME).is_null())
    dated = events.filter(pl.col(s.TIME).is_not_null() & (pl.col(s.TIME) <= last))
    # Per (subject, code, time): how many events up to and including that time (ties collapsed).
    dated = (
        dated.group_by(s.SUBJECT_ID, "__code", s.TIME)
        .agg(pl.len().alias("__n"))
        .sort(s.SUBJECT_ID, "__code", s.TIME)
        .with_columns(pl.col("__n").cum_sum().over(s.SUBJECT_ID, "__code").alias("__cum"))
    )
    # The (row, code) pairs to count: codes the subject recorded by the row's time.
    first = dated.group_by(s.SUBJECT_ID, "__code").agg(pl.col(s.TIME).min().alias("__first"))
    pairs = (
        rows.join(first, on=s.SUBJECT_ID, how="inner")
        .filter(pl.col("__first") <= pl.col(PREDICTION_TIME))
        .select(_ROW, s.SUBJECT_ID, "__code", PREDICTION_TIME)
    )
    # N(x) = events of the code at or before x; bin i holds N(t - edge[i-1]) - N(t - edge[i]).
    edges = [0.0, *bins_days]
    cumulative = []
    lookup = dated.select(s.SUBJECT_ID, "__code", s.TIME, "__cum")
    for edge in edges:
        query = pairs.select(
            _ROW,
            s.SUBJECT_ID,
            "__code",
            (pl.col(PREDICTION_TIME) - pl.duration(microseconds=int(edge * 86_400e6))).alias(s.TIME),
        ).with_row_index("__pair")
        found = query.sort(s.TIME).join_asof(
            lookup.sort(s.TIME), on=s.TIME, by=[s.SUBJECT_ID, "__code"], strategy="backward", check_sortedness=False
        )
        cumulative.append(found.sort("__pair").get_column("__cum").fill_null(0).to_numpy().astype(np.float32))
    row_idx = pairs.get_column(_ROW).cast(pl.Int64).to_numpy()
    code_idx = pairs.get_column("__code").to_numpy()
    n_chunk = rows.height
    blocks = []
    for b in range(len(edges)):
        value = cumulative[b] - cumulative[b + 1] if b + 1 < len(edges) else cumulative[b]
        nz = value > 0
        blocks.append(sp.csr_matrix((value[nz], (row_idx[nz], code_idx[nz])), shape=(n_chunk, n_codes)))
    static_rows = rows.join(static.group_by(s.SUBJECT_ID, "__code").agg(pl.len().alias("__n")), on=s.SUBJECT_ID)
    blocks.append(
        sp.csr_matrix(
            (
                static_rows.get_column("__n").cast(pl.Float32).to_numpy(),
                (static_rows.get_column(_ROW).cast(pl.Int64).to_numpy(), static_rows.get_column("__code").to_numpy()),
            ),
            shape=(n_chunk, n_codes),
        )
    )
    # Ancestors once per code: (rows x codes) @ (codes x features), then bins interleaved per feature.
    expanded = [(block @ expand).tocoo() for block in blocks]
    births = events.filter(pl.col(s.CODE) == s.BIRTH_CODE).group_by(s.SUBJECT_ID).agg(pl.col(s.TIME).min().alias("__b"))
    ages = (
        rows.join(births, on=s.SUBJECT_ID, how="left")
        .sort(_ROW)
        .select(((pl.col(PREDICTION_TIME) - pl.col("__b")).dt.total_days() / 365.25).fill_null(-1.0))
        .to_series()
        .to_numpy()
        .astype(np.float32)
    )
    matrix = sp.csr_matrix(
        (
            np.concatenate([*(e.data for e in expanded), ages]),
            (
                np.concatenate([*(e.row for e in expanded), np.arange(n_chunk)]),
                np.concatenate(
                    [
                        *(e.col.astype(np.int64) * n_bins + b for b, e in enumerate(expanded)),
                        np.full(n_chunk, n_cols - 1),
                    ]
                ),
            ),
        ),
        shape=(n_chunk, n_cols),
        dtype=np.float32,
    )
    matrix.sort_indices()
    assert n_features * n_bins + 1 == n_cols
    return matrix


class _ColumnAccumulator:
    """Per-column non-zero row counts and content digests over row chunks, for the column filter."""

    def __init__(self, n_cols: int) -> None:
        self.nnz = np.zeros(n_cols, dtype=np.int64)
        self.digests: dict[int, Any] = {}

    def add(self, block: sp.csr_matrix, offset: int) -> None:
        csc = block.tocsc()
        csc.sort_indices()
        counts = np.diff(csc.indptr)
        self.nnz += counts
        rows = (csc.indices.astype(np.int64) + offset).tobytes()
        data = csc.data.tobytes()
        for j in np.flatnonzero(counts):
            lo, hi = int(csc.indptr[j]), int(csc.indptr[j + 1])
            digest = self.digests.get(int(j))
            if digest is None:
                digest = self.digests[int(j)] = hashlib.blake2b(digest_size=16)
            digest.update(rows[lo * 8 : hi * 8])
            digest.update(b"|")
            digest.update(data[lo * 4 : hi * 4])
            digest.update(b";")

    def keep(self, min_rows: int, protected: int) -> np.ndarray:
        """Columns with at least ``min_rows`` non-zero rows; of the rest (ancestor columns, from ``protected``
        on), those identical to an earlier kept column are dropped too."""
        keep = self.nnz >= max(1, min_rows)
        seen: set[bytes] = set()
        for j in np.flatnonzero(keep):
            fingerprint = self.digests[int(j)].digest()
            if fingerprint in seen and j >= protected:
                keep[j] = False
            else:
                seen.add(fingerprint)
        return keep


def _stack_columns(parts: list[sp.csr_matrix], kept: np.ndarray, n_rows: int) -> sp.csr_matrix:
    """The chunks' kept columns stacked into one CSR matrix, each chunk freed once copied."""
    sliced: list[sp.csr_matrix] = []
    while parts:
        block = parts.pop(0)
        sliced.append(block[:, kept].tocsr())
        del block
    if not sliced:
        return sp.csr_matrix((n_rows, len(kept)), dtype=np.float32)
    return sp.vstack(sliced, format="csr", dtype=np.float32)
