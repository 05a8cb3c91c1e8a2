"""The rows a conversion accumulates, and picking a resource's code from its codings."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from ehrembed.ehr.fhir.vocab import SYSTEM_PREFIXES
from ehrembed.ehr.meds import IngestReport
from ehrembed.ehr.text import one_line

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
