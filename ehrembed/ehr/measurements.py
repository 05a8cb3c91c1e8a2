"""How measurements read in a record: which LOINC codes are body metrics or vital signs, adult reference
ranges for common results, low / normal / high flags, and numbers written compactly.

A flag uses the source's own range when it gave one, else :data:`REFERENCE_RANGES` when the units
agree (case-insensitively), else none: a value is never flagged against a range in another unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ehrembed import schema as s
from ehrembed.ehr.text import one_line

# LOINC codes shown as body metrics and vital signs; other numeric measurements are lab results.
BODY_METRICS = {
    "LOINC/29463-7": "Body weight",
    "LOINC/3141-9": "Body weight",
    "LOINC/8302-2": "Body height",
    "LOINC/39156-5": "Body mass index",
    "LOINC/8280-0": "Waist circumference",
    "LOINC/9843-4": "Head circumference",
}
VITAL_SIGNS = {
    "LOINC/8480-6": "Systolic blood pressure",
    "LOINC/8462-4": "Diastolic blood pressure",
    "LOINC/8478-0": "Mean blood pressure",
    "LOINC/8867-4": "Heart rate",
    "LOINC/9279-1": "Respiratory rate",
    "LOINC/8310-5": "Body temperature",
    "LOINC/2708-6": "Oxygen saturation",
    "LOINC/59408-5": "Oxygen saturation (pulse oximetry)",
}

# Adult reference ranges for common LOINC results, used when the source gave none:
# code -> (unit, low, high); a bound of None is open. Applied only when units agree.
REFERENCE_RANGES: dict[str, tuple[str, float | None, float | None]] = {
    "LOINC/2160-0": ("mg/dL", 0.6, 1.3),  # creatinine
    "LOINC/38483-4": ("mg/dL", 0.6, 1.3),  # creatinine (blood)
    "LOINC/33914-3": ("mL/min/{1.73_m2}", 60.0, None),  # eGFR
    "LOINC/3094-0": ("mg/dL", 7.0, 20.0),  # urea nitrogen
    "LOINC/2345-7": ("mg/dL", 70.0, 99.0),  # glucose, serum/plasma
    "LOINC/2339-0": ("mg/dL", 70.0, 99.0),  # glucose, blood
    "LOINC/4548-4": ("%", 4.0, 5.6),  # hemoglobin A1c
    "LOINC/2823-3": ("mmol/L", 3.5, 5.1),  # potassium
    "LOINC/6298-4": ("mmol/L", 3.5, 5.1),  # potassium (blood)
    "LOINC/2951-2": ("mmol/L", 135.0, 145.0),  # sodium
    "LOINC/2947-0": ("mmol/L", 135.0, 145.0),  # sodium (blood)
    "LOINC/2075-0": ("mmol/L", 98.0, 107.0),  # chloride
    "LOINC/2028-9": ("mmol/L", 22.0, 29.0),  # carbon dioxide
    "LOINC/17861-6": ("mg/dL", 8.5, 10.2),  # calcium
    "LOINC/718-7": ("g/dL", 12.0, 17.5),  # hemoglobin
    "LOINC/4544-3": ("%", 36.0, 52.0),  # hematocrit
    "LOINC/777-3": ("10*3/uL", 150.0, 400.0),  # platelets
    "LOINC/26515-7": ("10*3/uL", 150.0, 400.0),  # platelets (blood)
    "LOINC/6690-2": ("10*3/uL", 4.0, 11.0),  # leukocytes
    "LOINC/1742-6": ("U/L", 7.0, 56.0),  # ALT
    "LOINC/1920-8": ("U/L", 10.0, 40.0),  # AST
    "LOINC/2093-3": ("mg/dL", None, 200.0),  # total cholesterol
    "LOINC/18262-6": ("mg/dL", None, 100.0),  # LDL cholesterol (direct)
    "LOINC/13457-7": ("mg/dL", None, 100.0),  # LDL cholesterol (calculated)
    "LOINC/2085-9": ("mg/dL", 40.0, None),  # HDL cholesterol
    "LOINC/2571-8": ("mg/dL", None, 150.0),  # triglycerides
    "LOINC/8480-6": ("mm[Hg]", 90.0, 129.0),  # systolic BP
    "LOINC/8462-4": ("mm[Hg]", 60.0, 80.0),  # diastolic BP
    "LOINC/8867-4": ("/min", 60.0, 100.0),  # heart rate
    "LOINC/9279-1": ("/min", 12.0, 20.0),  # respiratory rate
    "LOINC/8310-5": ("Cel", 36.1, 37.8),  # body temperature
    "LOINC/2708-6": ("%", 95.0, 100.0),  # oxygen saturation
    "LOINC/59408-5": ("%", 95.0, 100.0),  # oxygen saturation (pulse oximetry)
    "LOINC/39156-5": ("kg/m2", 18.5, 24.9),  # BMI
}


def _format_number(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"


def flag(code: str, value: float, unit: str | None, ref_low: float | None, ref_high: float | None) -> str | None:
    """low / normal / high against the source's range, else a built-in adult range with the same unit."""
    low, high = ref_low, ref_high
    if low is None and high is None and code in REFERENCE_RANGES:
        ref_unit, low, high = REFERENCE_RANGES[code]
        if unit and unit.lower() != ref_unit.lower():
            return None
    if low is None and high is None:
        return None
    if low is not None and value < low:
        return "low"
    if high is not None and value > high:
        return "high"
    return "normal"


