"""The serializer: Markdown and list layouts, the as-of cut (no leakage), budgets, flags, determinism."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from ehrembed import schema as s
from ehrembed.ehr.measurements import flag
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.serialize import SerializeError, Serializer, SerializerConfig
from ehrembed.ehr.tokens import load_token_counter
from ehrembed.ehr.vocabulary import Vocabulary

T0 = dt.datetime(2020, 1, 1, 8, 0)


def day(n: int, hour: int = 9) -> dt.datetime:
    return T0.replace(hour=hour) + dt.timedelta(days=n)


VOCAB = Vocabulary(
    descriptions={
        "Gender/F": "FEMALE",
        "Visit/IP": "Inpatient Visit",
        "Visit/OP": "Outpatient Visit",
        "ICD10CM/E11.9": "Type 2 diabetes mellitus without complications",
        "ICD10CM/N18.3": "Chronic kidney disease, stage 3",
        "RxNorm/860975": "metformin 500 MG Oral Tablet",
        "LOINC/2160-0": "Creatinine [Mass/volume] in Serum or Plasma",
        "LOINC/29463-7": "Body weight",
        "LOINC/8480-6": "Systolic blood pressure",
        "CPT4/93000": "Electrocardiogram",
    },
    domains={
        "Gender/F": "Demographic",
        "Visit/IP": "Visit",
        "Visit/OP": "Visit",
        "LOINC/2160-0": "Measurement",
        "LOINC/29463-7": "Measurement",
        "LOINC/8480-6": "Measurement",
    },
)


def patient() -> s.Patient:
    E = s.Event
    return s.Patient(
        7,
        [
            E(None, "Gender/F"),
            E(dt.datetime(1960, 5, 17), s.BIRTH_CODE),
            E(day(0), "Visit/OP", visit_id=1),
            E(day(0), "ICD10CM/E11.9", visit_id=1),
            E(day(0), "LOINC/2160-0", 1.1, unit="mg/dL", visit_id=1),
            E(day(0), "LOINC/29463-7", 81.5, unit="kg", visit_id=1),
            E(day(0, 10), s.VISIT_END_CODE, text_value="Visit/OP", visit_id=1),
            E(day(30), "RxNorm/860975"),
            E(day(100), "Visit/IP", visit_id=2),
            E(day(100), "LOINC/2160-0", 1.9, unit="mg/dL", visit_id=2),
            E(day(100), "LOINC/8480-6", 85.0, unit="mm[Hg]", visit_id=2),
            E(day(101), "ICD10CM/N18.3", visit_id=2),
            E(day(101), "CPT4/93000", visit_id=2),
            E(day(101), "ZZZ/UNKNOWN-1", visit_id=2),
            E(day(105), s.VISIT_END_CODE, text_value="Visit/IP", visit_id=2),
            E(day(200), "LOINC/2160-0", 2.6, unit="mg/dL", ref_low=0.5, ref_high=1.0),
        ],
    )


def test_markdown_layout() -> None:
    text = Serializer(VOCAB).serialize(patient(), as_of=day(200, 23))
    sections = [line for line in text.splitlines() if line.startswith("#")]
    assert sections == [
        "# Electronic Healthcare Record",
        "## Patient Demographics",
        "## Recent Body Metrics",
        "## Recent Vital Signs",
        "## Recent Lab Results",
        "## Past Medical Visits",
        "## General Medical Events",
        "## Detailed Past Medical Visits (most recent first)",
        "### Inpatient Visit on 2020-04-10 (100 days before prediction time, duration: 5 days)",
        "#### Conditions",
        "#### Procedures",
        "#### Other Events",
        "### Outpatient Visit on 2020-01-01 (200 days before prediction time)",
        "#### Conditions",
    ]
    assert "Current time: 2020-07-19 23:00" in text
    assert "- Age: 60 years" in text and "- Sex: Female" in text
    # the fixed concepts: newest value first, display unit, flags (the source's range wins over the concept's)
    assert "- Creatinine (mg/dL): 2.6 (high), 1.9 (high), 1.1 (normal)" in text
    assert "- Systolic blood pressure (mmHg): 85 (low)" in text
    assert "- Body weight (kg): 81.5" in text
    assert "- Heart rate: No recent data" in text
    assert sum("No recent data" in line for line in text.splitlines()) == 21  # 24 concepts, 3 with values
    # concept codes are shown once, in their Recent section, not again in visits
    assert "Creatinine [Mass/volume]" not in text and "#### Measurements" not in text
    assert "- Inpatient Visit on 2020-04-10 (100 days before prediction time, duration: 5 days)" in text
    assert "- metformin 500 MG Oral Tablet" in text
    assert "- ZZZ/UNKNOWN-1" in text  # unknown codes are shown raw by default


def test_markdown_concepts_merge_synonyms_convert_units_and_drop_implausible_values() -> None:
    E = s.Event
    p = s.Patient(
        3,
        [
            E(day(0), "LOINC/8310-5", 98.6, unit="[degF]"),  # converted to °C
            E(day(1), "LOINC/8310-5", 37.2, unit="Cel"),
            E(day(2), "LOINC/8310-5", 370.0, unit="Cel"),  # a typo: implausible, dropped
            E(day(0), "LOINC/2345-7", 5.5, unit="mmol/L"),  # glucose in mmol/L: 99 mg/dL
            E(day(1), "LOINC/2339-0", 150.0, unit="mg/dL"),  # a synonym of the same concept
            E(day(2), "LOINC/2345-7", 7.0, unit="g/L"),  # a unit the concept does not know: dropped
            E(day(3), "LOINC/8867-4", 72.0, unit="beats/minute"),
            E(day(3), "LOINC/59408-5", 91.0, unit="%"),
        ],
    )
    text = Serializer(VOCAB).serialize(p, as_of=day(5))
    assert "- Body temperature (°C): 37.2 (normal), 37 (normal)" in text
    assert "- Glucose (mg/dL): 150 (high), 99 (normal)" in text
    assert "- Heart rate (bpm): 72 (normal)" in text
    assert "- Oxygen saturation (%): 91 (low)" in text
    assert "370" not in text and "- 7" not in text


def test_markdown_values_in_visits_and_general_events() -> None:
    E = s.Event
    vocab = Vocabulary(
        descriptions={**VOCAB.descriptions, "LOINC/4548-4": "Hemoglobin A1c", "LOINC/1-1": "Albumin"},
        domains={**VOCAB.domains, "LOINC/4548-4": "Measurement", "LOINC/1-1": "Measurement"},
    )
    p = s.Patient(
        4,
        [
            E(day(0), "Visit/OP", visit_id=1),
            *(
                E(day(0, h), "LOINC/4548-4", v, unit="%", visit_id=1)
                for h, v in ((9, 6.0), (10, 6.5), (11, 7.25), (12, 8.0))
            ),
            E(day(3), "LOINC/1-1", 4.126, unit="g/dL"),
            E(day(4), "LOINC/1-1", 3.5, unit="g/dL"),
        ],
    )
    text = Serializer(vocab).serialize(p, as_of=day(5))
    assert "- Hemoglobin A1c (%): 8 (high), 7.25 (high), 6.5 (high)" in text  # the last 3, newest first
    assert "- Albumin (g/dL): 3.5, 4.13" in text  # general events carry their values too


def test_markdown_shifts_dates_to_a_fixed_prediction_time() -> None:
    text = Serializer(VOCAB, SerializerConfig(shift_dates=True)).serialize(patient(), as_of=day(102))
    assert "Current time: 2024-01-01 00:00" in text
    assert "- Inpatient Visit on 2023-12-30 (2 days before prediction time, current visit)" in text
    assert "- Outpatient Visit on 2023-09-21 (102 days before prediction time)" in text
    assert "2020" not in text
    assert "- Age: 59 years" in text  # computed from the real dates


def test_budget_drops_no_recent_data_lines_before_any_fact() -> None:
    counter = load_token_counter()
    full = Serializer(VOCAB).serialize(patient(), as_of=day(200, 23))
    facts = [line for line in full.splitlines() if "No recent data" not in line]
    budget = counter.count(["\n".join(facts)])[0] + 4
    cut = Serializer(VOCAB, SerializerConfig(max_tokens=budget), counter).serialize(patient(), as_of=day(200, 23))
    assert "- Creatinine (mg/dL): 2.6 (high), 1.9 (high), 1.1 (normal)" in cut
    assert "- Type 2 diabetes mellitus without complications" in cut  # the oldest fact stayed
    assert "No recent data" not in cut


def test_unknown_codes_can_be_dropped() -> None:
    text = Serializer(VOCAB, SerializerConfig(unknown_codes="drop")).serialize(patient(), as_of=day(200))
    assert "ZZZ/UNKNOWN-1" not in text and "#### Other Events" not in text


def test_ongoing_visit_hides_its_future_end() -> None:
    text = Serializer(VOCAB).serialize(patient(), as_of=day(102))
    assert "- Inpatient Visit on 2020-04-10 (2 days before prediction time, current visit)" in text
    assert "2020-04-15" not in text and "duration" not in text


def test_nothing_after_as_of_appears() -> None:
    """Property check over many cut points: every later-only fact is absent."""
    full = patient()
    serializer = Serializer(VOCAB)
    rng = random.Random(0)
    cuts = [day(0) - dt.timedelta(hours=1), day(0), day(30), day(100), day(101), day(150), day(200)]
    cuts += [day(rng.randint(0, 210), rng.randint(0, 23)) for _ in range(30)]
    for as_of in cuts:
        text = serializer.serialize(full, as_of=as_of)
        for event in full.events:
            if event.time is None or event.time <= as_of:
                continue
            earlier = [e for e in full.events if e.code == event.code and e.time is not None and e.time <= as_of]
            if not earlier and event.code != s.VISIT_END_CODE:
                shown = [line for line in text.splitlines() if VOCAB.label(event.code) in line]
                assert all(line.endswith("No recent data") for line in shown), (as_of, event.code)
            if event.numeric_value is not None and not any(
                e.code == event.code and e.numeric_value == event.numeric_value for e in earlier
            ):
                assert f" {event.numeric_value:g} (" not in text, (as_of, event.code)
        for token in text.split():
            if token[:4].isdigit() and token[4:5] == "-":  # every date shown is on or before as_of
                assert dt.date.fromisoformat(token.strip("(),")[:10]) <= as_of.date()


def test_as_of_before_birth_is_an_error() -> None:
    with pytest.raises(SerializeError, match="before subject 7's birth"):
        Serializer(VOCAB).serialize(patient(), as_of=dt.datetime(1950, 1, 1))


def test_aware_as_of_is_read_as_utc() -> None:
    aware = dt.datetime(2020, 7, 19, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    text = Serializer(VOCAB).serialize(patient(), as_of=aware)
    assert "Current time: 2020-07-19 21:00" in text


def test_list_format_matches_the_reference() -> None:
    """The reference's final list: described codes, most recent first, ``description (unit): value``."""
    text = Serializer(VOCAB, SerializerConfig(format="list")).serialize(patient(), as_of=day(200, 23))
    assert text == (
        "Creatinine [Mass/volume] in Serum or Plasma (mg/dL): 2.6\n"
        "Chronic kidney disease, stage 3\n"
        "Electrocardiogram\n"
        "Inpatient Visit\n"
        "Systolic blood pressure (mm[Hg]): 85\n"
        "metformin 500 MG Oral Tablet\n"
        "Body weight (kg): 81.5\n"
        "Outpatient Visit\n"
        "Type 2 diabetes mellitus without complications\n"
        "Female\n"
    )
    # as of day 100 the creatinine is the older value, CKD is not yet there
    earlier = Serializer(VOCAB, SerializerConfig(format="list")).serialize(patient(), as_of=day(100, 23))
    assert earlier.splitlines()[:2] == ["Creatinine [Mass/volume] in Serum or Plasma (mg/dL): 1.9", "Inpatient Visit"]
    assert "Chronic kidney disease" not in earlier


