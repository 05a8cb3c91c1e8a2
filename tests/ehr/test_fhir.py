"""FHIR R4 → MEDS ingest, on cohorts from the independent `carebundle` generator plus small
hand-written resources for the edge cases."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from carebundle import Imperfection, generate_cohort, generate_history, inject_defects, to_json, to_ndjson

from ehrembed import schema as s
from ehrembed.ehr.fhir import (
    FhirError,
    fhir_to_events,
    ingest_fhir,
    parse_fhir_time,
    subject_id_for,
    visit_id_for,
)
from ehrembed.ehr.meds import IngestReport, MedsDataset

N_PATIENTS = 20
SEED = 11
LOCAL_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.2.696580"  # what carebundle's defects use


# --- carebundle cohorts --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One cohort written both as bulk ndjson (one file per type) and as one Bundle per patient."""
    bundles = generate_cohort(count=N_PATIENTS, seed=SEED)
    root = tmp_path_factory.mktemp("fhir")
    bulk, bundle_dir = root / "bulk", root / "bundles"
    bulk.mkdir()
    bundle_dir.mkdir()
    streams = to_ndjson(bundles)
    for rtype, text in streams.items():
        (bulk / f"{rtype}.ndjson").write_text(text, encoding="utf-8")
    for index, bundle in enumerate(bundles):
        (bundle_dir / f"patient-{index}.json").write_text(to_json(bundle), encoding="utf-8")
    resources = [json.loads(line) for text in streams.values() for line in text.splitlines() if line]
    report_bulk = ingest_fhir([bulk], root / "out-bulk")
    report_bundles = ingest_fhir([bundle_dir], root / "out-bundles")
    return {
        "resources": resources,
        "bulk": MedsDataset.open(root / "out-bulk"),
        "bundles": MedsDataset.open(root / "out-bundles"),
        "report_bulk": report_bulk,
        "report_bundles": report_bundles,
    }


def _events(dataset: MedsDataset) -> pl.DataFrame:
    return dataset.scan().collect()


def test_bulk_subjects_and_counts(cohort: dict[str, Any]) -> None:
    resources, report = cohort["resources"], cohort["report_bulk"]
    by_type = Counter(r["resourceType"] for r in resources)
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    assert len(patients) == N_PATIENTS
    assert report.n_subjects == N_PATIENTS
    assert report.counts == dict(by_type)
    assert report.skipped == {"unsupported resource type Practitioner": by_type["Practitioner"]}

    events = _events(cohort["bulk"])
    assert report.n_events == events.height > 0
    assert events.get_column(s.SUBJECT_ID).n_unique() == N_PATIENTS
    source_ids = cohort["bulk"].source_ids()
    assert source_ids is not None
    assert sorted(source_ids.get_column(s.SOURCE_ID).to_list()) == sorted(p["id"] for p in patients)
    assert all(subject_id_for(r[s.SOURCE_ID]) == r[s.SUBJECT_ID] for r in source_ids.iter_rows(named=True))


def test_every_resource_becomes_events(cohort: dict[str, Any]) -> None:
    """Nothing is dropped silently: the event count follows from the resources read."""
    resources = cohort["resources"]
    by_type = Counter(r["resourceType"] for r in resources)
    components = sum(len(r.get("component", [])) for r in resources if r["resourceType"] == "Observation")
    panels = sum(1 for r in resources if r["resourceType"] == "Observation" and r.get("component"))
    ended = sum(1 for r in resources if r["resourceType"] == "Encounter" and r["period"].get("end"))
    expected = (
        2 * by_type["Patient"]  # gender + birth
        + by_type["Encounter"]
        + ended
        + by_type["Condition"]
        + by_type["Observation"]
        - panels
        + components
        + by_type["MedicationRequest"]
        + by_type["AllergyIntolerance"]
        + by_type["DiagnosticReport"]
    )
    assert cohort["report_bulk"].n_events == expected


