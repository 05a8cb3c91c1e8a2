"""What distillation trains on, checked: texts beside teacher vectors, label matrices, the validation rows.

Teacher vectors are ``(n, dim)`` float arrays beside ``n`` non-empty texts; labels are ``(n,)`` or ``(n, tasks)``
with NaN for a missing label. Without validation rows, ``config.val_fraction`` of the train rows is split
off (seeded), labels following their rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ehrembed.distill.config import DistillConfig, DistillError


def _check_pair(texts: Sequence[str], vectors: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[0] != len(texts):
        raise DistillError(f"{what}: {len(texts)} texts but teacher vectors of shape {arr.shape}")
    if len(texts) == 0:
        raise DistillError(f"{what}: no records")
    if not np.isfinite(arr).all():
        raise DistillError(f"{what}: teacher vectors contain NaN or infinity")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DistillError(f"{what}: record {i} has empty text")
    return arr


def _as_label_matrix(labels: np.ndarray | None, n: int, what: str) -> np.ndarray | None:
    if labels is None:
        return None
    arr = np.asarray(labels, dtype=np.float32)
    arr = arr.reshape(-1, 1) if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[0] != n:
        raise DistillError(f"{what}: expected {n} rows, got shape {np.asarray(labels).shape}")
    finite = arr[~np.isnan(arr)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise DistillError(f"{what}: values must lie in [0, 1] (NaN marks a missing label)")
    return arr


def checked_inputs(
    train_texts: Sequence[str],
    train_teacher: np.ndarray,
    val_texts: Sequence[str] | None,
    val_teacher: np.ndarray | None,
    hard_labels: np.ndarray | None,
    soft_labels: np.ndarray | None,
    config: DistillConfig,
) -> tuple[list[str], np.ndarray, list[str], np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Texts, teacher vectors and label matrices checked against each other (validation split off train
    when none is given)."""
    texts = list(train_texts)
    teacher = _check_pair(texts, train_teacher, "train")
    hard = _as_label_matrix(hard_labels, len(texts), "hard_labels")
    soft = _as_label_matrix(soft_labels, len(texts), "soft_labels")
    if (val_texts is None) != (val_teacher is None):
        raise DistillError("give both val_texts and val_teacher, or neither (then val_fraction splits train)")
    if val_texts is None or val_teacher is None:
        texts, teacher, val_texts, val_teacher, hard, soft = _split(texts, teacher, hard, soft, config)
    val = list(val_texts)
    val_vectors = _check_pair(val, val_teacher, "validation")
    if teacher.shape[1] != val_vectors.shape[1]:
        raise DistillError(f"train teacher dim {teacher.shape[1]} != validation dim {val_vectors.shape[1]}")
    if config.weight_soft_label > 0 and hard is None and soft is None:
        raise DistillError("weight_soft_label > 0 needs hard_labels and/or soft_labels (teacher probabilities)")
    if hard is not None and soft is not None and hard.shape != soft.shape:
        raise DistillError(f"hard labels {hard.shape} and soft labels {soft.shape} differ in shape")
    return texts, teacher, val, val_vectors, hard, soft


def _split(
    texts: list[str],
    teacher: np.ndarray,
    hard: np.ndarray | None,
    soft: np.ndarray | None,
    config: DistillConfig,
) -> tuple[list[str], np.ndarray, list[str], np.ndarray, np.ndarray | None, np.ndarray | None]:
    n = len(texts)
    n_val = max(1, round(n * config.val_fraction))
    if n - n_val < 1:
        raise DistillError(f"{n} records are too few to hold out a validation set")
    order = np.random.default_rng(config.seed).permutation(n)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return (
        [texts[i] for i in train_idx],
        teacher[train_idx],
        [texts[i] for i in val_idx],
        teacher[val_idx],
        None if hard is None else hard[train_idx],
        None if soft is None else soft[train_idx],
    )