def test_list_format_numbers_and_budget() -> None:
    E = s.Event
    p = s.Patient(
        1,
        [
            E(None, "Gender/F"),
            E(day(0), "LOINC/2160-0", 1.234, unit="mg/dL"),
            E(day(1), "LOINC/29463-7", 70.0),
            E(day(2), "LOINC/8480-6", 120.105, unit="mm[Hg]"),
            E(day(3), "ICD10CM/E11.9"),
        ],
    )
    serializer = Serializer(VOCAB, SerializerConfig(format="list"))
    assert serializer.serialize(p, as_of=day(5)).splitlines() == [
        "Type 2 diabetes mellitus without complications",
        "Systolic blood pressure (mm[Hg]): 120.11",
        "Body weight: 70",
        "Creatinine [Mass/volume] in Serum or Plasma (mg/dL): 1.23",
        "Female",
    ]
    counter = load_token_counter()
    newest = ["Type 2 diabetes mellitus without complications", "Systolic blood pressure (mm[Hg]): 120.11"]
    budget = counter.count(["\n".join(newest) + "\n"])[0]
    cut = Serializer(VOCAB, SerializerConfig(format="list", max_tokens=budget), counter).serialize(p, as_of=day(5))
    assert cut.splitlines() == newest  # the undated sex line and the oldest codes went first


