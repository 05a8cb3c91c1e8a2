"""FHIR R4 → MEDS, from bulk-export ndjson, Bundle JSON or single-resource JSON files.

Each clinical resource becomes one MEDS event (an Observation with components becomes one event
per component). Codes are ``{vocabulary}/{code}`` from the first coding whose system we know
(``http://loinc.org`` → ``LOINC``), so FHIR and OMOP sources share one code space; the coding's
``display`` becomes the code's description. Patients give ``MEDS_BIRTH``, ``MEDS_DEATH`` and
static ``Gender/…``, ``Race/…``, ``Ethnicity/…`` events; Encounters give a visit start event
(``Visit/IP``, ``Visit/OP``, ``Visit/ER``…) and ``MEDS_VISIT_END``, both carrying ``visit_id``,
and every resource that names its encounter carries the same ``visit_id``.

Identity: ``subject_id`` is always a hash of the Patient's logical id (:func:`subject_id_for`),
never the id itself, even when that id is numeric, so one rule covers every server; the mapping
is kept in ``metadata/subject_source_ids.parquet``. ``visit_id`` is the same hash of the
Encounter id (:func:`visit_id_for`). Resources in a transaction Bundle often have no ``id``;
their id is then taken from the entry's ``fullUrl`` (``urn:uuid:<id>`` → ``<id>``), which is the
id a bulk export of the same data carries, so both forms of one dataset give the same ids.

Reading is one streaming pass; references (``Patient/x``, ``urn:uuid:…``, absolute URLs) are
resolved at the end, so a resource may refer to one that comes later or sits in another file.
Nothing is dropped silently: every resource or coding left out is counted in
``IngestReport.skipped`` by reason. A second copy of a resource id is skipped (counted); a
second Patient with the same id but different content is an error naming both places.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import IngestReport, conform_events, write_dataset
from ehrembed.ehr.text import one_line
from ehrembed.errors import InputError

log = logging.getLogger(__name__)

ETL_NAME = "ehrembed.ehr.fhir"


class FhirError(InputError):
    """The FHIR input is unusable as given; the message names the file (and line or entry)."""


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


# --- ids -----------------------------------------------------------------------------------------


def stable_id(kind: str, source_id: str) -> int:
    """A deterministic non-negative int64 for ``kind/source_id`` (first 8 bytes of SHA-256)."""
    digest = hashlib.sha256(f"{kind}/{source_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def subject_id_for(patient_id: str) -> int:
    """MEDS ``subject_id`` of a FHIR ``Patient.id``; hashed even when the id is numeric."""
    return stable_id("Patient", patient_id)


def visit_id_for(encounter_id: str) -> int:
    """MEDS ``visit_id`` of a FHIR ``Encounter.id``."""
    return stable_id("Encounter", encounter_id)


# --- times ---------------------------------------------------------------------------------------

_YEAR = re.compile(r"^\d{4}$")
_YEAR_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def parse_fhir_time(value: Any, field: str = "time") -> dt.datetime | None:
    """MEDS time of a FHIR date/dateTime/instant; None if it cannot be read.

    ``2020`` → Jan 1, ``2020-03`` → Mar 1, ``2020-03-04`` → midnight; times with an offset are
    converted to UTC and made naive; naive times are kept as given. A readable time outside the
    supported range raises InputRangeError naming ``field`` (the resource is refused, not skipped).
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        if _YEAR.match(text):
            parsed = dt.datetime(int(text), 1, 1)
        elif match := _YEAR_MONTH.match(text):
            parsed = dt.datetime(int(match[1]), int(match[2]), 1)
        else:
            parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return s.valid_time(parsed, field)


# --- reading files -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    """One resource plus where it came from (for error messages) and its Bundle fullUrl."""

    resource: dict[str, Any]
    location: str
    full_url: str | None = None


