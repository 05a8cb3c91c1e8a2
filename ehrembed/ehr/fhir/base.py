"""What the FHIR reader's parts share: its error, identities (hashed ids) and times."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Any

from ehrembed import schema as s
from ehrembed.errors import InputError

ETL_NAME = "ehrembed.ehr.fhir"


class FhirError(InputError):
    """The FHIR input is unusable as given; the message names the file (and line or entry)."""


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
