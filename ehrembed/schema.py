"""The one schema module: MEDS column names and dtypes, and the typed records every stage shares.

ehrembed keeps patient data in MEDS (https://github.com/Medical-Event-Data-Standard/meds):
one row per event with ``subject_id``, ``time``, ``code``, ``numeric_value``, ``text_value``,
sorted by subject and time, plus ``metadata/codes.parquet`` describing each code. The core column
names and types, file paths, split names and special codes come from the ``meds`` package itself
(never re-declared here). We add a few extension columns that MEDS allows and
``metadata/dataset.json`` declares:

- ``unit``: unit of ``numeric_value`` (a code modifier in MEDS terms), e.g. ``mg/dL``.
- ``visit_id``: the visit (encounter) an event belongs to, so records can be told visit by visit.
- ``ref_low`` / ``ref_high``: the reference range the source reported for a measurement.

Times are timezone-naive microsecond timestamps, as MEDS stores them. Timezone-aware source
times are converted to UTC first; naive source times are kept as given. Every time that enters a
dataset or a query lies in [``EARLIEST_TIME``, now + ``FUTURE_MARGIN``] (:func:`valid_time`), so
nothing stored is unrepresentable for Python (year 0 or 10000) or absurd for a record; numbers are
finite float32 (:func:`valid_float32`) and subject ids lie in [0, ``MAX_SUBJECT_ID``] (the int64
range, which FHIR's hashed ids use in full). Static facts (sex, race)
have a null time and sort first. Visits become two events: the visit code (e.g. ``Visit/IP``)
at the start and ``MEDS_VISIT_END`` at the end, sharing ``visit_id``.

Codes are ``{vocabulary}/{code}``: ``SNOMED/49436004``, ``LOINC/2160-0``, ``ICD10CM/E11.9``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import meds
import pyarrow as pa

from ehrembed.errors import InputError

# --- MEDS core columns (names from the ``meds`` package, not re-declared) ---------------------------
SUBJECT_ID: str = meds.DataSchema.subject_id_name
TIME: str = meds.DataSchema.time_name
CODE: str = meds.DataSchema.code_name
NUMERIC_VALUE: str = meds.DataSchema.numeric_value_name
TEXT_VALUE: str = meds.DataSchema.text_value_name
MEDS_VERSION: str = meds.__version__
"""The MEDS release whose schemas these are (written into ``metadata/dataset.json``)."""

# --- ehrembed extension columns -----------------------------------------------------------------
UNIT = "unit"
VISIT_ID = "visit_id"
REF_LOW = "ref_low"
REF_HIGH = "ref_high"

# --- bounds every boundary (events, FHIR, OMOP, query parameters, CLI) enforces ----------------------
EARLIEST_TIME = dt.datetime(1800, 1, 1)
FUTURE_MARGIN = dt.timedelta(days=366)
"""Event and as-of times may lie at most this far after now (scheduled appointments, clock skew)."""
MAX_SUBJECT_ID = 2**63 - 1
"""Subject ids are non-negative int64; FHIR's hashed ids (:func:`ehrembed.ehr.fhir.stable_id`) use all 63 bits."""
FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32: ``numeric_value``, ``ref_low`` and ``ref_high`` are stored as float32."""

# --- well-known codes ---------------------------------------------------------------------------
BIRTH_CODE: str = meds.birth_code
DEATH_CODE: str = meds.death_code
VISIT_END_CODE = "MEDS_VISIT_END"

_MEDS_DATA: pa.Schema = meds.DataSchema.schema()
DATA_SCHEMA = pa.schema(
    [
        pa.field(SUBJECT_ID, _MEDS_DATA.field(SUBJECT_ID).type, nullable=False),
        pa.field(TIME, _MEDS_DATA.field(TIME).type, nullable=True),
        pa.field(CODE, _MEDS_DATA.field(CODE).type, nullable=False),
        pa.field(NUMERIC_VALUE, _MEDS_DATA.field(NUMERIC_VALUE).type, nullable=True),
        pa.field(TEXT_VALUE, _MEDS_DATA.field(TEXT_VALUE).type, nullable=True),
        pa.field(UNIT, pa.string(), nullable=True),
        pa.field(VISIT_ID, pa.int64(), nullable=True),
        pa.field(REF_LOW, pa.float32(), nullable=True),
        pa.field(REF_HIGH, pa.float32(), nullable=True),
    ]
)
"""Event rows as written to ``data/*.parquet``: MEDS' own ``DataSchema`` columns first (their types from
the ``meds`` package), then our extensions."""

# --- metadata/codes.parquet ---------------------------------------------------------------------
DESCRIPTION: str = meds.CodeMetadataSchema.description_name
PARENT_CODES: str = meds.CodeMetadataSchema.parent_codes_name
DOMAIN = "domain"
OMOP_CONCEPT_ID = "omop_concept_id"
OMOP_ANCESTOR_IDS = "omop_ancestor_ids"

CODES_SCHEMA = pa.schema(
    [
        pa.field(CODE, pa.string(), nullable=False),
        pa.field(DESCRIPTION, pa.string()),
        pa.field(PARENT_CODES, pa.list_(pa.string())),
        pa.field(DOMAIN, pa.string()),
        pa.field(OMOP_CONCEPT_ID, pa.int64()),
        pa.field(OMOP_ANCESTOR_IDS, pa.list_(pa.int64())),
    ]
)
"""Code metadata: MEDS' ``code``/``description``/``parent_codes`` plus the code's domain and, for
OMOP sources, its concept id and all ancestor concept ids (from ``concept_ancestor``), which task
definitions use to expand a code to its descendants."""

# --- metadata/subject_splits.parquet ------------------------------------------------------------
SPLIT: str = meds.SubjectSplitSchema.split_name
SPLITS_SCHEMA = pa.schema(
    [pa.field(SUBJECT_ID, pa.int64(), nullable=False), pa.field(SPLIT, pa.string(), nullable=False)]
)
"""MEDS' ``SubjectSplitSchema`` with both columns required."""

# --- metadata/subject_source_ids.parquet: the source system's own patient ids ---------------------
SOURCE_ID = "source_id"
SOURCE_IDS_SCHEMA = pa.schema(
    [pa.field(SUBJECT_ID, pa.int64(), nullable=False), pa.field(SOURCE_ID, pa.string(), nullable=False)]
)

DATA_DIR: str = meds.data_subdirectory
CODES_FILE: str = meds.code_metadata_filepath
SPLITS_FILE: str = meds.subject_splits_filepath
DATASET_FILE: str = meds.dataset_metadata_filepath
SOURCE_IDS_FILE = "metadata/subject_source_ids.parquet"


class Split(StrEnum):
    """MEDS' split names (``meds.train_split``, ``tuning_split``, ``held_out_split``)."""

    TRAIN = meds.train_split
    TUNING = meds.tuning_split
    HELD_OUT = meds.held_out_split


class Domain(StrEnum):
    """What kind of fact a code records; decides where the serializer puts it."""

    CONDITION = "Condition"
    DRUG = "Drug"
    PROCEDURE = "Procedure"
    MEASUREMENT = "Measurement"
    OBSERVATION = "Observation"
    VISIT = "Visit"
    DEMOGRAPHIC = "Demographic"
    ALLERGY = "Allergy"
    DEVICE = "Device"
    OTHER = "Other"


@dataclass(frozen=True, slots=True)
class Event:
    """One MEDS row of a patient (the subject id lives on the Patient)."""

    time: dt.datetime | None
    code: str
    numeric_value: float | None = None
    text_value: str | None = None
    unit: str | None = None
    visit_id: int | None = None
    ref_low: float | None = None
    ref_high: float | None = None


@dataclass(frozen=True, slots=True)
class Patient:
    """A subject and its events: static events (null time) first, then ascending time."""

    subject_id: int
    events: Sequence[Event]

    @property
    def birth_time(self) -> dt.datetime | None:
        for event in self.events:
            if event.code == BIRTH_CODE:
                return event.time
        return None

    @property
    def last_time(self) -> dt.datetime | None:
        """The time of the latest dated event (the default as-of time of a record)."""
        times = [event.time for event in self.events if event.time is not None]
        return max(times) if times else None

    def events_until(self, as_of: dt.datetime) -> list[Event]:
        """Static events and every event at or before ``as_of``; nothing later (no leakage)."""
        return [e for e in self.events if e.time is None or e.time <= as_of]


@dataclass(frozen=True, slots=True)
class Label:
    """A prediction target: what is true of ``subject_id`` when predicting at ``prediction_time``."""

    subject_id: int
    prediction_time: dt.datetime
    value: bool | float


class InputRangeError(InputError):
    """A time, number or id outside what ehrembed stores; the message names the field and the bounds."""


def latest_time() -> dt.datetime:
    """The latest time a record or a query may name: now (UTC) plus :data:`FUTURE_MARGIN`."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None) + FUTURE_MARGIN


def normalize_time(value: dt.datetime | dt.date, field: str = "time") -> dt.datetime:
    """MEDS time for a source value: aware → UTC then naive; a bare date → midnight.

    Raises InputRangeError naming ``field`` when the UTC time is not a representable datetime
    (``9999-12-31T23:59:59-12:00`` is in year 10000).
    """
    if not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is not None:
        try:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        except (OverflowError, ValueError):
            raise InputRangeError(f"{field} {value.isoformat()} is outside {_time_bounds()} in UTC") from None
    return value


def valid_time(value: dt.datetime | dt.date, field: str = "time") -> dt.datetime:
    """:func:`normalize_time`, then refuse (InputRangeError naming ``field``) a time outside the bounds."""
    normalized = normalize_time(value, field)
    if not EARLIEST_TIME <= normalized <= latest_time():
        raise InputRangeError(f"{field} {value.isoformat()} is outside {_time_bounds()}")
    return normalized


def _time_bounds() -> str:
    return f"the supported range {EARLIEST_TIME:%Y-%m-%d} to {latest_time():%Y-%m-%d}"


def valid_float32(value: float, field: str) -> float:
    """``value`` if it is finite as a float32 (stored columns are float32), else InputRangeError."""
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise InputRangeError(f"{field} {value!r} is not a finite float32 (|x| ≤ {FLOAT32_MAX:.4g})")
    return value
