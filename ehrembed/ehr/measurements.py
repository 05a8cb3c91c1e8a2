"""How measurements read in a record: which LOINC codes are body metrics or vital signs, adult reference
ranges for common results, low / normal / high flags, and numbers written compactly.

A flag uses the source's own range when it gave one, else :data:`REFERENCE_RANGES` when the units
agree (case-insensitively), else none: a value is never flagged against a range in another unit.
"""

from __future__ import annotations

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


def _two_decimals(value: float) -> str:
    """The reference's numbers: 2 decimals, trailing zeros stripped (``85.0`` → ``85``, ``1.234`` → ``1.23``)."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


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
