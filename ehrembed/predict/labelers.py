"""Labelers: a task and a patient → (subject_id, prediction_time, value) labels.

A label's value may look into the future (that is what is predicted); nothing else may: the
prediction time is chosen from events at or before it, and the models' inputs are cut at it
(:meth:`ehrembed.schema.Patient.events_until`). Negatives need follow-up: a patient whose record
ends before the horizon does (and who did not die) is censored, not labelled negative.

Rules (see :mod:`ehrembed.predict.tasks`):

- ``visit_days``: each day with a dated clinical event, at the task's clock time.
- ``admission_day`` / ``discharge_day``: each inpatient visit (a visit-start code with a
  ``visit_id``, ended by ``MEDS_VISIT_END``), at the clock time of its first / last day. An
  admission-day time must fall inside the stay, a discharge-day time after it.
- ``before_lab``: ``offset_minutes`` before each numeric result of the outcome's lab codes.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.predict.ontology import Ontology
from ehrembed.predict.tasks import (
    EXTERNAL_RULES,
    AbnormalLabOutcome,
    AcesOutcome,
    CodesOutcome,
    IcuTransferOutcome,
    LabelsOutcome,
    LengthOfStayOutcome,
    ReadmissionOutcome,
    TaskError,
    TaskSpec,
)

_NOT_CLINICAL = frozenset({s.BIRTH_CODE, s.VISIT_END_CODE})
_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Visit:
    """One stay: its id, code, start and end (None when no end event was recorded)."""

    visit_id: int
    code: str
    start: dt.datetime
    end: dt.datetime | None


@dataclass
class LabelSet:
    """A task's labels over a dataset, with what was left out and why."""

    task: TaskSpec
    labels: list[s.Label]
    skipped: Counter[str] = field(default_factory=Counter)
    outcome_codes: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_positive(self) -> int:
        return sum(bool(label.value) for label in self.labels)

    def frame(self) -> pl.DataFrame:
        """subject_id, prediction_time, value (bool) — one row per label."""
        return pl.DataFrame(
            {
                s.SUBJECT_ID: [label.subject_id for label in self.labels],
                "prediction_time": [label.prediction_time for label in self.labels],
                "value": [bool(label.value) for label in self.labels],
            },
            schema={s.SUBJECT_ID: pl.Int64, "prediction_time": pl.Datetime("us"), "value": pl.Boolean},
        )

    def summary(self) -> dict[str, object]:
        return {
            "task": self.task.name,
            "labels": len(self),
            "positives": self.n_positive,
            "subjects": len({label.subject_id for label in self.labels}),
            "skipped": dict(self.skipped),
        }


def inpatient_visits(patient: s.Patient, visit_codes: Iterable[str]) -> list[Visit]:
    """The patient's stays whose start code is one of ``visit_codes``, by start time."""
    wanted = set(visit_codes)
    starts: dict[int, tuple[str, dt.datetime]] = {}
    ends: dict[int, dt.datetime] = {}
    for event in patient.events:
        if event.time is None or event.visit_id is None:
            continue
        if event.code in wanted and event.visit_id not in starts:
            starts[event.visit_id] = (event.code, event.time)
        elif event.code == s.VISIT_END_CODE:
            ends[event.visit_id] = max(event.time, ends.get(event.visit_id, event.time))
    visits = [Visit(vid, code, start, ends.get(vid)) for vid, (code, start) in starts.items()]
    return sorted(visits, key=lambda v: (v.start, v.visit_id))


def _at_clock(day: dt.datetime, clock: dt.time) -> dt.datetime:
    return dt.datetime.combine(day.date(), clock)


def _stable_rank(subject_id: int, when: dt.datetime) -> bytes:
    return hashlib.sha256(f"{subject_id}:{when.isoformat()}".encode()).digest()[:8]


def _keep_some(subject_id: int, labels: list[s.Label], n: int | None) -> list[s.Label]:
    """At most ``n`` labels, picked by a hash of (subject, time): the same times across tasks."""
    if n is None or len(labels) <= n:
        return labels
    chosen = sorted(labels, key=lambda label: _stable_rank(subject_id, label.prediction_time))[:n]
    return sorted(chosen, key=lambda label: label.prediction_time)


