"""One handler per resource type: the MEDS events each kind of FHIR resource becomes."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

from ehrembed import schema as s
from ehrembed.ehr.fhir.base import parse_fhir_time
from ehrembed.ehr.fhir.files import _Item, _own_id, _ref_key
from ehrembed.ehr.fhir.rows import _coded_event, _pick_code, _Rows
from ehrembed.ehr.fhir.vocab import (
    BIRTH_TIME_EXTENSION,
    GENDER_CODES,
    MEASUREMENT_CATEGORIES,
    OMB_CODES,
    UNKNOWN_VISIT,
    US_CORE_ETHNICITY,
    US_CORE_RACE,
    VISIT_CLASSES,
)

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
