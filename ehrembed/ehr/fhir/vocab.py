"""FHIR code systems and value sets mapped to MEDS vocabularies and codes."""

from __future__ import annotations

from ehrembed import schema as s

# --- vocabularies ------------------------------------------------------------------------------

SYSTEM_PREFIXES: dict[str, str] = {
    "http://loinc.org": "LOINC",
    "http://snomed.info/sct": "SNOMED",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-9-cm": "ICD9CM",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://www.ama-assn.org/go/cpt": "CPT4",
    "http://hl7.org/fhir/sid/ndc": "NDC",
    "http://www.cms.gov/Medicare/Coding/ICD10": "ICD10PCS",
    "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets": "HCPCS",
    "urn:oid:2.16.840.1.113883.6.238": "Race",
    # The same code systems under their OIDs, as older interfaces send them.
    "urn:oid:2.16.840.1.113883.6.1": "LOINC",
    "urn:oid:2.16.840.1.113883.6.96": "SNOMED",
    "urn:oid:2.16.840.1.113883.6.90": "ICD10CM",
    "urn:oid:2.16.840.1.113883.6.3": "ICD10",
    "urn:oid:2.16.840.1.113883.6.103": "ICD9CM",
    "urn:oid:2.16.840.1.113883.6.88": "RxNorm",
    "urn:oid:2.16.840.1.113883.12.292": "CVX",
    "urn:oid:2.16.840.1.113883.6.12": "CPT4",
    "urn:oid:2.16.840.1.113883.6.69": "NDC",
}
"""Code system URL → MEDS vocabulary prefix (OMOP ``vocabulary_id`` spelling)."""

UNITS_SYSTEM = "http://unitsofmeasure.org"

GENDER_CODES: dict[str, tuple[str, str]] = {
    "female": ("Gender/F", "FEMALE"),
    "male": ("Gender/M", "MALE"),
    "other": ("Gender/O", "OTHER"),
    "unknown": ("Gender/U", "UNKNOWN"),
}

US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
BIRTH_TIME_EXTENSION = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"

# OMB categories → the OMOP Race/Ethnicity concept codes the OMOP ingest emits, so a FHIR and an
# OMOP copy of one patient get the same demographic codes. Other CDC codes stay as they are.
OMB_CODES: dict[str, tuple[str, str]] = {
    "1002-5": ("Race/1", "American Indian or Alaska Native"),
    "2028-9": ("Race/2", "Asian"),
    "2054-5": ("Race/3", "Black or African American"),
    "2076-8": ("Race/4", "Native Hawaiian or Other Pacific Islander"),
    "2106-3": ("Race/5", "White"),
    "2135-2": ("Ethnicity/Hispanic", "Hispanic or Latino"),
    "2186-5": ("Ethnicity/Not Hispanic", "Not Hispanic or Latino"),
}

VISIT_CLASSES: dict[str, tuple[str, str]] = {
    "IMP": ("Visit/IP", "Inpatient Visit"),
    "ACUTE": ("Visit/IP", "Inpatient Visit"),
    "NONAC": ("Visit/IP", "Inpatient Visit"),
    "AMB": ("Visit/OP", "Outpatient Visit"),
    "EMER": ("Visit/ER", "Emergency Room Visit"),
}
UNKNOWN_VISIT = ("Visit/UNKNOWN", "Visit")

SPECIAL_CODES: dict[str, tuple[str, s.Domain]] = {
    s.BIRTH_CODE: ("Birth", s.Domain.DEMOGRAPHIC),
    s.DEATH_CODE: ("Death", s.Domain.DEMOGRAPHIC),
    s.VISIT_END_CODE: ("End of visit", s.Domain.VISIT),
}

MEASUREMENT_CATEGORIES = frozenset({"laboratory", "vital-signs", "imaging", "procedure", "exam"})

# Resources we read for reference data only (no event of their own).
REFERENCE_TYPES = frozenset({"Medication"})