def _files(paths: Sequence[Path]) -> list[Path]:
    """Input files: given files as is, folders searched recursively for ndjson/json files."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and not p.name.startswith(".") and _is_fhir_name(p.name)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise FhirError(f"{path}: no such file or folder")
    return found


def _is_fhir_name(name: str) -> bool:
    return name.endswith((".ndjson", ".ndjson.gz", ".json", ".json.gz"))


def _open_text(path: Path) -> TextIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")  # -sig: tolerate a byte-order mark


def _read_file(path: Path) -> Iterator[_Item]:
    """Resources of one file: ndjson (one per line) or a JSON document (a Bundle or a resource).

    Raises FhirError naming the file, and the 1-based line for malformed JSON.
    """
    try:
        ndjson = path.name.endswith((".ndjson", ".ndjson.gz"))
        with _open_text(path) as fh:
            if ndjson:
                yield from _read_lines(fh, path)
                return
            text = fh.read()
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise FhirError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several documents: ndjson under a .json name
            yield from _read_lines(text.splitlines(), path)
            return
        raise FhirError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(document, dict):
        raise FhirError(f"{path}: expected a JSON object (a FHIR resource or Bundle)")
    yield _Item(document, str(path))


def _read_lines(lines: Iterable[str], path: Path) -> Iterator[_Item]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            resource = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FhirError(f"{path}:{lineno}: malformed JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(resource, dict):
            raise FhirError(f"{path}:{lineno}: expected a JSON object (a FHIR resource)")
        yield _Item(resource, f"{path}:{lineno}")


def _expand(item: _Item) -> Iterator[_Item]:
    """The item itself, or for a Bundle the Bundle and then its entries (recursively)."""
    yield item
    if item.resource.get("resourceType") != "Bundle":
        return
    for index, entry in enumerate(item.resource.get("entry") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue  # e.g. a DELETE in a transaction: no resource, nothing to ingest
        full_url = entry.get("fullUrl")
        yield from _expand(
            _Item(
                entry["resource"],
                f"{item.location} entry[{index}]",
                full_url if isinstance(full_url, str) else None,
            )
        )


# --- references ----------------------------------------------------------------------------------


def _ref_key(reference: Any) -> str | None:
    """Canonical key of a reference: ``Type/id`` for relative or absolute URLs, else as given."""
    if isinstance(reference, dict):
        reference = reference.get("reference")
    if not isinstance(reference, str) or not reference:
        return None
    ref = reference.strip()
    if ref.startswith(("urn:", "#")):
        return ref
    parts = [p for p in ref.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2:
        return f"{parts[-2]}/{parts[-1]}"
    return ref


def _own_id(item: _Item) -> str | None:
    """A resource's logical id, or the one its Bundle ``fullUrl`` implies."""
    rid = item.resource.get("id")
    if isinstance(rid, str) and rid:
        return rid
    if item.full_url:
        if item.full_url.startswith("urn:uuid:"):
            return item.full_url.removeprefix("urn:uuid:")
        if item.full_url.startswith("urn:oid:"):
            return item.full_url.removeprefix("urn:oid:")
        return item.full_url.rstrip("/").rsplit("/", 1)[-1] or None
    return None


# --- accumulating rows ---------------------------------------------------------------------------


@dataclass
class _Rows:
    """Column lists of the events read so far, plus what is needed to resolve references."""

    report: IngestReport
    subject_ref: list[str | None] = field(default_factory=list)
    time: list[dt.datetime | None] = field(default_factory=list)
    code: list[str | None] = field(default_factory=list)
    numeric_value: list[float | None] = field(default_factory=list)
    text_value: list[str | None] = field(default_factory=list)
    unit: list[str | None] = field(default_factory=list)
    visit_ref: list[str | None] = field(default_factory=list)
    ref_low: list[float | None] = field(default_factory=list)
    ref_high: list[float | None] = field(default_factory=list)
    resource_no: list[int] = field(default_factory=list)
    # code → (description, domain); first non-empty description and first domain win
    codes: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    # Patient key ``Patient/<id>`` → (id, location)
    patients: dict[str, tuple[str, str]] = field(default_factory=dict)
    # fullUrl → ``Type/id``
    urls: dict[str, str] = field(default_factory=dict)
    # ``Type/id`` → (content digest for Patients, location) for duplicate detection
    seen: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    # Medication key → (code, description); rows waiting for one: (row, key)
    medications: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    pending_medications: list[tuple[int, str]] = field(default_factory=list)
    n_resources: int = 0

    def add(
        self,
        subject: str | None,
        when: dt.datetime | None,
        code: str | None,
        *,
        numeric: float | None = None,
        text: str | None = None,
        unit: str | None = None,
        visit: str | None = None,
        low: float | None = None,
        high: float | None = None,
    ) -> int:
        self.subject_ref.append(subject)
        self.time.append(when)
        self.code.append(code)
        self.numeric_value.append(numeric)
        self.text_value.append(text)
        self.unit.append(unit)
        self.visit_ref.append(visit)
        self.ref_low.append(low)
        self.ref_high.append(high)
        self.resource_no.append(self.n_resources)
        return len(self.code) - 1

    def describe(self, code: str, description: str | None, domain: str) -> None:
        known = self.codes.get(code)
        if known is None:
            self.codes[code] = (description or None, domain)
        elif not known[0] and description:
            self.codes[code] = (description, known[1])