def _format_value(code: str, event: s.Event) -> str:
    assert event.numeric_value is not None
    text = _format_number(event.numeric_value)
    if event.unit:
        text = f"{text} {one_line(event.unit, 64)}"
    label = flag(code, event.numeric_value, event.unit, event.ref_low, event.ref_high)
    return f"{text} ({label})" if label else text


# --- the reference's fixed concepts ---------------------------------------------------------------
Group = Literal["Body Metrics", "Vital Signs", "Lab Results"]
GROUPS: tuple[Group, ...] = ("Body Metrics", "Vital Signs", "Lab Results")


@dataclass(frozen=True)
class Concept:
    """One of the Markdown layout's fixed measurements: synonymous codes merged into one line.

    ``units`` maps accepted unit spellings (see :func:`unit_key`; ``""`` = no unit given, read as
    the display unit) to ``(scale, offset)``: ``shown = value * scale + offset``. A value in any
    other unit, or outside ``plausible`` once converted, is dropped: the line never mixes units and
    never shows a typo as a fact. ``normal`` flags low / normal / high when the source gave no range.
    """

    name: str
    group: Group
    codes: tuple[str, ...]
    unit: str
    plausible: tuple[float, float]
    normal: tuple[float, float] | None
    decimals: int
    units: Mapping[str, tuple[float, float]]

    def reading(self, value: float, unit: str | None) -> float | None:
        """``value`` in the display unit, or None when its unit is foreign or the result implausible."""
        conversion = self.units.get(unit_key(unit))
        if conversion is None:
            return None
        shown = value * conversion[0] + conversion[1]
        low, high = self.plausible
        return shown if low <= shown <= high else None


def unit_key(unit: str | None) -> str:
    """A unit spelling reduced for lookup: lower case, no spaces, brackets or braces (``mm[Hg]`` → ``mmhg``)."""
    if not unit:
        return ""
    return "".join(ch for ch in unit.lower() if ch not in " []{}")


def _same(*spellings: str) -> dict[str, tuple[float, float]]:
    return {"": (1.0, 0.0), **{unit_key(u): (1.0, 0.0) for u in spellings}}


def _times(factor: float, *spellings: str) -> dict[str, tuple[float, float]]:
    return {unit_key(u): (factor, 0.0) for u in spellings}


_PER_MIN = ("/min", "1/min", "bpm")
_MMOL = ("mmol/L", "meq/L")
_PER_NL = ("10*3/uL", "10^3/uL", "K/uL", "10*9/L", "10^9/L")
_PER_PL = ("10*6/uL", "10^6/uL", "M/uL", "10*12/L", "10^12/L")

