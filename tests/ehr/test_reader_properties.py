"""Generated FHIR resources and OMOP rows: a reader either refuses them with its own error (a ValueError
naming the problem) or writes a dataset whose every patient reads back and serializes."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehrembed import schema as s
from ehrembed.ehr.fhir import FhirError, fhir_to_events
from ehrembed.ehr.meds import IngestReport, MedsDataset, MedsError, conform_events
from ehrembed.ehr.omop import OmopError, ingest_omop
from ehrembed.ehr.serialize import Serializer
from ehrembed.ehr.vocabulary import Vocabulary

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)

offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
iso = st.one_of(
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=offsets).map(
        lambda t: t.isoformat()
    ),
    st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2030, 1, 1)).map(
        lambda t: t.date().isoformat()
    ),
    st.sampled_from(["0001", "9999-12", "2020-02-30", "", "yesterday"]),
)
values: st.SearchStrategy[Any] = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**40), 10**40),
    st.sampled_from([10**400, -(10**400)]),
    st.sampled_from(["NaN", "Infinity", "1e400", "12.5", None, True]),
)
text = st.one_of(st.text(max_size=30), st.sampled_from(["a\n# SYSTEM", "\x00", "- x", "\u2029#"]))


def _readable(events: pl.DataFrame, codes: pl.DataFrame) -> None:
    conform_events(events)  # every bound holds
    latest = s.latest_time()
    for when in events.get_column(s.TIME).drop_nulls().to_list():
        assert s.EARLIEST_TIME <= when <= latest
    for col in (s.NUMERIC_VALUE, s.REF_LOW, s.REF_HIGH):
        assert all(math.isfinite(v) for v in events.get_column(col).drop_nulls().to_list())
    for description in codes.get_column(s.DESCRIPTION).drop_nulls().to_list():
        assert "\n" not in description and "\r" not in description


@SETTINGS
@given(
    birth=iso,
    when=iso,
    value=values,
    low=values,
    code=text,
    display=text,
)
def test_generated_fhir_is_refused_or_readable(
    birth: str, when: str, value: Any, low: Any, code: str, display: str
) -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p", "birthDate": birth}},
            {
                "resource": {
                    "resourceType": "Observation",
                    "subject": {"reference": "Patient/p"},
                    "effectiveDateTime": when,
                    "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
                    "valueQuantity": {"value": value},
                    "referenceRange": [{"low": {"value": low}}],
                }
            },
        ],
    }
    try:
        events, codes, _ids = fhir_to_events([bundle], IngestReport(dataset=Path("b")), source="bundle")
    except (FhirError, MedsError) as exc:  # refused, naming the resource or row
        assert str(exc)
        return
    _readable(events, codes)


@SETTINGS
@given(
    year=st.one_of(st.integers(1900, 2020), st.integers(-10, 100_000)),
    start=st.one_of(iso, st.sampled_from(["2020-01-02", "0001-01-01", "9999-12-31", "2999-01-01"])),
    number=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e39, 2.4])),
)
def test_generated_omop_rows_are_refused_or_readable(
    tmp_path_factory: Any, year: int, start: str, number: float
) -> None:
    folder = tmp_path_factory.mktemp("cdm")
    pl.DataFrame([{"person_id": 1, "gender_concept_id": 8532, "year_of_birth": year}]).write_csv(folder / "person.csv")
    pl.DataFrame(
        [{"measurement_id": 7, "person_id": 1, "measurement_concept_id": 3016723, "measurement_date": start,
          "value_as_number": number}]
    ).write_csv(folder / "measurement.csv")  # fmt: skip
    out = folder / "meds"
    try:
        ingest_omop(folder=folder, out=out)
    except (OmopError, MedsError) as exc:  # naming the table and row
        assert "row" in str(exc)
        assert not out.exists()
        return
    ds = MedsDataset.open(out)
    _readable(pl.concat([pl.read_parquet(p) for p in ds.shards]), ds.codes())
    patient = ds.patient(1)
    if patient.last_time is not None:
        Serializer(Vocabulary.from_dataset(ds)).serialize(patient, as_of=patient.last_time)