# --- code picking --------------------------------------------------------------------------------


def _pick_code(concept: Any, rows: _Rows) -> tuple[str, str | None] | None:
    """``(PREFIX/code, description)`` from the first coding with a known system, else None.

    Codings with unknown systems before the chosen one are counted as ``unmapped system <url>``.
    """
    if not isinstance(concept, dict):
        return None
    text = concept.get("text") if isinstance(concept.get("text"), str) else None
    for coding in concept.get("coding") or []:
        if not isinstance(coding, dict):
            continue
        system = coding.get("system")
        code = coding.get("code")
        if not isinstance(code, str) or not code.strip():
            continue
        if not isinstance(system, str) or not system:
            rows.report.skip("coding without system")
            continue
        prefix = SYSTEM_PREFIXES.get(system.strip().rstrip("/"))
        if prefix is None:
            rows.report.skip(f"unmapped system {system}")
            continue
        display = coding.get("display")
        description = display if isinstance(display, str) and display.strip() else text
        return f"{prefix}/{one_line(code, 200)}", (one_line(description) if description else None)
    return None


def _coded_event(
    rows: _Rows,
    rtype: str,
    concept: Any,
    domain: str,
    subject: str | None,
    when: dt.datetime | None,
    **values: Any,
) -> bool:
    """Add one event coded from ``concept``; count it as skipped if no coding maps."""
    picked = _pick_code(concept, rows)
    if picked is None:
        rows.report.skip(f"{rtype}: no mapped code")
        return False
    code, description = picked
    rows.describe(code, description, domain)
    rows.add(subject, when, code, **values)
    return True


# --- resource handlers ---------------------------------------------------------------------------


def _first_time(resource: dict[str, Any], rows: _Rows, *paths: str) -> tuple[bool, dt.datetime | None]:
    """The first present time among dotted ``paths``; (False, None) after counting a skip."""
    for path in paths:
        value: Any = resource
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None or value == "":
            continue
        parsed = parse_fhir_time(value, path)
        if parsed is None:
            rows.report.skip("unparseable time")
            return False, None
        return True, parsed
    rows.report.skip("no time")
    return False, None


def _subject(resource: dict[str, Any]) -> str | None:
    return _ref_key(resource.get("subject") or resource.get("patient"))


def _encounter(resource: dict[str, Any]) -> str | None:
    return _ref_key(resource.get("encounter") or resource.get("context"))


def _number(value: Any, field: str) -> float | None:
    """A FHIR decimal as a float; None if it is not a number; InputRangeError unless finite float32."""
    if isinstance(value, bool):
        return None
    if not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:  # not a number: kept as text by the caller
        return None
    except OverflowError:  # an integer beyond any float
        number = math.inf
    return s.valid_float32(number, field)