CONCEPTS: tuple[Concept, ...] = (
    Concept("Body weight", "Body Metrics", ("LOINC/29463-7", "LOINC/3141-9"), "kg", (0.3, 500.0), None, 1,
            {**_same("kg"), **_times(0.001, "g"), **_times(0.45359237, "lb", "lb_av", "lbs"),
             **_times(0.028349523, "oz", "oz_av")}),
    Concept("Body height", "Body Metrics", ("LOINC/8302-2", "LOINC/8306-3"), "cm", (20.0, 280.0), None, 1,
            {**_same("cm"), **_times(100.0, "m"), **_times(2.54, "in", "in_i", "inch", "inches")}),
    Concept("Body mass index", "Body Metrics", ("LOINC/39156-5",), "kg/m2", (8.0, 150.0), (18.5, 24.9), 1,
            _same("kg/m2", "kg/m^2")),
    Concept("Body surface area", "Body Metrics", ("LOINC/8277-6", "SNOMED/301898006"), "m2", (0.1, 5.0), None, 2,
            _same("m2", "m^2")),
    Concept("Heart rate", "Vital Signs", ("LOINC/8867-4", "SNOMED/364075005", "SNOMED/78564009"), "bpm",
            (5.0, 300.0), (60.0, 100.0), 0, _same(*_PER_MIN, "beats/min", "beats/minute", "beat/min")),
    Concept("Respiratory rate", "Vital Signs", ("LOINC/9279-1", "SNOMED/86290005"), "breaths/min", (1.0, 100.0),
            (12.0, 20.0), 0, _same(*_PER_MIN, "breaths/min", "breaths/minute", "breath/min")),
    Concept("Systolic blood pressure", "Vital Signs", ("LOINC/8480-6", "SNOMED/271649006"), "mmHg", (20.0, 300.0),
            (90.0, 140.0), 0, _same("mmHg", "mm[Hg]")),
    Concept("Diastolic blood pressure", "Vital Signs", ("LOINC/8462-4", "SNOMED/271650006"), "mmHg", (10.0, 250.0),
            (60.0, 90.0), 0, _same("mmHg", "mm[Hg]")),
    Concept("Body temperature", "Vital Signs", ("LOINC/8310-5", "LOINC/8331-1"), "°C", (25.0, 45.0), (35.0, 38.0), 1,
            {**_same("Cel", "°C", "C", "degC"), **{unit_key(u): (5 / 9, -32 * 5 / 9) for u in ("[degF]", "°F", "F")}}),
    Concept("Oxygen saturation", "Vital Signs", ("LOINC/2708-6", "LOINC/59408-5", "LOINC/LP21258-6"), "%",
            (1.0, 100.0), (95.0, 100.0), 0, _same("%")),
    Concept("Hemoglobin", "Lab Results", ("LOINC/718-7", "LOINC/30313-1", "SNOMED/271026005", "SNOMED/441689006"),
            "g/dL", (1.0, 25.0), (12.0, 17.0), 1, {**_same("g/dL"), **_times(0.1, "g/L"), **_times(1.611, "mmol/L")}),
    Concept("Hematocrit", "Lab Results", ("LOINC/4544-3", "LOINC/20570-8", "LOINC/48703-3", "SNOMED/28317006"), "%",
            (10.0, 100.0), (36.0, 51.0), 0, {**_same("%"), **_times(100.0, "L/L")}),
    Concept("Erythrocytes", "Lab Results", ("LOINC/789-8", "LOINC/26453-1"), "10^6/uL", (0.5, 10.0), (4.2, 5.9), 2,
            _same(*_PER_PL)),
    Concept("Leukocytes", "Lab Results", ("LOINC/6690-2", "LOINC/20584-9", "LOINC/26464-8"), "10^3/uL",
            (0.1, 200.0), (4.0, 10.0), 1, _same(*_PER_NL)),
    Concept("Platelets", "Lab Results", ("LOINC/777-3", "LOINC/26515-7", "SNOMED/61928009"), "10^3/uL",
            (5.0, 2000.0), (150.0, 350.0), 0, _same(*_PER_NL)),
    Concept("Sodium", "Lab Results", ("LOINC/2951-2", "LOINC/2947-0", "SNOMED/25197003"), "mmol/L", (100.0, 200.0),
            (136.0, 145.0), 0, _same(*_MMOL)),
    Concept("Potassium", "Lab Results", ("LOINC/2823-3", "LOINC/6298-4", "SNOMED/312468003", "SNOMED/59573005"),
            "mmol/L", (0.5, 12.0), (3.5, 5.0), 1, _same(*_MMOL)),
    Concept("Chloride", "Lab Results", ("LOINC/2075-0", "LOINC/2069-3", "SNOMED/104589004"), "mmol/L",
            (50.0, 200.0), (98.0, 106.0), 0, _same(*_MMOL)),
    Concept("Carbon dioxide, total", "Lab Results", ("LOINC/2028-9", "LOINC/20565-8"), "mmol/L", (2.0, 100.0),
            (23.0, 28.0), 0, _same(*_MMOL)),
    Concept("Calcium", "Lab Results", ("LOINC/17861-6", "LOINC/49765-1", "SNOMED/271240001"), "mg/dL", (1.0, 25.0),
            (9.0, 10.5), 1, {**_same("mg/dL"), **_times(4.008, "mmol/L")}),
    Concept("Glucose", "Lab Results", ("LOINC/2345-7", "LOINC/2339-0", "LOINC/14749-6", "SNOMED/166900001",
                                        "SNOMED/33747003"), "mg/dL", (10.0, 2000.0), (70.0, 100.0), 0,
            {**_same("mg/dL"), **_times(18.016, "mmol/L")}),
    Concept("Urea nitrogen", "Lab Results", ("LOINC/3094-0", "LOINC/6299-2", "SNOMED/105011006"), "mg/dL",
            (1.0, 300.0), (8.0, 20.0), 0, {**_same("mg/dL"), **_times(2.801, "mmol/L")}),
    Concept("Creatinine", "Lab Results", ("LOINC/2160-0", "LOINC/38483-4", "SNOMED/113075003"), "mg/dL",
            (0.1, 30.0), (0.7, 1.3), 1, {**_same("mg/dL"), **_times(1 / 88.42, "umol/L", "µmol/L")}),
    Concept("Anion gap", "Lab Results", ("LOINC/33037-3", "LOINC/41276-7", "SNOMED/25469001"), "mmol/L",
            (-20.0, 60.0), (3.0, 11.0), 0, _same(*_MMOL)),
)  # fmt: skip
"""The reference Markdown's 24 concepts (4 body metrics, 6 vital signs, 14 labs) in display order."""
CONCEPT_OF_CODE: dict[str, Concept] = {code: c for c in CONCEPTS for code in c.codes}


def format_decimals(value: float, decimals: int) -> str:
    """``value`` to ``decimals`` places with trailing zeros stripped (``81.50`` → ``81.5``, ``-0`` → ``0``)."""
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
