"""Stable, hash-based patient-level splits (femr style).

A subject's split depends only on its id and a salt, never on which other subjects are present,
so adding patients to a dataset never moves an existing patient between train and held_out.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.errors import InputError

DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
DEFAULT_SALT = "ehrembed-v1"


def split_fraction(subject_id: int, salt: str = DEFAULT_SALT) -> float:
    """A uniform number in [0, 1) fixed by (salt, subject_id)."""
    digest = hashlib.sha256(f"{salt}:{int(subject_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    subject_ids: np.ndarray | list[int],
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    salt: str = DEFAULT_SALT,
) -> pl.DataFrame:
    """Frame of (subject_id, split) with train / tuning / held_out in the given proportions."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise InputError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    ids = [int(i) for i in subject_ids]
    u = np.array([split_fraction(i, salt) for i in ids], dtype=np.float64)
    train_cut, tuning_cut = fractions[0], fractions[0] + fractions[1]
    names = np.where(
        u < train_cut,
        s.Split.TRAIN.value,
        np.where(u < tuning_cut, s.Split.TUNING.value, s.Split.HELD_OUT.value),
    )
    return pl.DataFrame(
        {s.SUBJECT_ID: ids, s.SPLIT: names.tolist()}, schema={s.SUBJECT_ID: pl.Int64, s.SPLIT: pl.String}
    )