def test_labs_vitals_and_descriptions(cohort: dict[str, Any]) -> None:
    events = _events(cohort["bulk"])
    labs = events.filter(
        pl.col(s.CODE).str.starts_with("LOINC/") & pl.col(s.NUMERIC_VALUE).is_not_null() & pl.col(s.UNIT).is_not_null()
    )
    assert labs.height > 0
    glucose = events.filter(pl.col(s.CODE) == "LOINC/2345-7")
    assert glucose.height > 0
    assert set(glucose.get_column(s.UNIT).to_list()) == {"mg/dL"}

    # The blood pressure panel becomes one event per component, not one for the panel.
    for component in ("LOINC/8480-6", "LOINC/8462-4"):
        bp = events.filter(pl.col(s.CODE) == component)
        assert bp.height == N_PATIENTS
        assert bp.get_column(s.NUMERIC_VALUE).is_not_null().all()
        assert set(bp.get_column(s.UNIT).to_list()) == {"mmHg"}
    assert events.filter(pl.col(s.CODE) == "LOINC/85354-9").is_empty()

    codes = cohort["bulk"].codes()
    described = events.join(codes, on=s.CODE, how="left").get_column(s.DESCRIPTION).is_not_null()
    assert described.sum() >= 0.95 * events.height
    domains = dict(zip(codes.get_column(s.CODE), codes.get_column(s.DOMAIN), strict=True))
    assert domains["Visit/OP"] == s.Domain.VISIT
    assert domains["Gender/F"] == s.Domain.DEMOGRAPHIC
    assert domains["LOINC/2345-7"] == s.Domain.MEASUREMENT
    assert all(d == s.Domain.CONDITION for c, d in domains.items() if c.startswith("ICD10CM/"))
    drugs = {c for c in domains if c.startswith("RxNorm/") and domains[c] == s.Domain.DRUG}
    assert drugs, "MedicationRequests give RxNorm codes in the Drug domain"


def test_visit_ids_link_events(cohort: dict[str, Any]) -> None:
    events = _events(cohort["bulk"])
    starts = events.filter(pl.col(s.CODE) == "Visit/OP")
    ends = events.filter(pl.col(s.CODE) == s.VISIT_END_CODE)
    assert starts.height == ends.height == N_PATIENTS
    assert starts.get_column(s.VISIT_ID).is_not_null().all()
    assert set(ends.get_column(s.TEXT_VALUE).to_list()) == {"Visit/OP"}
    assert sorted(starts.get_column(s.VISIT_ID).to_list()) == sorted(ends.get_column(s.VISIT_ID).to_list())
    encounter_ids = [r["id"] for r in cohort["resources"] if r["resourceType"] == "Encounter"]
    assert set(starts.get_column(s.VISIT_ID).to_list()) == {visit_id_for(e) for e in encounter_ids}

    # Labs carry their encounter's visit id, the one of their own patient's visit.
    visit_of = dict(zip(starts.get_column(s.SUBJECT_ID), starts.get_column(s.VISIT_ID), strict=True))
    labs = events.filter(pl.col(s.CODE).str.starts_with("LOINC/") & pl.col(s.VISIT_ID).is_not_null())
    assert labs.height > 0
    assert all(visit_of[r[s.SUBJECT_ID]] == r[s.VISIT_ID] for r in labs.iter_rows(named=True))


def test_bundles_and_bulk_give_the_same_dataset(cohort: dict[str, Any]) -> None:
    bulk, bundles = _events(cohort["bulk"]), _events(cohort["bundles"])
    assert bulk.equals(bundles)
    assert cohort["bulk"].codes().equals(cohort["bundles"].codes())
    bulk_ids, bundle_ids = cohort["bulk"].source_ids(), cohort["bundles"].source_ids()
    assert bulk_ids is not None and bundle_ids is not None and bulk_ids.equals(bundle_ids)
    report_bundles = cohort["report_bundles"]
    assert report_bundles.counts.pop("Bundle") == N_PATIENTS
    assert report_bundles.counts == cohort["report_bulk"].counts
    assert report_bundles.n_subjects == cohort["report_bulk"].n_subjects