class _Timeline:
    """A patient's dated events, for window queries."""

    def __init__(self, patient: s.Patient) -> None:
        self.events = [e for e in patient.events if e.time is not None]
        self.times: list[dt.datetime] = [e.time for e in self.events if e.time is not None]  # sorted (MEDS order)
        self.last = self.times[-1] if self.times else None
        self.death = next((e.time for e in self.events if e.code == s.DEATH_CODE), None)
        self.birth = patient.birth_time

    def first_time_of(self, codes: frozenset[str]) -> dt.datetime | None:
        return next((e.time for e in self.events if e.code in codes), None)

    def any_in(self, codes: frozenset[str], after: dt.datetime, until: dt.datetime) -> bool:
        """Any of ``codes`` in ``(after, until]``."""
        lo = bisect.bisect_right(self.times, after)
        hi = bisect.bisect_right(self.times, until)
        return any(self.events[i].code in codes for i in range(lo, hi))

    def followed_until(self, until: dt.datetime) -> bool:
        """The record reaches ``until`` (or the patient died before it): a negative is trustworthy."""
        if self.death is not None and self.death <= until:
            return True
        return self.last is not None and self.last >= until

    def age_years(self, when: dt.datetime) -> float | None:
        return None if self.birth is None else (when - self.birth).days / 365.25


def _label_codes(
    task: TaskSpec, patient: s.Patient, line: _Timeline, codes: frozenset[str], skip: Counter[str]
) -> list[s.Label]:
    times = task.prediction_times
    if times.rule == "visit_days":
        days = sorted({e.time.date() for e in line.events if e.code not in _NOT_CLINICAL and e.time is not None})
        candidates = [dt.datetime.combine(day, times.clock) for day in days]
    else:
        visits = inpatient_visits(patient, times.visit_codes)
        candidates = []
        for visit in visits:
            if times.rule == "admission_day":
                candidates.append(_at_clock(visit.start, times.clock))
            elif visit.end is not None:
                candidates.append(_at_clock(visit.end, times.clock))
    first_outcome = line.first_time_of(codes)
    start, end = dt.timedelta(days=task.horizon.start_days), dt.timedelta(days=task.horizon.end_days)
    out: list[s.Label] = []
    for when in candidates:
        if task.exclude_if_prior_outcome and first_outcome is not None and first_outcome <= when:
            skip["outcome already recorded"] += 1
            continue
        if line.death is not None and line.death <= when:
            skip["after death"] += 1
            continue
        positive = line.any_in(codes, when + start, when + end)
        if not positive and not line.followed_until(when + end):
            skip["censored (record ends before the horizon)"] += 1
            continue
        out.append(s.Label(patient.subject_id, when, positive))
    return out


def _label_stays(task: TaskSpec, patient: s.Patient, line: _Timeline, skip: Counter[str]) -> list[s.Label]:
    times, outcome = task.prediction_times, task.outcome
    visits = inpatient_visits(patient, times.visit_codes)
    out: list[s.Label] = []
    for i, visit in enumerate(visits):
        if visit.end is None:
            skip["visit without an end"] += 1
            continue
        if isinstance(outcome, LengthOfStayOutcome):
            when = _at_clock(visit.start, times.clock)
            if when < visit.start or when >= visit.end:
                skip["stay ended before the prediction time"] += 1
                continue
            out.append(
                s.Label(patient.subject_id, when, (visit.end - visit.start) >= dt.timedelta(days=outcome.min_days))
            )
        elif isinstance(outcome, ReadmissionOutcome):
            when = _at_clock(visit.end, times.clock)
            if when < visit.end:
                when = visit.end
            window = dt.timedelta(days=outcome.within_days)
            positive = any(when < later.start <= when + window for later in visits[i + 1 :])
            if line.death is not None and line.death <= when:
                skip["after death"] += 1
                continue
            if not positive and not line.followed_until(when + window):
                skip["censored (record ends before the horizon)"] += 1
                continue
            out.append(s.Label(patient.subject_id, when, positive))
        elif isinstance(outcome, IcuTransferOutcome):
            when = _at_clock(visit.start, times.clock)
            if when >= visit.end:
                skip["stay ended before the prediction time"] += 1
                continue
            icu = frozenset(outcome.codes)
            in_icu_already = any(
                e.code in icu and e.time is not None and visit.start <= e.time <= when for e in line.events
            )
            if in_icu_already:
                skip["outcome already recorded"] += 1
                continue
            out.append(s.Label(patient.subject_id, when, line.any_in(icu, when, visit.end)))
    return out


def _is_abnormal(outcome: AbnormalLabOutcome, event: s.Event) -> bool:
    value = event.numeric_value
    assert value is not None
    if outcome.below is not None and value < outcome.below:
        return True
    if outcome.above is not None and value > outcome.above:
        return True
    if outcome.reference_range and outcome.below is None and outcome.above is None:
        return (event.ref_low is not None and value < event.ref_low) or (
            event.ref_high is not None and value > event.ref_high
        )
    return False