def test_list_dated_format_one_line_per_code_most_recent_first() -> None:
    text = Serializer(VOCAB, SerializerConfig(format="list_dated")).serialize(patient(), as_of=day(200, 23))
    items = [line for line in text.splitlines() if line.startswith("- ") and "Age" not in line and "Sex" not in line]
    assert items[0] == "- Creatinine [Mass/volume] in Serum or Plasma: 2.6 mg/dL (high) (today)"
    assert len(items) == len({line.rsplit(" (", 1)[0] for line in items})
    assert items.index("- metformin 500 MG Oral Tablet (170 days ago)") > items.index(
        "- Chronic kidney disease, stage 3 (99 days ago)"
    )


def test_token_budget_drops_oldest_whole_lines(eunomia: MedsDataset) -> None:
    counter = load_token_counter()
    vocab = Vocabulary.from_dataset(eunomia)
    full_serializer = Serializer(vocab)
    patients = list(eunomia.iter_patients(eunomia.subject_ids()[:40]))
    for budget in (64, 200, 600):
        budgeted = Serializer(vocab, SerializerConfig(max_tokens=budget), counter)
        for p in patients:
            as_of = max(e.time for e in p.events if e.time is not None)
            full = full_serializer.serialize(p, as_of=as_of)
            result = budgeted.serialize_with_stats(p, as_of=as_of)
            assert counter.count([result.text])[0] <= budget
            full_lines = full.splitlines()
            assert set(result.text.splitlines()) <= set(full_lines), "no line is cut or invented"
            if result.truncated:
                shown = [line for line in full_lines if line.startswith("### ") and line in result.text]
                all_visits = [line for line in full_lines if line.startswith("### ")]
                assert shown == all_visits[: len(shown)], "visits survive newest first"
            assert result.text.startswith("# Electronic Healthcare Record\nCurrent time:")


