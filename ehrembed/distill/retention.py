"""How much of the teacher a distilled student keeps, measured on held-out patients.

Two numbers: the teacher–student cosine of each record's vectors (mean and median; requires the
student's projected output, i.e. the same dimension as the teacher), and overlap@k — for each
record, the share of its k nearest teacher neighbours (exact cosine, the record itself excluded)
that are also among its k nearest student neighbours, averaged over records. The second one is
what similar-patient search feels. An undistilled student (e.g. the base model with its fresh
projection) can be passed for comparison.

Head quality (AUROC of few-shot heads on teacher vs student vectors) is the other side of
retention; it comes with the prediction stage (``ehrembed.predict``), which owns tasks and labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ehrembed.errors import InputError

DEFAULT_CHUNK = 1024


class RetentionError(InputError):
    """The arrays cannot be compared as asked."""


def _as_matrix(vectors: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise RetentionError(f"{what} vectors must be 2-D (n, dim), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise RetentionError(f"{what} vectors contain NaN or infinity")
    return arr


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def pairwise_cosine(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """Row-wise cosine between ``teacher[i]`` and ``student[i]``, float64 ``(n,)``."""
    t = _as_matrix(teacher, "teacher")
    s = _as_matrix(student, "student")
    if t.shape[0] != s.shape[0]:
        raise RetentionError(f"teacher has {t.shape[0]} rows but student {s.shape[0]}; rows must be the same records")
    if t.shape[1] != s.shape[1]:
        raise RetentionError(
            f"teacher dim {t.shape[1]} != student dim {s.shape[1]}: teacher–student cosine needs the student's "
            "projected output (the Dense projection to the teacher's dimension), not its bare embedding"
        )
    return np.sum(_unit(t).astype(np.float64) * _unit(s).astype(np.float64), axis=1)


def knn_cosine(vectors: np.ndarray, k: int, *, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Indices ``(n, k)`` of each row's k most cosine-similar other rows (self excluded), exact.

    Works ``chunk`` query rows at a time, so memory is ``chunk × n`` floats, not ``n × n``; the
    result is deterministic for a given input (exact ties are rare with real vectors).
    """
    x = _unit(_as_matrix(vectors, "input"))
    n = x.shape[0]
    if not 1 <= k < n:
        raise RetentionError(f"k must lie in [1, {n - 1}] for {n} records, got {k}")
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sims = x[start:stop] @ x.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # k <= n - 1, so k - 1 is a valid kth
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.take_along_axis(top, np.argsort(-top_sims, axis=1, kind="stable"), axis=1)[:, :k]
        out[start:stop] = order
    return out


def overlap_at_k(teacher: np.ndarray, student: np.ndarray, k: int = 10, *, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Per record: ``|kNN_teacher ∩ kNN_student| / k`` (self excluded, exact cosine), float64 ``(n,)``.

    The two arrays need the same rows but may have different dimensions.
    """
    t = _as_matrix(teacher, "teacher")
    s = _as_matrix(student, "student")
    if t.shape[0] != s.shape[0]:
        raise RetentionError(f"teacher has {t.shape[0]} rows but student {s.shape[0]}; rows must be the same records")
    nt = knn_cosine(t, k, chunk=chunk)
    ns = knn_cosine(s, k, chunk=chunk)
    hits = np.array([len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(nt, ns, strict=True)])
    return hits.astype(np.float64) / k


def _summary(teacher: np.ndarray, student: np.ndarray, k: int, chunk: int) -> dict[str, float]:
    cos = pairwise_cosine(teacher, student)
    overlap = overlap_at_k(teacher, student, k, chunk=chunk)
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_median": float(np.median(cos)),
        "cosine_min": float(cos.min()),
        f"overlap@{k}": float(overlap.mean()),
        f"overlap@{k}_median": float(np.median(overlap)),
    }


def retention_report(
    teacher: np.ndarray,
    student: np.ndarray,
    k: int = 10,
    *,
    undistilled: np.ndarray | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> dict[str, Any]:
    """Teacher–student cosine and overlap@k on the same held-out records (rows aligned).

    ``student`` (and ``undistilled``, if given) must be projected outputs with the teacher's
    dimension. Returns ``{"n", "k", "dim", "student": {...}, "undistilled": {...} | None}`` where each
    block has ``cosine_mean``, ``cosine_median``, ``cosine_min``, ``overlap@k`` and its median.
    """
    t = _as_matrix(teacher, "teacher")
    report: dict[str, Any] = {
        "n": int(t.shape[0]),
        "k": k,
        "dim": int(t.shape[1]),
        "student": _summary(t, student, k, chunk),
        "undistilled": None,
    }
    if undistilled is not None:
        report["undistilled"] = _summary(t, undistilled, k, chunk)
    return report