def test_history_has_one_visit_id_per_encounter(tmp_path: Path) -> None:
    bundle = generate_history(seed=SEED, visits=3)
    (tmp_path / "history.json").write_text(to_json(bundle), encoding="utf-8")
    report = ingest_fhir([tmp_path / "history.json"], tmp_path / "out")
    events = _events(MedsDataset.open(tmp_path / "out"))
    starts = events.filter(pl.col(s.CODE) == "Visit/OP").sort(s.TIME)
    assert report.n_subjects == 1 and starts.height == 3
    systolic = events.filter(pl.col(s.CODE) == "LOINC/8480-6").sort(s.TIME)
    assert systolic.get_column(s.VISIT_ID).to_list() == starts.get_column(s.VISIT_ID).to_list()


def test_imperfect_bundles_are_counted_not_dropped(tmp_path: Path) -> None:
    clean = [json.loads(to_json(b)) for b in generate_cohort(count=5, seed=SEED)]
    dirty: list[dict[str, Any]] = []
    defects: list[tuple[int, Any]] = []
    for index, bundle in enumerate(clean):
        bad, applied = inject_defects(
            bundle, Imperfection(unknown_code_system=0.3, unparseable_value=0.3), seed=SEED + index
        )
        dirty.append(bad)
        defects.extend((index, d) for d in applied)
    clean_report, dirty_report = IngestReport(tmp_path), IngestReport(tmp_path)
    fhir_to_events(clean, clean_report)
    dirty_events, _, _ = fhir_to_events(dirty, dirty_report)

    recoded = [(i, d) for i, d in defects if d.kind == "unknown_code_system"]
    assert recoded, "the seed should hit some codes"
    # A blood pressure panel's own code is never used (its components are), so it is not counted.
    examined = [(i, d) for i, d in recoded if not dirty[i]["entry"][d.entry_index]["resource"].get("component")]
    assert dirty_report.skipped[f"unmapped system {LOCAL_SYSTEM}"] == len(examined)
    lost = sum(n for reason, n in dirty_report.skipped.items() if reason.endswith("no mapped code"))
    assert 0 < lost <= len(examined)
    assert dirty_report.n_events == clean_report.n_events - lost

    unparseable = [d for _, d in defects if d.kind == "unparseable_value"]
    texts = dirty_events.filter(
        pl.col(s.TEXT_VALUE).is_in(["not detected", "<0.1", "QNS", "see comment"]) & pl.col(s.NUMERIC_VALUE).is_null()
    )
    # Each replaced value is still an event, with the typed text as its value (unless its code was
    # also replaced, in which case it was counted under "no mapped code").
    assert len(unparseable) - lost <= texts.height <= len(unparseable)


# --- hand-written resources ----------------------------------------------------------------------


def _patient(pid: str = "p1", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1970-05-06", **extra}


def _observation(when: str, code: str = "2345-7", pid: str = "p1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": "Glucose"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        **extra,
    }


def _write_ndjson(path: Path, resources: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in resources), encoding="utf-8")
    return path


