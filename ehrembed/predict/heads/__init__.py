"""Few-shot heads: LightGBM, L2 logistic regression and kNN over FAISS, one module each.

``make_head("lightgbm")`` builds one by name; ``load_head(folder)`` reads any saved head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ehrembed.predict.heads.base import Head, HeadError, read_head_meta
from ehrembed.predict.heads.knn import KnnHead
from ehrembed.predict.heads.lgbm import LightGBMHead
from ehrembed.predict.heads.logistic import LogisticHead

HEADS: dict[str, type[Any]] = {LightGBMHead.kind: LightGBMHead, LogisticHead.kind: LogisticHead, KnnHead.kind: KnnHead}
HEAD_NAMES: tuple[str, ...] = tuple(HEADS)


def make_head(name: str, **kwargs: Any) -> Head:
    """A new, unfitted head of the named type (lightgbm, logistic or knn)."""
    if name not in HEADS:
        raise HeadError(f"unknown head {name!r}; choose one of {', '.join(HEAD_NAMES)}")
    head: Head = HEADS[name](**kwargs)
    return head


def load_head(path: Path | str) -> Head:
    """A fitted head from its folder, whatever its type."""
    kind = read_head_meta(path).get("kind")
    if kind not in HEADS:
        raise HeadError(f"{path}: unknown head type {kind!r}")
    head: Head = HEADS[kind].load(path)
    return head


__all__ = [
    "HEADS",
    "HEAD_NAMES",
    "Head",
    "HeadError",
    "KnnHead",
    "LightGBMHead",
    "LogisticHead",
    "load_head",
    "make_head",
]