def _patient(rows: _Rows, item: _Item) -> None:
    res = item.resource
    pid = _own_id(item)
    if pid is None:
        rows.report.skip("Patient without id")
        return
    key = f"Patient/{pid}"
    rows.patients.setdefault(key, (pid, item.location))
    gender = res.get("gender")
    if isinstance(gender, str) and gender in GENDER_CODES:
        gender_code, gender_text = GENDER_CODES[gender]
        rows.describe(gender_code, gender_text, s.Domain.DEMOGRAPHIC)
        rows.add(key, None, gender_code)
    elif gender is not None:
        rows.report.skip("Patient: unknown gender value")
    birth = res.get("birthDate")
    birth_extensions = res.get("_birthDate") or {}
    for ext in birth_extensions.get("extension") or [] if isinstance(birth_extensions, dict) else []:
        if isinstance(ext, dict) and ext.get("url") == BIRTH_TIME_EXTENSION and ext.get("valueDateTime"):
            birth = ext["valueDateTime"]  # the exact time of birth, where the source has it
    if birth:
        born = parse_fhir_time(birth, "birthDate")
        if born is None:
            rows.report.skip("unparseable time")
        else:
            rows.add(key, born, s.BIRTH_CODE)
    if res.get("deceasedDateTime"):
        died = parse_fhir_time(res["deceasedDateTime"], "deceasedDateTime")
        if died is None:
            rows.report.skip("unparseable time")
        else:
            rows.add(key, died, s.DEATH_CODE)
    elif res.get("deceasedBoolean") is True:
        rows.report.skip("Patient: deceased without time")
    for ext in res.get("extension") or []:
        if not isinstance(ext, dict) or ext.get("url") not in (US_CORE_RACE, US_CORE_ETHNICITY):
            continue
        vocab = "Race" if ext["url"] == US_CORE_RACE else "Ethnicity"
        for sub in ext.get("extension") or []:
            if not isinstance(sub, dict) or sub.get("url") != "ombCategory":
                continue
            coding = sub.get("valueCoding")
            code = coding.get("code") if isinstance(coding, dict) else None
            if not isinstance(code, str) or not code:
                continue
            mapped = OMB_CODES.get(code)
            if mapped is not None and mapped[0].startswith(vocab):
                rows.describe(mapped[0], mapped[1], s.Domain.DEMOGRAPHIC)
                rows.add(key, None, mapped[0])
            else:
                assert isinstance(coding, dict)
                rows.describe(f"{vocab}/{code}", coding.get("display"), s.Domain.DEMOGRAPHIC)
                rows.add(key, None, f"{vocab}/{code}")


def _encounter_resource(rows: _Rows, item: _Item) -> None:
    res = item.resource
    eid = _own_id(item)
    if eid is None:
        rows.report.skip("Encounter without id")
        return
    ok, start = _first_time(res, rows, "period.start", "actualPeriod.start")
    if not ok:
        return
    visit_class: Any = res.get("class")
    if isinstance(visit_class, list):  # R5: a list of CodeableConcepts
        first = visit_class[0] if visit_class else {}
        visit_class = (first.get("coding") or [{}])[0] if isinstance(first, dict) else {}
    if not isinstance(visit_class, dict):
        visit_class = {}
    class_code = visit_class.get("code")
    if isinstance(class_code, str) and class_code:
        code, description = VISIT_CLASSES.get(class_code, (f"Visit/{class_code}", ""))
        description = description or str(visit_class.get("display") or class_code)
    else:
        code, description = UNKNOWN_VISIT
    rows.describe(code, description, s.Domain.VISIT)
    subject = _subject(res)
    key = f"Encounter/{eid}"
    rows.add(subject, start, code, visit=key)
    end_value = (res.get("period") or res.get("actualPeriod") or {}).get("end")
    if end_value:
        end = parse_fhir_time(end_value, "period.end")
        if end is None:
            rows.report.skip("unparseable time")
        else:
            rows.add(subject, end, s.VISIT_END_CODE, text=code, visit=key)


def _condition(rows: _Rows, item: _Item) -> None:
    res = item.resource
    status = _status_code(res.get("verificationStatus"))
    if status in ("refuted", "entered-in-error"):
        rows.report.skip(f"Condition: {status}")
        return
    ok, when = _first_time(res, rows, "onsetDateTime", "recordedDate", "onsetPeriod.start")
    if ok:
        _coded_event(rows, "Condition", res.get("code"), s.Domain.CONDITION, _subject(res), when, visit=_encounter(res))


def _status_code(concept: Any) -> str | None:
    if isinstance(concept, str):
        return concept
    if isinstance(concept, dict):
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                return str(coding["code"])
    return None


