"""Prediction points: the times on a subject's timeline at which pretraining asks "what happens next?".

A point is the end of a day with a dated clinical event (``23:59`` of that day, the clock time the
built-in tasks use), never the subject's last such day (nothing follows it to learn from) and never
before birth. Each subject gives at most ``per_subject`` points, chosen by a hash of (seed, subject,
day), so the choice is stable across runs and machines and long records do not dominate the loss.
Inputs are cut at the point exactly as for labels; targets look only at what comes after it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.encoders.embeddings import PREDICTION_TIME

POINT_CLOCK = dt.timedelta(hours=23, minutes=59)
"""A point's time within its day: after every event of that day, as the tasks' ``23:59``."""

END_OF_RECORD = "end_of_record"
"""Column of :func:`sample_points`: the subject's last dated event (censoring time of every target)."""

_NOT_CLINICAL = (s.BIRTH_CODE, s.VISIT_END_CODE)


def stable_hash(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """A 64-bit hash of each (a, b) pair (splitmix64 rounds): the same on every machine and library version."""

    def mix(x: np.ndarray) -> np.ndarray:
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    with np.errstate(over="ignore"):
        start = mix(np.full(len(a), seed, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        return mix(mix(start ^ a.astype(np.uint64)) ^ b.astype(np.uint64))


def record_ends(dataset: MedsDataset, subject_ids: Sequence[int] | None = None) -> pl.DataFrame:
    """subject_id, end_of_record: each subject's last dated event (death included)."""
    scan = dataset.scan().filter(pl.col(s.TIME).is_not_null())
    if subject_ids is not None:
        scan = scan.filter(pl.col(s.SUBJECT_ID).is_in(list(subject_ids)))
    return (
        scan.group_by(s.SUBJECT_ID)
        .agg(pl.col(s.TIME).max().alias(END_OF_RECORD))
        .collect()
        .select(pl.col(s.SUBJECT_ID).cast(pl.Int64), pl.col(END_OF_RECORD).cast(pl.Datetime("us")))
    )


def sample_points(
    dataset: MedsDataset, subject_ids: Sequence[int], *, per_subject: int = 8, seed: int = 0
) -> pl.DataFrame:
    """subject_id, prediction_time, end_of_record: up to ``per_subject`` points per subject, sorted.

    Candidates are the days with a clinical event (birth and visit ends do not count) strictly before
    the day of the subject's last dated event and not before birth; a subject with no such day gives none.
    """
    if per_subject < 1:
        raise ValueError(f"per_subject must be at least 1, got {per_subject}")
    events = (
        dataset.scan()
        .filter(pl.col(s.SUBJECT_ID).is_in(list(subject_ids)) & pl.col(s.TIME).is_not_null())
        .select(s.SUBJECT_ID, s.TIME, s.CODE)
        .collect()
    )
    ends = events.group_by(s.SUBJECT_ID).agg(pl.col(s.TIME).max().alias(END_OF_RECORD))
    births = events.filter(pl.col(s.CODE) == s.BIRTH_CODE).group_by(s.SUBJECT_ID).agg(pl.col(s.TIME).min().alias("__b"))
    days = (
        events.filter(~pl.col(s.CODE).is_in(_NOT_CLINICAL))
        .select(s.SUBJECT_ID, pl.col(s.TIME).dt.truncate("1d").alias("__day"))
        .unique()
        .join(ends, on=s.SUBJECT_ID)
        .join(births, on=s.SUBJECT_ID, how="left")
        .filter(
            (pl.col("__day") < pl.col(END_OF_RECORD).dt.truncate("1d"))
            & (pl.col("__b").is_null() | (pl.col("__day") >= pl.col("__b").dt.truncate("1d")))
        )
    )
    day_number = days.get_column("__day").dt.epoch("d").to_numpy().astype(np.uint64)
    rank = stable_hash(days.get_column(s.SUBJECT_ID).to_numpy().astype(np.uint64), day_number, seed)
    ranked = days.with_columns(pl.Series("__rank", rank)).with_columns(
        pl.col("__rank").rank("ordinal").over(s.SUBJECT_ID).alias("__order")
    )
    return (
        ranked.filter(pl.col("__order") <= per_subject)
        .select(
            pl.col(s.SUBJECT_ID).cast(pl.Int64),
            (pl.col("__day") + POINT_CLOCK).cast(pl.Datetime("us")).alias(PREDICTION_TIME),
            pl.col(END_OF_RECORD).cast(pl.Datetime("us")),
        )
        .sort(s.SUBJECT_ID, PREDICTION_TIME)
    )