def _convert(resources: list[dict[str, Any]]) -> tuple[pl.DataFrame, pl.DataFrame, IngestReport]:
    report = IngestReport(Path("unused"))
    events, codes, _ = fhir_to_events(resources, report)
    return events, codes, report


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = _write_ndjson(tmp_path / "in" / "Patient.ndjson", [_patient("p1"), _patient("p2")])
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"resourceType": "Patient", "id": \n')
    with pytest.raises(FhirError, match=r"Patient\.ndjson:3: malformed JSON"):
        ingest_fhir([tmp_path / "in"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*")), "no scratch folder is left behind"


def test_malformed_json_document_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    path.write_text('{\n  "resourceType": "Bundle",\n  "entry": [,]\n}\n', encoding="utf-8")
    with pytest.raises(FhirError, match=r"bundle\.json:3: malformed JSON"):
        ingest_fhir([path], tmp_path / "out")


def test_times_aware_naive_and_partial() -> None:
    assert parse_fhir_time("2020-01-02T10:00:00+02:00") == dt.datetime(2020, 1, 2, 8, 0)
    assert parse_fhir_time("2020-01-02T10:00:00Z") == dt.datetime(2020, 1, 2, 10, 0)
    assert parse_fhir_time("2020-01-02T10:00:00") == dt.datetime(2020, 1, 2, 10, 0)
    assert parse_fhir_time("2020-01-02T10:00:00.123456789-05:00") == dt.datetime(2020, 1, 2, 15, 0, 0, 123456)
    assert parse_fhir_time("2020-01-02") == dt.datetime(2020, 1, 2)
    assert parse_fhir_time("2020-03") == dt.datetime(2020, 3, 1)
    assert parse_fhir_time("2020") == dt.datetime(2020, 1, 1)
    assert parse_fhir_time("yesterday") is None

    events, _, report = _convert(
        [
            _patient(),
            _observation("2020-01-02T10:00:00+02:00"),
            _observation("2020-01-03T10:00:00"),
            _observation("2020-01-04"),
            _observation("soon"),
            {**_observation("x"), "effectiveDateTime": None},
        ]
    )
    times = events.filter(pl.col(s.CODE) == "LOINC/2345-7").get_column(s.TIME).to_list()
    assert times == [dt.datetime(2020, 1, 2, 8), dt.datetime(2020, 1, 3, 10), dt.datetime(2020, 1, 4)]
    assert report.skipped == {"unparseable time": 1, "no time": 1}


def test_unknown_resource_type_is_counted(tmp_path: Path) -> None:
    _write_ndjson(tmp_path / "in" / "Mixed.ndjson", [_patient(), {"resourceType": "Spaceship", "id": "x"}])
    report = ingest_fhir([tmp_path / "in"], tmp_path / "out")
    assert report.counts == {"Patient": 1, "Spaceship": 1}
    assert report.skipped == {"unsupported resource type Spaceship": 1}
    assert report.n_subjects == 1 and report.n_events == 2


def test_unmapped_system_falls_back_and_is_counted() -> None:
    local = {"system": "http://hospital.example/codes", "code": "X1", "display": "Local sugar"}
    snomed = {"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes mellitus type 2"}
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/p1"},
        "recordedDate": "2021-02-03",
    }
    events, codes, report = _convert(
        [
            _patient(),
            {**condition, "code": {"coding": [local, snomed]}},
            {**condition, "code": {"coding": [local], "text": "only local"}},
        ]
    )
    assert events.filter(pl.col(s.CODE).str.starts_with("SNOMED/")).get_column(s.CODE).to_list() == ["SNOMED/44054006"]
    assert report.skipped == {
        "unmapped system http://hospital.example/codes": 2,
        "Condition: no mapped code": 1,
    }
    row = codes.filter(pl.col(s.CODE) == "SNOMED/44054006").row(0, named=True)
    assert row[s.DESCRIPTION] == "Diabetes mellitus type 2" and row[s.DOMAIN] == s.Domain.CONDITION


def test_duplicate_patient_conflict_names_both_places(tmp_path: Path) -> None:
    _write_ndjson(tmp_path / "a" / "Patient.ndjson", [_patient("p1")])
    _write_ndjson(tmp_path / "b" / "Patient.ndjson", [_patient("p2"), _patient("p1", birthDate="1980-01-01")])
    with pytest.raises(FhirError, match="p1") as info:
        ingest_fhir([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    message = str(info.value)
    assert str(tmp_path / "a" / "Patient.ndjson") + ":1" in message
    assert str(tmp_path / "b" / "Patient.ndjson") + ":2" in message
    assert not (tmp_path / "out").exists()

    # The same Patient twice (e.g. in two exports) is only counted.
    report = ingest_fhir([tmp_path / "a", tmp_path / "a"], tmp_path / "out2")
    assert report.skipped == {"duplicate Patient (identical)": 1}
    assert report.n_subjects == 1


def test_no_patient_is_an_error(tmp_path: Path) -> None:
    _write_ndjson(tmp_path / "in" / "Observation.ndjson", [_observation("2020-01-01")])
    with pytest.raises(FhirError, match="no Patient resources found in"):
        ingest_fhir([tmp_path / "in"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_ingest_keeps_the_previous_dataset(tmp_path: Path) -> None:
    good = _write_ndjson(tmp_path / "good.ndjson", [_patient(), _observation("2020-01-01")])
    ingest_fhir([good], tmp_path / "out")
    bad = _write_ndjson(tmp_path / "bad.ndjson", [_observation("2020-01-01")])
    with pytest.raises(FhirError):
        ingest_fhir([bad], tmp_path / "out", overwrite=True)
    assert _events(MedsDataset.open(tmp_path / "out")).height == 3
    with pytest.raises(FileExistsError):
        ingest_fhir([good], tmp_path / "out")


def test_unknown_patient_and_missing_subject_are_counted() -> None:
    events, _, report = _convert(
        [_patient(), _observation("2020-01-01", pid="ghost"), {**_observation("2020-01-01"), "subject": None}]
    )
    assert report.skipped == {"unknown patient": 1, "no subject": 1}
    assert events.height == 2


def test_patient_demographics() -> None:
    race = {
        "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
        "extension": [
            {
                "url": "ombCategory",
                "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3"},
            },
            {
                "url": "ombCategory",
                "valueCoding": {
                    "system": "urn:oid:2.16.840.1.113883.6.238",
                    "code": "2131-1",
                    "display": "Other",
                },
            },
            {"url": "text", "valueString": "White"},
        ],
    }
    ethnicity = {
        "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
        "extension": [{"url": "ombCategory", "valueCoding": {"code": "2135-2", "display": "Hispanic or Latino"}}],
    }
    events, codes, _ = _convert(
        [_patient(gender="male", deceasedDateTime="2024-02-03T04:05:06Z", extension=[race, ethnicity])]
    )
    assert events.filter(pl.col(s.TIME).is_null()).get_column(s.CODE).sort().to_list() == [
        "Ethnicity/Hispanic",
        "Gender/M",
        "Race/2131-1",
        "Race/5",
    ]
    assert events.filter(pl.col(s.CODE) == s.BIRTH_CODE).get_column(s.TIME).to_list() == [dt.datetime(1970, 5, 6)]
    assert events.filter(pl.col(s.CODE) == s.DEATH_CODE).get_column(s.TIME).to_list() == [
        dt.datetime(2024, 2, 3, 4, 5, 6)
    ]
    described = dict(zip(codes.get_column(s.CODE), codes.get_column(s.DESCRIPTION), strict=True))
    assert described["Gender/M"] == "MALE"
    assert described["Race/5"] == "White"
    assert described["Race/2131-1"] == "Other"


def test_encounter_classes_and_visit_links() -> None:
    def encounter(eid: str, cls: str, end: str | None) -> dict[str, Any]:
        period = {"start": "2022-01-01T08:00:00Z", **({"end": end} if end else {})}
        return {
            "resourceType": "Encounter",
            "id": eid,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": cls},
            "subject": {"reference": "https://fhir.example/Patient/p1"},
            "period": period,
        }

    events, codes, _ = _convert(
        [
            _patient(),
            encounter("e1", "IMP", "2022-01-05T08:00:00Z"),
            encounter("e2", "EMER", None),
            encounter("e3", "HH", None),
            _observation("2022-01-02", encounter={"reference": "Encounter/e1"}),
            {
                "resourceType": "Procedure",
                "status": "completed",
                "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99213"}]},
                "subject": {"reference": "Patient/p1"},
                "context": {"reference": "Encounter/e2"},
                "performedPeriod": {"start": "2022-01-01T09:00:00Z"},
            },
        ]
    )
    by_code = {r[s.CODE]: r for r in events.iter_rows(named=True)}
    assert by_code["Visit/IP"][s.VISIT_ID] == visit_id_for("e1")
    assert by_code[s.VISIT_END_CODE][s.TEXT_VALUE] == "Visit/IP"
    assert by_code[s.VISIT_END_CODE][s.VISIT_ID] == visit_id_for("e1")
    assert by_code["Visit/ER"][s.VISIT_ID] == visit_id_for("e2")
    assert by_code["Visit/HH"][s.VISIT_ID] == visit_id_for("e3")
    assert by_code["LOINC/2345-7"][s.VISIT_ID] == visit_id_for("e1")
    assert by_code["CPT4/99213"][s.VISIT_ID] == visit_id_for("e2")
    described = dict(zip(codes.get_column(s.CODE), codes.get_column(s.DESCRIPTION), strict=True))
    assert described["Visit/IP"] == "Inpatient Visit"
    assert described["Visit/ER"] == "Emergency Room Visit"


def test_observation_values() -> None:
    events, _, _ = _convert(
        [
            _patient(),
            _observation(
                "2020-01-01",
                code="2160-0",
                valueQuantity={"value": 1.4, "unit": "mg/dL", "system": "http://unitsofmeasure.org"},
                referenceRange=[{"low": {"value": 0.6}, "high": {"value": 1.2}}],
            ),
            _observation("2020-01-02", code="72166-2", valueCodeableConcept={"text": "Never smoker"}),
            _observation("2020-01-03", code="1111-1", valueString="trace"),
            _observation("2020-01-04", code="2222-2", valueBoolean=True),
            _observation("2020-01-05", code="3333-3", valueQuantity={"value": 5, "code": "mmol/L"}),
        ]
    )
    rows = {r[s.CODE]: r for r in events.iter_rows(named=True)}
    creatinine = rows["LOINC/2160-0"]
    assert creatinine[s.NUMERIC_VALUE] == pytest.approx(1.4)
    assert creatinine[s.UNIT] == "mg/dL"
    assert (creatinine[s.REF_LOW], creatinine[s.REF_HIGH]) == (pytest.approx(0.6), pytest.approx(1.2))
    assert rows["LOINC/72166-2"][s.TEXT_VALUE] == "Never smoker"
    assert rows["LOINC/1111-1"][s.TEXT_VALUE] == "trace"
    assert rows["LOINC/2222-2"][s.TEXT_VALUE] == "true"
    assert rows["LOINC/3333-3"][s.UNIT] == "mmol/L"


def test_medication_references() -> None:
    metformin = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "860975"}]}
    insulin = {"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "0002-8215", "display": "insulin"}]}
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:aaaa", "resource": {k: v for k, v in _patient().items() if k != "id"}},
            {
                "fullUrl": "urn:uuid:m1",
                "resource": {
                    "resourceType": "MedicationAdministration",
                    "status": "completed",
                    "subject": {"reference": "urn:uuid:aaaa"},
                    "medicationReference": {"reference": "urn:uuid:med"},
                    "effectiveDateTime": "2020-01-01T00:00:00Z",
                },
            },
            {"fullUrl": "urn:uuid:med", "resource": {"resourceType": "Medication", "code": insulin}},
            {
                "fullUrl": "urn:uuid:m2",
                "resource": {
                    "resourceType": "MedicationStatement",
                    "status": "active",
                    "contained": [{"resourceType": "Medication", "id": "c1", "code": metformin}],
                    "subject": {"reference": "urn:uuid:aaaa"},
                    "medicationReference": {"reference": "#c1"},
                    "dateAsserted": "2020-02-01",
                },
            },
            {
                "fullUrl": "urn:uuid:m3",
                "resource": {
                    "resourceType": "MedicationRequest",
                    "subject": {"reference": "urn:uuid:aaaa"},
                    "medicationReference": {"reference": "Medication/missing"},
                    "authoredOn": "2020-03-01",
                },
            },
        ],
    }
    events, codes, report = _convert([bundle])
    drugs = events.filter(pl.col(s.TIME).is_not_null() & (pl.col(s.CODE) != s.BIRTH_CODE))
    assert drugs.get_column(s.CODE).to_list() == ["NDC/0002-8215", "RxNorm/860975"]
    assert set(drugs.get_column(s.SUBJECT_ID).to_list()) == {subject_id_for("aaaa")}
    assert report.skipped == {"unresolved medication reference": 1}
    assert codes.filter(pl.col(s.CODE) == "NDC/0002-8215").get_column(s.DOMAIN).to_list() == [s.Domain.DRUG]