def _label_labs(
    task: TaskSpec, patient: s.Patient, line: _Timeline, codes: frozenset[str], skip: Counter[str]
) -> list[s.Label]:
    outcome = task.outcome
    assert isinstance(outcome, AbnormalLabOutcome)
    offset = dt.timedelta(minutes=task.prediction_times.offset_minutes)
    out: list[s.Label] = []
    seen: set[dt.datetime] = set()
    for event in line.events:
        if event.code not in codes:
            continue
        if event.numeric_value is None or not np.isfinite(event.numeric_value):
            skip["result without a numeric value"] += 1
            continue
        assert event.time is not None
        when = event.time - offset
        if when in seen:
            continue  # several results at one time: the first one is the target
        seen.add(when)
        out.append(s.Label(patient.subject_id, when, _is_abnormal(outcome, event)))
    return out


def label_patient(
    task: TaskSpec, patient: s.Patient, outcome_codes: frozenset[str], skip: Counter[str] | None = None
) -> list[s.Label]:
    """The task's labels for one patient (``outcome_codes``: the outcome's codes, already expanded)."""
    skip = skip if skip is not None else Counter()
    line = _Timeline(patient)
    if not line.events:
        return []
    outcome = task.outcome
    if isinstance(outcome, CodesOutcome):
        labels = _label_codes(task, patient, line, outcome_codes, skip)
    elif isinstance(outcome, AbnormalLabOutcome):
        labels = _label_labs(task, patient, line, outcome_codes, skip)
    else:
        labels = _label_stays(task, patient, line, skip)
    kept = []
    for label in labels:
        if line.birth is not None and label.prediction_time < line.birth:
            skip["before birth"] += 1
            continue
        age = line.age_years(label.prediction_time)
        if task.min_age_years is not None and (age is None or age < task.min_age_years):
            skip["younger than min_age_years"] += 1
            continue
        kept.append(label)
    return _keep_some(patient.subject_id, kept, task.prediction_times.max_per_subject)


def outcome_codes(task: TaskSpec, ontology: Ontology) -> frozenset[str]:
    """The task's outcome codes expanded by the dataset's ontology; an error if none is recorded."""
    codes = task.outcome_codes
    if not codes:
        return frozenset()
    include = bool(getattr(task.outcome, "include_descendants", True))
    expanded = ontology.expand(codes, include_descendants=include)
    if not expanded & ontology.codes:
        raise TaskError(
            f"task {task.name}: none of its outcome codes ({', '.join(codes)}) or their descendants is "
            "recorded in this dataset"
        )
    return expanded


def label_dataset(
    task: TaskSpec,
    dataset: MedsDataset,
    *,
    ontology: Ontology | None = None,
    subject_ids: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LabelSet:
    """Label every patient (or ``subject_ids``) of a dataset for one task."""
    if task.outcome.rule in EXTERNAL_RULES:
        return LabelSet(task, external_labels(task, dataset, subject_ids))
    ontology = ontology or Ontology.from_dataset(dataset)
    codes = outcome_codes(task, ontology)
    if task.prediction_times.rule in ("admission_day", "discharge_day"):
        visit_codes = set(task.prediction_times.visit_codes)
        if not visit_codes & ontology.codes:
            raise TaskError(
                f"task {task.name}: the dataset records no inpatient visits "
                f"({', '.join(sorted(visit_codes))}); set prediction_times.visit_codes"
            )
    skipped: Counter[str] = Counter()
    labels: list[s.Label] = []
    total = len(subject_ids) if subject_ids is not None else len(dataset.subject_ids())
    for done, patient in enumerate(dataset.iter_patients(subject_ids), start=1):
        labels.extend(label_patient(task, patient, codes, skipped))
        if progress is not None and (done % 500 == 0 or done == total):
            progress(done, total)
    return LabelSet(task, labels, skipped, codes)


def external_labels(task: TaskSpec, dataset: MedsDataset, subject_ids: Sequence[int] | None = None) -> list[s.Label]:
    """An ACES task's labels (run by es-aces on the dataset) or a labels folder's, for the dataset's subjects."""
    from ehrembed.predict import aces, meds_labels

    outcome = task.outcome
    if isinstance(outcome, AcesOutcome):
        frame = aces.aces_labels(outcome.config, outcome.predicates, dataset)
    elif isinstance(outcome, LabelsOutcome):
        frame = meds_labels.read_labels(Path(outcome.path))
    else:  # pragma: no cover - guarded by the caller
        raise TaskError(f"task {task.name}: {outcome.rule} labels are made by ehrembed's labelers")
    known = subject_ids if subject_ids is not None else dataset.subject_ids()
    return meds_labels.labels_of(frame, known)