def test_deterministic_and_versioned(eunomia: MedsDataset) -> None:
    vocab = Vocabulary.from_dataset(eunomia)
    p = eunomia.patient(eunomia.subject_ids()[3])
    as_of = max(e.time for e in p.events if e.time is not None)
    a = Serializer(vocab).serialize(p, as_of=as_of)
    assert a == Serializer(vocab).serialize(p, as_of=as_of)
    versions = {
        Serializer(vocab).version,
        Serializer(vocab, SerializerConfig(format="list")).version,
        Serializer(vocab, SerializerConfig(max_tokens=100), load_token_counter()).version,
        Serializer(vocab, SerializerConfig(recent_values=2)).version,
    }
    assert len(versions) == 4


def test_budget_needs_a_counter_and_a_positive_size() -> None:
    with pytest.raises(SerializeError, match="token counter"):
        Serializer(VOCAB, SerializerConfig(max_tokens=10))
    with pytest.raises(SerializeError, match="positive"):
        Serializer(VOCAB, SerializerConfig(max_tokens=0), load_token_counter())


@pytest.mark.parametrize(
    ("code", "value", "unit", "low", "high", "expected"),
    [
        ("LOINC/2823-3", 6.1, "mmol/L", None, None, "high"),
        ("LOINC/2823-3", 3.0, "mmol/L", None, None, "low"),
        ("LOINC/2823-3", 4.2, None, None, None, "normal"),
        ("LOINC/2823-3", 6.1, "mg/dL", None, None, None),  # unit mismatch: no guess
        ("LOINC/33914-3", 45.0, "mL/min/{1.73_m2}", None, None, "low"),
        ("LOINC/9999-9", 5.0, "x", 1.0, 4.0, "high"),
        ("LOINC/9999-9", 5.0, "x", None, None, None),
    ],
)
def test_flags(
    code: str, value: float, unit: str | None, low: float | None, high: float | None, expected: str | None
) -> None:
    assert flag(code, value, unit, low, high) == expected


def test_eunomia_record_reads_like_the_layout(eunomia: MedsDataset) -> None:
    vocab = Vocabulary.from_dataset(eunomia)
    p = eunomia.patient(eunomia.subject_ids()[0])
    text = Serializer(vocab).serialize(p, as_of=dt.datetime(2019, 6, 1))
    for heading in (
        "# Electronic Healthcare Record",
        "## Patient Demographics",
        "## Past Medical Visits",
        "## Detailed Past Medical Visits (most recent first)",
        "#### Conditions",
    ):
        assert heading in text
    assert "/" not in "".join(
        line
        for line in text.splitlines()
        if line.startswith("- ") and "Visit" not in line and "MG" not in line and "ACTUAT" not in line
    ), "codes are shown as descriptions"


def test_budget_too_small_for_anything_is_an_error() -> None:
    serializer = Serializer(VOCAB, SerializerConfig(max_tokens=3), load_token_counter())
    with pytest.raises(SerializeError, match="cannot hold even the record's first line"):
        serializer.serialize(patient(), as_of=day(200))


def test_whitespace_split_counters_add_up_exactly(eunomia: MedsDataset) -> None:
    """The budget fitter trusts per-line sums only where no token can cross a line break."""
    counter = load_token_counter()
    assert counter.additive
    vocab = Vocabulary.from_dataset(eunomia)
    serializer = Serializer(vocab, SerializerConfig(max_tokens=300), counter)
    for p in eunomia.iter_patients(eunomia.subject_ids()[:25]):
        result = serializer.serialize_with_stats(p, as_of=max(e.time for e in p.events if e.time is not None))
        if result.n_tokens is not None:
            assert result.n_tokens == counter.count([result.text])[0]