def _observation_values(node: dict[str, Any]) -> dict[str, Any]:
    """numeric/text/unit/reference-range keyword values of an Observation or a component."""
    values: dict[str, Any] = {}
    quantity = node.get("valueQuantity")
    if isinstance(quantity, dict):
        number = _number(quantity.get("value"), "valueQuantity.value")
        values["numeric"] = number
        if number is None and quantity.get("value") is not None:
            values["text"] = str(quantity.get("value"))
        elif quantity.get("comparator"):
            values["text"] = f"{quantity['comparator']}{quantity.get('value')}"
        unit = quantity.get("unit") or quantity.get("code")
        values["unit"] = unit if isinstance(unit, str) and unit else None
    elif isinstance(node.get("valueCodeableConcept"), dict):
        concept = node["valueCodeableConcept"]
        display = concept.get("text")
        for coding in concept.get("coding") or []:
            if not display and isinstance(coding, dict):
                display = coding.get("display") or coding.get("code")
        values["text"] = display if isinstance(display, str) and display else None
    elif isinstance(node.get("valueString"), str):
        values["text"] = node["valueString"]
    elif isinstance(node.get("valueBoolean"), bool):
        values["text"] = "true" if node["valueBoolean"] else "false"
    elif "valueInteger" in node:
        values["numeric"] = _number(node["valueInteger"], "valueInteger")
    elif isinstance(node.get("valueDateTime"), str):
        values["text"] = node["valueDateTime"]
    ranges = node.get("referenceRange")
    if isinstance(ranges, list) and ranges and isinstance(ranges[0], dict):
        values["low"] = _number((ranges[0].get("low") or {}).get("value"), "referenceRange.low.value")
        values["high"] = _number((ranges[0].get("high") or {}).get("value"), "referenceRange.high.value")
    return values


def _observation_domain(res: dict[str, Any], values: dict[str, Any]) -> str:
    for category in res.get("category") or []:
        for coding in (category or {}).get("coding") or []:
            if isinstance(coding, dict) and coding.get("code") in MEASUREMENT_CATEGORIES:
                return s.Domain.MEASUREMENT
    return s.Domain.MEASUREMENT if values.get("numeric") is not None else s.Domain.OBSERVATION


def _observation(rows: _Rows, item: _Item) -> None:
    res = item.resource
    if res.get("status") in ("entered-in-error", "cancelled"):
        rows.report.skip(f"Observation: {res['status']}")
        return
    ok, when = _first_time(res, rows, "effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued")
    if not ok:
        return
    subject, visit = _subject(res), _encounter(res)
    components = [c for c in res.get("component") or [] if isinstance(c, dict)]
    own = _observation_values(res)
    has_value = any(own.get(k) is not None for k in ("numeric", "text"))
    if has_value or not components:
        domain = _observation_domain(res, own)
        _coded_event(rows, "Observation", res.get("code"), domain, subject, when, visit=visit, **own)
    for component in components:
        values = _observation_values(component)
        domain = _observation_domain(res, values)
        _coded_event(rows, "Observation component", component.get("code"), domain, subject, when, visit=visit, **values)


def _medication_concept(res: dict[str, Any]) -> tuple[Any, str | None]:
    """``(CodeableConcept, None)`` when the medication is inline or contained, else (None, key)."""
    if isinstance(res.get("medicationCodeableConcept"), dict):
        return res["medicationCodeableConcept"], None
    medication = res.get("medication")
    if isinstance(medication, dict) and isinstance(medication.get("concept"), dict):  # R5 CodeableReference
        return medication["concept"], None
    ref = res.get("medicationReference")
    if ref is None and isinstance(medication, dict):
        ref = medication.get("reference")
    key = _ref_key(ref)
    if key is None:
        return None, None
    if key.startswith("#"):
        for contained in res.get("contained") or []:
            if isinstance(contained, dict) and contained.get("id") == key[1:]:
                return contained.get("code"), None
        return None, None
    return None, key


def _medication_event(rows: _Rows, item: _Item, rtype: str, *time_paths: str) -> None:
    res = item.resource
    ok, when = _first_time(res, rows, *time_paths)
    if not ok:
        return
    subject, visit = _subject(res), _encounter(res)
    concept, key = _medication_concept(res)
    if key is not None:  # a Medication elsewhere in the input: resolved once everything is read
        row = rows.add(subject, when, None, visit=visit)
        rows.pending_medications.append((row, key))
        return
    _coded_event(rows, rtype, concept, s.Domain.DRUG, subject, when, visit=visit)