def test_other_resource_types() -> None:
    events, codes, report = _convert(
        [
            _patient(),
            {
                "resourceType": "Immunization",
                "status": "completed",
                "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
                "patient": {"reference": "Patient/p1"},
                "occurrenceDateTime": "2021-10-01",
            },
            {
                "resourceType": "Immunization",
                "status": "not-done",
                "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "141"}]},
                "patient": {"reference": "Patient/p1"},
                "occurrenceDateTime": "2021-10-01",
            },
            {
                "resourceType": "AllergyIntolerance",
                "code": {
                    "coding": [{"system": "http://snomed.info/sct", "code": "91936005"}],
                    "text": "Penicillin",
                },
                "patient": {"reference": "Patient/p1"},
                "onsetDateTime": "2001",
            },
            {
                "resourceType": "DiagnosticReport",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2", "display": "CBC panel"}]},
                "subject": {"reference": "Patient/p1"},
                "issued": "2021-10-02T12:00:00+00:00",
            },
            {**_observation("2021-01-01"), "status": "entered-in-error"},
        ]
    )
    domains = dict(zip(codes.get_column(s.CODE), codes.get_column(s.DOMAIN), strict=True))
    assert domains["CVX/140"] == s.Domain.DRUG
    assert domains["SNOMED/91936005"] == s.Domain.ALLERGY
    assert domains["LOINC/58410-2"] == s.Domain.MEASUREMENT
    described = dict(zip(codes.get_column(s.CODE), codes.get_column(s.DESCRIPTION), strict=True))
    assert described["SNOMED/91936005"] == "Penicillin"
    assert report.skipped == {"Immunization: not-done": 1, "Observation: entered-in-error": 1}
    assert events.height == 5


