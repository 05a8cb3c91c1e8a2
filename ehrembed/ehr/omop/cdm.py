"""The OMOP CDM as the reader sees it: clinical tables and their columns, built-in concepts, domains, its error."""

from __future__ import annotations

from dataclasses import dataclass

from ehrembed import schema as s
from ehrembed.errors import InputError

UNKNOWN_VISIT_CODE = "Visit/UNKNOWN"


class OmopError(InputError):
    """The OMOP source is unusable as given; the message names the table, column or row."""


# Standard OMOP concepts that CDM extracts often lack in their concept table (Eunomia does).
BUILTIN_CONCEPTS: dict[int, tuple[str, str, str, str]] = {
    # concept_id: (vocabulary_id, concept_code, concept_name, domain)
    8507: ("Gender", "M", "MALE", s.Domain.DEMOGRAPHIC),
    8532: ("Gender", "F", "FEMALE", s.Domain.DEMOGRAPHIC),
    8521: ("Gender", "O", "OTHER", s.Domain.DEMOGRAPHIC),
    8551: ("Gender", "U", "UNKNOWN", s.Domain.DEMOGRAPHIC),
    8657: ("Race", "1", "American Indian or Alaska Native", s.Domain.DEMOGRAPHIC),
    8515: ("Race", "2", "Asian", s.Domain.DEMOGRAPHIC),
    8516: ("Race", "3", "Black or African American", s.Domain.DEMOGRAPHIC),
    8557: ("Race", "4", "Native Hawaiian or Other Pacific Islander", s.Domain.DEMOGRAPHIC),
    8527: ("Race", "5", "White", s.Domain.DEMOGRAPHIC),
    38003563: ("Ethnicity", "Hispanic", "Hispanic or Latino", s.Domain.DEMOGRAPHIC),
    38003564: ("Ethnicity", "Not Hispanic", "Not Hispanic or Latino", s.Domain.DEMOGRAPHIC),
    9201: ("Visit", "IP", "Inpatient Visit", s.Domain.VISIT),
    9202: ("Visit", "OP", "Outpatient Visit", s.Domain.VISIT),
    9203: ("Visit", "ER", "Emergency Room Visit", s.Domain.VISIT),
    262: ("Visit", "ERIP", "Emergency Room and Inpatient Visit", s.Domain.VISIT),
    581476: ("Visit", "IH", "Home Visit", s.Domain.VISIT),
    581477: ("Visit", "OMOP4822036", "Office Visit", s.Domain.VISIT),
    32037: ("Visit", "OMOP4822460", "Intensive Care", s.Domain.VISIT),
}

_DOMAIN_BY_OMOP = {
    **{d.value: d for d in s.Domain},
    "Condition": s.Domain.CONDITION,
    "Drug": s.Domain.DRUG,
    "Procedure": s.Domain.PROCEDURE,
    "Measurement": s.Domain.MEASUREMENT,
    "Observation": s.Domain.OBSERVATION,
    "Visit": s.Domain.VISIT,
    "Device": s.Domain.DEVICE,
    "Gender": s.Domain.DEMOGRAPHIC,
    "Race": s.Domain.DEMOGRAPHIC,
    "Ethnicity": s.Domain.DEMOGRAPHIC,
}


@dataclass(frozen=True)
class _Clinical:
    """How one OMOP event table maps onto MEDS columns (lower-case OMOP column names)."""

    table: str
    id_col: str
    concept: str
    source_concept: str | None
    datetime: str | None
    date: str
    domain: s.Domain
    numeric: str | None = None
    text: str | None = None
    value_concept: str | None = None
    unit_concept: str | None = None
    unit_source: str | None = None
    range_low: str | None = None
    range_high: str | None = None


CLINICAL_TABLES = (
    _Clinical(
        "condition_occurrence",
        "condition_occurrence_id",
        "condition_concept_id",
        "condition_source_concept_id",
        "condition_start_datetime",
        "condition_start_date",
        s.Domain.CONDITION,
    ),
    _Clinical(
        "drug_exposure",
        "drug_exposure_id",
        "drug_concept_id",
        "drug_source_concept_id",
        "drug_exposure_start_datetime",
        "drug_exposure_start_date",
        s.Domain.DRUG,
    ),
    _Clinical(
        "procedure_occurrence",
        "procedure_occurrence_id",
        "procedure_concept_id",
        "procedure_source_concept_id",
        "procedure_datetime",
        "procedure_date",
        s.Domain.PROCEDURE,
    ),
    _Clinical(
        "measurement",
        "measurement_id",
        "measurement_concept_id",
        "measurement_source_concept_id",
        "measurement_datetime",
        "measurement_date",
        s.Domain.MEASUREMENT,
        numeric="value_as_number",
        value_concept="value_as_concept_id",
        unit_concept="unit_concept_id",
        unit_source="unit_source_value",
        range_low="range_low",
        range_high="range_high",
    ),
    _Clinical(
        "observation",
        "observation_id",
        "observation_concept_id",
        "observation_source_concept_id",
        "observation_datetime",
        "observation_date",
        s.Domain.OBSERVATION,
        numeric="value_as_number",
        text="value_as_string",
        value_concept="value_as_concept_id",
        unit_concept="unit_concept_id",
        unit_source="unit_source_value",
    ),
    _Clinical(
        "device_exposure",
        "device_exposure_id",
        "device_concept_id",
        "device_source_concept_id",
        "device_exposure_start_datetime",
        "device_exposure_start_date",
        s.Domain.DEVICE,
    ),
)

_REQUIRED = {
    "person": ("person_id", "gender_concept_id", "year_of_birth"),
    "visit_occurrence": ("visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date"),
    "death": ("person_id", "death_date"),
    **{c.table: ("person_id", c.concept, c.date) for c in CLINICAL_TABLES},
}