def _medication(rows: _Rows, item: _Item) -> None:
    mid = _own_id(item)
    picked = _pick_code(item.resource.get("code"), rows)
    if mid is None or picked is None:
        rows.report.skip("Medication: no id or no mapped code")
        return
    rows.medications[f"Medication/{mid}"] = picked
    if item.full_url:
        rows.medications[item.full_url] = picked


def _simple(rtype: str, domain: str, *time_paths: str, code_field: str = "code") -> Callable[[_Rows, _Item], None]:
    """Handler for resources that are one coded event at the first present time."""

    def handle(rows: _Rows, item: _Item) -> None:
        res = item.resource
        if res.get("status") == "not-done":
            rows.report.skip(f"{rtype}: not-done")
            return
        ok, when = _first_time(res, rows, *time_paths)
        if ok:
            _coded_event(rows, rtype, res.get(code_field), domain, _subject(res), when, visit=_encounter(res))

    return handle


HANDLERS: dict[str, Callable[[_Rows, _Item], None]] = {
    "Patient": _patient,
    "Encounter": _encounter_resource,
    "Condition": _condition,
    "Observation": _observation,
    "Medication": _medication,
    "MedicationRequest": lambda rows, item: _medication_event(rows, item, "MedicationRequest", "authoredOn"),
    "MedicationAdministration": lambda rows, item: _medication_event(
        rows,
        item,
        "MedicationAdministration",
        "effectiveDateTime",
        "effectivePeriod.start",
        "occurenceDateTime",
    ),
    "MedicationStatement": lambda rows, item: _medication_event(
        rows, item, "MedicationStatement", "effectiveDateTime", "effectivePeriod.start", "dateAsserted"
    ),
    "Procedure": _simple("Procedure", s.Domain.PROCEDURE, "performedDateTime", "performedPeriod.start"),
    "Immunization": _simple("Immunization", s.Domain.DRUG, "occurrenceDateTime", "recorded", code_field="vaccineCode"),
    "AllergyIntolerance": _simple("AllergyIntolerance", s.Domain.ALLERGY, "onsetDateTime", "recordedDate"),
    "DiagnosticReport": _simple(
        "DiagnosticReport", s.Domain.MEASUREMENT, "effectiveDateTime", "effectivePeriod.start", "issued"
    ),
}
"""resourceType → handler that appends its events. Other types are counted and skipped."""


# --- the conversion ------------------------------------------------------------------------------


def _digest(resource: dict[str, Any]) -> bytes:
    """Content fingerprint ignoring id and server bookkeeping (meta, narrative)."""
    body = {k: v for k, v in resource.items() if k not in ("id", "meta", "text")}
    return hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).digest()


def _take(rows: _Rows, item: _Item) -> None:
    """Count, de-duplicate and convert one resource (Bundles were already expanded)."""
    res = item.resource
    rtype = res.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        rows.report.counts["(no resourceType)"] = rows.report.counts.get("(no resourceType)", 0) + 1
        rows.report.skip("not a FHIR resource (no resourceType)")
        return
    rows.report.counts[rtype] = rows.report.counts.get(rtype, 0) + 1
    if rtype == "Bundle":
        return
    rows.n_resources += 1
    rid = _own_id(item)
    if rid is not None:
        key = f"{rtype}/{rid}"
        if item.full_url:
            rows.urls[item.full_url] = key
        earlier = rows.seen.get(key)
        if earlier is not None:
            if rtype != "Patient":
                rows.report.skip(f"duplicate {rtype} id (first kept)")
                return
            if earlier[0] != _digest(res):
                raise FhirError(
                    f"Patient id {rid!r} appears twice with different content: at {earlier[1]} and at {item.location}"
                )
            rows.report.skip("duplicate Patient (identical)")
            return
        # Only Patients keep a content fingerprint: a conflicting copy of one is fatal, while a
        # second copy of anything else is skipped whatever it holds (fingerprints are costly).
        rows.seen[key] = (_digest(res) if rtype == "Patient" else b"", item.location)
    if res.get("status") == "entered-in-error":
        rows.report.skip(f"{rtype}: entered-in-error")
        return
    handler = HANDLERS.get(rtype)
    if handler is None:
        rows.report.skip(f"unsupported resource type {rtype}")
        return
    try:
        handler(rows, item)
    except s.InputRangeError as exc:
        raise FhirError(f"{item.location}: {rtype} {exc}") from None