def test_folders_gzip_single_resources_and_non_fhir_json(tmp_path: Path) -> None:
    """Folders are searched recursively; ndjson.gz and single-resource JSON are read; a JSON file
    that is not FHIR (a bulk export manifest) is counted, not fatal."""
    nested = tmp_path / "in" / "deep" / "er"
    nested.mkdir(parents=True)
    (tmp_path / "in" / "patient.json").write_text(json.dumps(_patient()), encoding="utf-8-sig")  # with a BOM
    with gzip.open(nested / "Observation.ndjson.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(_observation("2020-01-01")) + "\n\n" + json.dumps(_observation("2020-01-02")) + "\n")
    (tmp_path / "in" / "manifest.json").write_text(json.dumps({"transactionTime": "2020"}), encoding="utf-8")
    (tmp_path / "in" / "notes.txt").write_text("not read", encoding="utf-8")
    report = ingest_fhir([tmp_path / "in"], tmp_path / "out", dataset_name="tiny")
    assert report.counts == {"Patient": 1, "Observation": 2, "(no resourceType)": 1}
    assert report.skipped == {"not a FHIR resource (no resourceType)": 1}
    assert report.n_events == 4
    assert MedsDataset.open(tmp_path / "out").name == "tiny"
    assert report.seconds > 0
