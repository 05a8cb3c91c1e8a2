"""Pretraining targets: which codes the prognostic model learns to anticipate, and when each next occurs.

**Selection** (:func:`select_targets`) looks at the train split only and at no task: every dated
clinical code and each of its ontology ancestors is a candidate; a candidate's patient-level
frequency ``p`` is the share of train subjects whose record has it, and candidates are ranked by the
entropy ``-p·log p - (1-p)·log(1-p)`` (CLMBR's rule: codes that split patients best come first; a
code everybody or nobody has teaches little). The top ``max_targets`` with at least ``min_subjects``
subjects are kept, in that order, frozen with the model. An ancestor concept that occurs at exactly the
same (subject, time) pairs as a target ranked before it is dropped (OMOP concepts have dozens of ancestors,
most of which only ever copy one recorded code: without this, 996 of Eunomia's 1,000 targets were such
copies of a handful of common codes); at equal rank a recorded code goes before an ancestor concept.

**Exclusion** (the leakage ablation): excluded codes and their descendants never make a target
occur — their events are removed before target times are computed, so an ancestor target (e.g.
"heart disease") no longer fires on an excluded outcome (e.g. myocardial infarction) either — and
targets that are themselves excluded are dropped.

**Times** (:func:`target_times`): for each point and target, the days from the point to the
target's next occurrence strictly after it, or, when none occurs by the end of the record, the days
to the end of the record with ``event`` false (right-censored: such a row never says "did not happen"
beyond the follow-up it has).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.encoders.embeddings import PREDICTION_TIME
from ehrembed.predict.ontology import Ontology
from ehrembed.predict.prognosis.points import END_OF_RECORD

_NOT_TARGETS = frozenset({s.BIRTH_CODE, s.VISIT_END_CODE})
_DAY_US = 86_400e6


@dataclass(frozen=True)
class Target:
    """One pretraining target: a code (or ontology concept) and how common it is among train subjects."""

    code: str
    subjects: int
    entropy: float

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "subjects": self.subjects, "entropy": round(self.entropy, 6)}


@dataclass(frozen=True)
class TargetTimes:
    """``days[i, j]``: days from point i to target j's next occurrence (``event`` true) or to the end of
    the record (``event`` false, censored). Both ``(n_points, n_targets)``."""

    days: np.ndarray
    event: np.ndarray

    def __post_init__(self) -> None:
        if self.days.shape != self.event.shape:
            raise ValueError(f"days {self.days.shape} and event {self.event.shape} differ in shape")

    def occurred_within(self, horizon_days: float) -> tuple[np.ndarray, np.ndarray]:
        """(label, known): whether each target occurs within the horizon, and whether that is known
        (it occurred in time, or the record follows the point for at least the horizon)."""
        label = self.event & (self.days <= horizon_days)
        known = label | (self.days >= horizon_days)
        return label, known


def _expansion(codes: Iterable[str], ontology: Ontology) -> pl.DataFrame:
    """code → every target name it makes occur (itself and its ancestors), one row per pair."""
    rows = [(c, t) for c in codes for t in (c, *ontology.ancestors(c))]
    return pl.DataFrame(rows, schema={s.CODE: pl.String, "__target": pl.String}, orient="row").unique()


def excluded_codes(codes: Iterable[str], ontology: Ontology) -> frozenset[str]:
    """``codes`` and every recorded code below them: what the ablation removes."""
    return ontology.expand(list(codes), include_descendants=True) | frozenset(codes)


def _dated_events(dataset: MedsDataset, subject_ids: Sequence[int] | None, exclude: frozenset[str]) -> pl.DataFrame:
    scan = dataset.scan().filter(pl.col(s.TIME).is_not_null())
    if subject_ids is not None:
        scan = scan.filter(pl.col(s.SUBJECT_ID).is_in(list(subject_ids)))
    return (
        scan.select(pl.col(s.SUBJECT_ID).cast(pl.Int64), pl.col(s.TIME).cast(pl.Datetime("us")), s.CODE)
        .filter(~pl.col(s.CODE).is_in(list(_NOT_TARGETS | exclude)))
        .collect()
    )


def select_targets(
    dataset: MedsDataset,
    subject_ids: Sequence[int],
    *,
    ontology: Ontology,
    max_targets: int = 1000,
    min_subjects: int = 10,
    exclude: frozenset[str] = frozenset(),
) -> list[Target]:
    """The top ``max_targets`` codes and ancestors by the entropy of their patient-level frequency among
    ``subject_ids`` (the train split); no task is consulted. Fewer when fewer have ``min_subjects``."""
    events = _dated_events(dataset, subject_ids, exclude)
    n = len(set(subject_ids))
    if n == 0:
        return []
    pairs = events.select(s.SUBJECT_ID, s.CODE).unique()
    expansion = _expansion(pairs.get_column(s.CODE).unique().to_list(), ontology)
    occurrences = (
        events.select(s.SUBJECT_ID, s.TIME, s.CODE)
        .unique()
        .join(expansion, on=s.CODE)
        .filter(~pl.col("__target").is_in(list(exclude)))
        .select(s.SUBJECT_ID, s.TIME, "__target")
        .unique()
    )
    per_target = (
        occurrences.sort(s.SUBJECT_ID, s.TIME)
        .group_by("__target")
        .agg(
            pl.col(s.SUBJECT_ID).n_unique().alias("__n"),
            # what the target's timeline looks like: two targets that occur at exactly the same times are one
            pl.concat_str(pl.col(s.SUBJECT_ID).cast(pl.String), pl.col(s.TIME).cast(pl.String), separator="@")
            .sort()
            .str.join("|")
            .alias("__at"),
        )
        .filter(pl.col("__n") >= min_subjects)
        .with_columns(pl.col("__at").hash(seed=0).alias("__same"))
    )
    recorded = set(pairs.get_column(s.CODE).to_list())
    out: list[Target] = []
    seen: set[int] = set()
    ranked = []
    for code, count, _at, same in per_target.iter_rows():
        p = min(count / n, 1.0)
        entropy = 0.0 if p >= 1.0 else -(p * math.log(p) + (1 - p) * math.log(1 - p))
        ranked.append((-entropy, code not in recorded, code, int(count), entropy, int(same)))
    for _neg, ancestor, code, count, entropy, same in sorted(ranked):
        if ancestor and same in seen:  # an ancestor that only copies a code kept before teaches nothing new
            continue
        seen.add(same)
        out.append(Target(code, count, entropy))
        if len(out) >= max_targets:
            break
    return out


def target_times(
    dataset: MedsDataset,
    points: pl.DataFrame,
    targets: Sequence[str],
    *,
    ontology: Ontology,
    exclude: frozenset[str] = frozenset(),
) -> TargetTimes:
    """Time to each target's next occurrence after each point (``points`` from
    :func:`~ehrembed.predict.prognosis.points.sample_points`: subject_id, prediction_time, end_of_record)."""
    n_points, n_targets = points.height, len(targets)
    index = pl.DataFrame({"__target": list(targets), "__j": np.arange(n_targets, dtype=np.int64)})
    subjects = points.get_column(s.SUBJECT_ID).unique().to_list()
    events = _dated_events(dataset, subjects, exclude)
    expansion = _expansion(events.get_column(s.CODE).unique().to_list(), ontology).join(index, on="__target")
    occurrences = (
        events.join(expansion, on=s.CODE)
        .select(s.SUBJECT_ID, "__j", s.TIME)
        .unique()
        .with_columns(pl.col(s.TIME).alias("__next"))
        .sort(s.TIME)
    )
    query = (
        points.with_row_index("__i")
        .join(occurrences.select(s.SUBJECT_ID, "__j").unique(), on=s.SUBJECT_ID)
        .with_columns((pl.col(PREDICTION_TIME) + pl.duration(microseconds=1)).alias(s.TIME))
        .sort(s.TIME)
    )
    found = query.join_asof(
        occurrences, on=s.TIME, by=[s.SUBJECT_ID, "__j"], strategy="forward", check_sortedness=False
    ).filter(pl.col("__next").is_not_null() & (pl.col("__next") <= pl.col(END_OF_RECORD)))
    follow = (points.get_column(END_OF_RECORD) - points.get_column(PREDICTION_TIME)).dt.total_microseconds()
    days = np.repeat((follow.to_numpy().astype(np.float64) / _DAY_US).clip(min=0.0)[:, None], n_targets, axis=1)
    event = np.zeros((n_points, n_targets), dtype=bool)
    rows = found.get_column("__i").cast(pl.Int64).to_numpy()
    cols = found.get_column("__j").to_numpy()
    gap = (found.get_column("__next") - found.get_column(PREDICTION_TIME)).dt.total_microseconds()
    days[rows, cols] = gap.to_numpy().astype(np.float64) / _DAY_US
    event[rows, cols] = True
    return TargetTimes(days.astype(np.float32), event)
