"""EHRSHOT's few-shot protocol: k positives and k negatives, 5 replicates, smaller k nested in larger.

For each replicate the positives and the negatives of a split are shuffled once (one example per
patient first, so a few-shot sample spreads over patients); the k-shot sample is the first k of
each, so every smaller k is a subset of every larger one. ``"all"`` is the whole split. The same
is done on the tuning split for hyperparameter choice, and the held-out split is always scored
whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ehrembed.errors import InputError

ALL = "all"
EHRSHOT_KS: tuple[int | str, ...] = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, ALL)
KValue = int | str


def parse_ks(values: Sequence[str | int]) -> tuple[KValue, ...]:
    """``["1", "4", "all"]`` → ``(1, 4, "all")``, validated, sorted, unique."""
    out: list[KValue] = []
    for value in values:
        text = str(value).strip().lower()
        if text == ALL:
            out.append(ALL)
            continue
        try:
            k = int(text)
        except ValueError:
            raise InputError(f"k must be a positive integer or 'all', got {value!r}") from None
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        out.append(k)
    numbers = sorted({k for k in out if isinstance(k, int)})
    return (*numbers, *((ALL,) if ALL in out else ()))


def _order(indices: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of ``indices`` in which each group's first example comes before any second one."""
    shuffled = indices[rng.permutation(len(indices))]
    seen: dict[int, int] = {}
    rounds = np.empty(len(shuffled), dtype=np.int64)
    for i, g in enumerate(groups[shuffled].tolist()):
        rounds[i] = seen.get(g, 0)
        seen[g] = rounds[i] + 1
    return shuffled[np.argsort(rounds, kind="stable")]


def replicate_orders(
    y: np.ndarray, groups: np.ndarray, *, replicates: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per replicate, (positive order, negative order) over the row indices of one split."""
    y = np.asarray(y).astype(bool)
    groups = np.asarray(groups)
    positives, negatives = np.flatnonzero(y), np.flatnonzero(~y)
    out = []
    for r in range(replicates):
        rng = np.random.default_rng([seed, r])
        out.append((_order(positives, groups, rng), _order(negatives, groups, rng)))
    return out


def take_k(order: tuple[np.ndarray, np.ndarray], k: KValue) -> np.ndarray | None:
    """The k-shot sample (k of each class, nested), all rows for ``"all"``, or None when a class has fewer than k."""
    positives, negatives = order
    if k == ALL:
        return np.sort(np.concatenate([positives, negatives]))
    assert isinstance(k, int)
    if len(positives) < k or len(negatives) < k:
        return None
    return np.sort(np.concatenate([positives[:k], negatives[:k]]))