def _resolve(key: str | None, kind: str, urls: dict[str, str]) -> str | None:
    """``kind/id`` for a reference key, following ``urn:uuid`` fullUrls; None if not a ``kind``."""
    if key is None:
        return None
    if key.startswith("urn:"):
        key = urls.get(key) or (f"{kind}/{key.removeprefix('urn:uuid:')}" if key.startswith("urn:uuid:") else key)
    return key if key.startswith(f"{kind}/") else None


def _finish(rows: _Rows, source: str) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Resolve references, drop (and count) what cannot be placed, and build the three frames."""
    report = rows.report
    if not rows.patients:
        raise FhirError(f"no Patient resources found in {source}")

    for row, key in rows.pending_medications:
        found = rows.medications.get(key) or rows.medications.get(_resolve(key, "Medication", rows.urls) or "")
        if found is not None:
            rows.code[row] = found[0]
            rows.describe(found[0], found[1], s.Domain.DRUG)

    subject_of: dict[str, int] = {}
    for key, (pid, _location) in rows.patients.items():
        subject_of[key] = subject_id_for(pid)
    if len(set(subject_of.values())) != len(subject_of):
        raise FhirError(f"two Patient ids in {source} hash to the same subject_id; rename one")
    urls = rows.urls
    subject_ids: list[int | None] = []
    visit_ids: list[int | None] = []
    dropped: dict[str, set[int]] = {}
    n_missing_visits = 0
    for i, (sref, vref) in enumerate(zip(rows.subject_ref, rows.visit_ref, strict=True)):
        patient_key = _resolve(sref, "Patient", urls)
        sid = subject_of.get(patient_key) if patient_key is not None else None
        subject_ids.append(sid)
        if sid is None:
            dropped.setdefault("no subject" if sref is None else "unknown patient", set()).add(rows.resource_no[i])
        elif rows.code[i] is None:
            dropped.setdefault("unresolved medication reference", set()).add(rows.resource_no[i])
        encounter_key = _resolve(vref, "Encounter", urls)
        visit_ids.append(visit_id_for(encounter_key.split("/", 1)[1]) if encounter_key else None)
        if encounter_key is not None and encounter_key not in rows.seen:
            n_missing_visits += 1
    for reason, resources in sorted(dropped.items()):
        report.skip(reason, len(resources))
    if n_missing_visits:
        report.warnings.append(
            f"{n_missing_visits} event(s) name an Encounter that is not in the input; their visit_id is kept"
        )

    events = pl.DataFrame(
        {
            s.SUBJECT_ID: subject_ids,
            s.TIME: rows.time,
            s.CODE: rows.code,
            s.NUMERIC_VALUE: rows.numeric_value,
            s.TEXT_VALUE: rows.text_value,
            s.UNIT: rows.unit,
            s.VISIT_ID: visit_ids,
            s.REF_LOW: rows.ref_low,
            s.REF_HIGH: rows.ref_high,
        },
        schema={
            s.SUBJECT_ID: pl.Int64,
            s.TIME: pl.Datetime("us"),
            s.CODE: pl.String,
            s.NUMERIC_VALUE: pl.Float64,
            s.TEXT_VALUE: pl.String,
            s.UNIT: pl.String,
            s.VISIT_ID: pl.Int64,
            s.REF_LOW: pl.Float64,
            s.REF_HIGH: pl.Float64,
        },
    ).filter(pl.col(s.SUBJECT_ID).is_not_null() & pl.col(s.CODE).is_not_null())
    # Ties in time are ordered by content, not by file order, so ndjson and Bundle copies of one
    # dataset give identical frames; a visit's start event leads its other events at that time.
    rank = (
        pl.when(pl.col(s.CODE).str.starts_with("Visit/"))
        .then(0)
        .when(pl.col(s.CODE) == s.VISIT_END_CODE)
        .then(2)
        .otherwise(1)
    )
    events = events.sort(
        [
            pl.col(s.SUBJECT_ID),
            pl.col(s.TIME),
            rank,
            pl.col(s.CODE),
            pl.col(s.NUMERIC_VALUE),
            pl.col(s.TEXT_VALUE),
        ],
        nulls_last=False,
        maintain_order=True,
    )
    events = conform_events(events, source=source)

    present = set(events.get_column(s.SUBJECT_ID).unique().to_list())
    silent = [pid for key, (pid, _) in rows.patients.items() if subject_of[key] not in present]
    if silent:
        report.skip("Patient without events", len(silent))
    source_ids = pl.DataFrame(
        {
            s.SUBJECT_ID: [subject_of[key] for key in rows.patients if subject_of[key] in present],
            s.SOURCE_ID: [pid for key, (pid, _) in rows.patients.items() if subject_of[key] in present],
        },
        schema={s.SUBJECT_ID: pl.Int64, s.SOURCE_ID: pl.String},
    ).sort(s.SUBJECT_ID)

    used = set(events.get_column(s.CODE).unique().to_list())
    descriptions = {**{c: (d, str(dom)) for c, (d, dom) in SPECIAL_CODES.items()}, **rows.codes}
    code_list = sorted(used)
    codes = pl.DataFrame(
        {
            s.CODE: code_list,
            s.DESCRIPTION: [descriptions.get(c, (None, ""))[0] for c in code_list],
            s.DOMAIN: [str(descriptions.get(c, (None, s.Domain.OTHER))[1]) for c in code_list],
        },
        schema={s.CODE: pl.String, s.DESCRIPTION: pl.String, s.DOMAIN: pl.String},
    )
    report.n_events = events.height
    report.n_subjects = len(present)
    return events, codes, source_ids


def fhir_to_events(
    resources: Iterable[dict[str, Any]], report: IngestReport, *, source: str = "input"
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """MEDS ``(events, codes, source_ids)`` frames from FHIR resources (Bundles are expanded).

    For resources that did not come from files, e.g. a Bundle posted to the API. ``events`` is
    conformed to the MEDS schema and sorted; ``codes`` has code, description and domain for every
    code used; ``source_ids`` maps ``subject_id`` to ``Patient.id``. Fills ``report``'s counts,
    skips, ``n_subjects`` and ``n_events``. Raises FhirError when there is no Patient at all or
    one Patient id comes twice with different content.
    """
    items = (_Item(r, f"{source} resource[{i}]") for i, r in enumerate(resources))
    return _convert(items, report, source)


def _convert(
    items: Iterable[_Item], report: IngestReport, source: str
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rows = _Rows(report)
    for item in items:
        if not isinstance(item.resource, dict):
            raise FhirError(f"{item.location}: expected a JSON object (a FHIR resource)")
        for expanded in _expand(item):
            _take(rows, expanded)
    return _finish(rows, source)


def ingest_fhir(
    paths: Sequence[Path],
    out: Path,
    *,
    overwrite: bool = False,
    dataset_name: str | None = None,
) -> IngestReport:
    """Read FHIR R4 files or folders and write a MEDS dataset at ``out``; return what happened.

    ``paths`` may be bulk-export ndjson files (``.ndjson``, ``.ndjson.gz``), Bundle or single
    resource ``.json`` files, or folders searched recursively for those. The resource type is
    read from each resource, never from the file name. The dataset is written atomically: on any
    error nothing is left at ``out``. Raises FhirError for malformed JSON (naming file and line),
    conflicting duplicate Patients, or an input without any Patient.
    """
    started = time.perf_counter()
    out = Path(out)
    if isinstance(paths, str | Path):
        paths = [Path(paths)]
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
    files = _files(paths)
    source = ", ".join(str(p) for p in paths) if len(paths) <= 3 else f"{len(paths)} paths"
    if not files:
        raise FhirError(f"no FHIR files (*.ndjson, *.json) found in {source}")
    report = IngestReport(dataset=out)
    items = (item for path in files for item in _read_file(path))
    events, codes, source_ids = _convert(items, report, source)
    write_dataset(
        out,
        events,
        codes,
        dataset_name=dataset_name or out.name,
        etl_name=ETL_NAME,
        source_ids=source_ids,
        overwrite=overwrite,
        extra_metadata={"source": "FHIR R4", "files": len(files)},
    )
    report.seconds = time.perf_counter() - started
    log.info(
        "FHIR ingest: %d files, %d subjects, %d events, %d skipped, %.1fs",
        len(files),
        report.n_subjects,
        report.n_events,
        sum(report.skipped.values()),
        report.seconds,
    )
    return report
