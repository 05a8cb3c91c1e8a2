"""Labelers on crafted patients: windows, exclusions, censoring, stays, labs — and no leakage."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import numpy as np
import polars as pl
import pytest

from ehrembed import schema as s
from ehrembed.ehr.serialize import Serializer
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.predict.labelers import inpatient_visits, label_patient, outcome_codes
from ehrembed.predict.ontology import Ontology
from ehrembed.predict.tasks import TaskError, parse_task

T0 = dt.datetime(2020, 1, 1)


def day(n: float) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


def patient(*events: s.Event, subject_id: int = 1) -> s.Patient:
    base = [s.Event(None, "Gender/F"), s.Event(dt.datetime(1960, 5, 1), s.BIRTH_CODE)]
    return s.Patient(subject_id, [*base, *sorted(events, key=lambda e: e.time or T0)])


AF = "SNOMED/49436004"
AF_TASK = parse_task(
    {
        "name": "new_afib",
        "prediction_times": {"rule": "visit_days", "time": "23:59"},
        "horizon": {"start_days": 0, "end_days": 365},
        "outcome": {"codes": [AF]},
        "exclude_if_prior_outcome": True,
    }
)


def test_codes_outcome_window_exclusion_and_censoring() -> None:
    p = patient(
        s.Event(day(0), "SNOMED/38341003"),  # visit day 0: AF 200 days later → positive
        s.Event(day(100), "SNOMED/38341003"),  # day 100: AF 100 days later → positive
        s.Event(day(200), AF),  # the outcome day itself: already recorded → excluded
        s.Event(day(300), "SNOMED/38341003"),  # after the outcome → excluded
        s.Event(day(900), "SNOMED/38341003"),  # also after the outcome
    )
    skip: Counter[str] = Counter()
    labels = label_patient(AF_TASK, p, frozenset({AF}), skip)
    assert [(lab.prediction_time, lab.value) for lab in labels] == [
        (dt.datetime(2020, 1, 1, 23, 59), True),
        (dt.datetime(2020, 4, 10, 23, 59), True),
    ]
    assert skip["outcome already recorded"] == 3

    never = patient(s.Event(day(0), "X/1"), s.Event(day(10), "X/1"), s.Event(day(800), "X/2"))
    skip.clear()
    values = [(lab.prediction_time.date(), lab.value) for lab in label_patient(AF_TASK, never, frozenset({AF}), skip)]
    assert values == [(day(0).date(), False), (day(10).date(), False)]
    assert skip["censored (record ends before the horizon)"] == 1  # day 800: no follow-up for a negative


def test_death_ends_follow_up_without_censoring() -> None:
    p = patient(s.Event(day(0), "X/1"), s.Event(day(30), s.DEATH_CODE))
    labels = label_patient(AF_TASK, p, frozenset({AF}))
    assert [(lab.prediction_time.date(), lab.value) for lab in labels] == [(day(0).date(), False)]


def _stay(visit_id: int, start: float, end: float, code: str = "Visit/IP") -> list[s.Event]:
    return [s.Event(day(start), code, visit_id=visit_id), s.Event(day(end), s.VISIT_END_CODE, visit_id=visit_id)]


def test_length_of_stay_and_readmission() -> None:
    p = patient(*_stay(1, 0.4, 9.5), *_stay(2, 20.5, 22.5), *_stay(3, 200, 201), s.Event(day(400), "X/1"))
    assert [v.visit_id for v in inpatient_visits(p, ["Visit/IP"])] == [1, 2, 3]
    los = parse_task({"name": "los", "outcome": {"rule": "length_of_stay", "min_days": 7}})
    assert [(lab.prediction_time, lab.value) for lab in label_patient(los, p, frozenset())] == [
        (dt.datetime(2020, 1, 1, 23, 59), True),
        (dt.datetime(2020, 1, 21, 23, 59), False),
        (dt.datetime(2020, 7, 19, 23, 59), False),
    ]
    readmit = parse_task({"name": "readmit", "outcome": {"rule": "readmission", "within_days": 30}})
    labels = label_patient(readmit, p, frozenset())
    assert [(lab.prediction_time.date(), lab.value) for lab in labels] == [
        (day(9.5).date(), True),
        (day(22.5).date(), False),
        (day(201).date(), False),
    ]
    for lab in labels:  # a discharge-day time comes after the discharge
        assert lab.prediction_time >= day(9.5) or lab.prediction_time.date() != day(9.5).date()


def test_a_same_day_discharge_is_not_labelled_for_length_of_stay() -> None:
    p = patient(s.Event(day(0) + dt.timedelta(hours=8), "Visit/IP", visit_id=1),
                s.Event(day(0) + dt.timedelta(hours=20), s.VISIT_END_CODE, visit_id=1))  # fmt: skip
    los = parse_task({"name": "los", "outcome": {"rule": "length_of_stay"}})
    skip: Counter[str] = Counter()
    assert label_patient(los, p, frozenset(), skip) == []
    assert skip["stay ended before the prediction time"] == 1


def test_icu_transfer_during_the_rest_of_the_stay() -> None:
    p = patient(*_stay(1, 0, 5), s.Event(day(2), "Visit/ICU", visit_id=1), *_stay(2, 50, 53))
    icu = parse_task({"name": "icu", "outcome": {"rule": "icu_transfer"}})
    labels = label_patient(icu, p, frozenset())
    assert [(lab.prediction_time.date(), lab.value) for lab in labels] == [
        (day(0).date(), True),
        (day(50).date(), False),
    ]


def test_abnormal_lab_is_predicted_a_minute_before_the_result() -> None:
    k = "LOINC/2823-3"
    p = patient(
        s.Event(day(1), k, numeric_value=4.1, unit="mmol/L"),
        s.Event(day(2), k, numeric_value=6.2, unit="mmol/L"),
        s.Event(day(3), k),  # no value: skipped
        s.Event(day(4), "LOINC/2951-2", numeric_value=130.0),  # another lab
    )
    task = parse_task({"name": "hyperk", "outcome": {"rule": "abnormal_lab", "codes": [k], "above": 5.5}})
    skip: Counter[str] = Counter()
    labels = label_patient(task, p, frozenset({k}), skip)
    assert [(lab.prediction_time, lab.value) for lab in labels] == [
        (day(1) - dt.timedelta(minutes=1), False),
        (day(2) - dt.timedelta(minutes=1), True),
    ]
    assert skip["result without a numeric value"] == 1
    ranged = parse_task({"name": "r", "outcome": {"rule": "abnormal_lab", "codes": [k], "reference_range": True}})
    q = patient(s.Event(day(1), k, numeric_value=5.3, ref_low=3.5, ref_high=5.1))
    assert [lab.value for lab in label_patient(ranged, q, frozenset({k}))] == [True]


def test_max_per_subject_picks_the_same_times_for_every_task() -> None:
    events = [s.Event(day(i * 3), "X/1") for i in range(40)] + [s.Event(day(600), "X/1")]
    p = patient(*events)
    one = AF_TASK.model_copy(
        update={"prediction_times": AF_TASK.prediction_times.model_copy(update={"max_per_subject": 2})}
    )
    other = one.model_copy(update={"name": "other", "outcome": one.outcome.model_copy(update={"codes": ("SNOMED/1",)})})
    a = [lab.prediction_time for lab in label_patient(one, p, frozenset({AF}))]
    b = [lab.prediction_time for lab in label_patient(other, p, frozenset({"SNOMED/1"}))]
    assert len(a) == 2 and a == b == sorted(a)


def test_min_age_and_before_birth() -> None:
    p = patient(s.Event(dt.datetime(1970, 1, 1), "X/1"), s.Event(day(0), "X/1"), s.Event(day(900), "X/1"))
    adults = AF_TASK.model_copy(update={"min_age_years": 18})
    labels = label_patient(adults, p, frozenset({AF}))
    assert [lab.prediction_time.year for lab in labels] == [2020]


def test_ontology_descendants_icd_prefix_omop_and_parents() -> None:
    codes = pl.DataFrame(
        {
            s.CODE: ["SNOMED/22298006", "SNOMED/57054005", "ICD10CM/I48.91", "ICD10CM/I48.0", "ICD10CM/I10", "X/child"],
            s.PARENT_CODES: [None, None, None, None, None, ["X/parent"]],
            s.OMOP_CONCEPT_ID: [4329847, 312327, None, None, None, None],
            s.OMOP_ANCESTOR_IDS: [[4329847], [312327, 4329847], None, None, None, None],
        }
    )
    onto = Ontology.from_codes(codes)
    assert onto.descendants("SNOMED/22298006") == {"SNOMED/22298006", "SNOMED/57054005"}
    assert onto.descendants("ICD10CM/I48") == {"ICD10CM/I48", "ICD10CM/I48.91", "ICD10CM/I48.0"}
    assert onto.descendants("X/parent") == {"X/parent", "X/child"}
    assert onto.unknown(["ICD10CM/I48", "ICD10CM/E11", "SNOMED/22298006"]) == ["ICD10CM/E11"]
    assert "ICD10CM/I48" in onto.ancestors("ICD10CM/I48.91")
    assert "SNOMED/22298006" in onto.ancestors("SNOMED/57054005")
    task = parse_task({"name": "mi", "outcome": {"codes": ["SNOMED/22298006"]}})
    assert outcome_codes(task, onto) == {"SNOMED/22298006", "SNOMED/57054005"}
    with pytest.raises(TaskError, match="none of its outcome codes"):
        outcome_codes(parse_task({"name": "dm", "outcome": {"codes": ["ICD10CM/E11"]}}), onto)


def test_no_label_input_reads_past_the_prediction_time() -> None:
    """Mutating everything after a label's time changes neither that label's record nor its count features."""
    from ehrembed.ehr.meds import MedsDataset  # noqa: F401  (documented entry point of inputs)

    rng = np.random.default_rng(0)
    codes = ["SNOMED/38341003", "RxNorm/1", "LOINC/2160-0", AF]
    events = [
        s.Event(day(float(d)), str(rng.choice(codes)), numeric_value=1.0) for d in sorted(rng.uniform(0, 700, 60))
    ]
    p = patient(*events)
    vocabulary = Vocabulary({AF: "Atrial fibrillation"})
    serializer = Serializer(vocabulary)
    labels = label_patient(AF_TASK.model_copy(update={"exclude_if_prior_outcome": False}), p, frozenset({AF}))
    assert labels
    for lab in labels:
        future = [
            s.Event(e.time + dt.timedelta(days=1), "SNOMED/999", 9.9)
            for e in p.events
            if e.time and e.time > lab.prediction_time
        ]
        mutated = s.Patient(
            p.subject_id, [e for e in p.events if e.time is None or e.time <= lab.prediction_time] + future
        )
        assert serializer.serialize(p, as_of=lab.prediction_time) == serializer.serialize(
            mutated, as_of=lab.prediction_time
        )
