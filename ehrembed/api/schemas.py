"""Request and response bodies of the HTTP API (pydantic; they are the OpenAPI schema).

Input policy (the same as every other boundary, see :mod:`ehrembed.schema`): ids are JSON integers
in [0, 2^63 - 1] (``"1"``, ``true`` and ``1.0`` are refused, not read as 1); times are ISO strings
(a bare number is not read as a Unix time), aware ones converted to UTC, inside the supported range;
numbers are finite float32. A violation is a 422 naming the field.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ehrembed.schema import MAX_SUBJECT_ID, valid_float32, valid_time

_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _iso_only(value: Any) -> Any:
    """Times come as ISO strings (or datetimes); a number would be read as a Unix time, so refuse it."""
    if isinstance(value, bool | int | float) or (isinstance(value, str) and _NUMBER.match(value)):
        raise ValueError("give an ISO time such as 2019-06-01 or 2019-06-01T08:30:00+02:00, not a number")
    return value


def _integer_text(value: Any) -> Any:
    """Query and path integers are written as integers (``k=1.0`` is refused, not rounded)."""
    if isinstance(value, str) and not re.fullmatch(r"[+-]?\d{1,19}", value.strip()):
        raise ValueError("give a whole number such as 10")
    return value


Time = Annotated[
    dt.datetime, BeforeValidator(_iso_only), AfterValidator(lambda v, info: valid_time(v, info.field_name or "time"))
]
"""An ISO time inside the supported range, as naive UTC."""
SubjectIdIn = Annotated[int, Field(strict=True, ge=0, le=MAX_SUBJECT_ID)]
QueryInt = Annotated[int, BeforeValidator(_integer_text)]
Float32 = Annotated[
    float, Field(allow_inf_nan=False), AfterValidator(lambda v, info: valid_float32(v, info.field_name or "value"))
]

MAX_IDS = 1000
MAX_RECORDS = 64
MAX_EXAMPLES = 20_000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventIn(_Body):
    """One MEDS event of a patient."""

    subject_id: SubjectIdIn
    time: Time | None = None
    code: str = Field(min_length=1, max_length=200, pattern=r"^\S+$")
    numeric_value: Float32 | None = None
    text_value: str | None = Field(default=None, max_length=10_000)
    unit: str | None = Field(default=None, max_length=64)
    visit_id: Annotated[int, Field(strict=True, ge=0, le=MAX_SUBJECT_ID)] | None = None
    ref_low: Float32 | None = None
    ref_high: Float32 | None = None


class CodeIn(_Body):
    code: str = Field(min_length=1, max_length=200, pattern=r"^\S+$")
    description: str | None = Field(default=None, max_length=1000)
    domain: str | None = Field(default=None, max_length=32)


class PatientsIn(_Body):
    """Patients to add or replace: MEDS events (with optional code descriptions), or a FHIR R4 Bundle."""

    events: list[EventIn] | None = Field(default=None, max_length=200_000)
    codes: list[CodeIn] | None = Field(default=None, max_length=10_000)
    bundle: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PatientsIn:
        if (self.events is None) == (self.bundle is None):
            raise ValueError("give exactly one of events (MEDS) or bundle (FHIR R4)")
        if self.events is not None and not self.events:
            raise ValueError("events is empty")
        return self


class UpsertOut(BaseModel):
    dataset: str
    added: list[int]
    replaced: list[int]
    n_events: int
    new_codes: int
    seconds: float


class RecordOut(BaseModel):
    dataset: str
    subject_id: int
    as_of: dt.datetime
    record: str


class OutlookItemOut(BaseModel):
    code: str
    description: str
    probability: float = Field(ge=0.0, le=1.0)


class OutlookOut(BaseModel):
    """A patient's most likely new codes within a horizon, from the dataset's prognostic model (no label used)."""

    dataset: str
    subject_id: int
    as_of: dt.datetime
    horizon_days: int
    model: str
    items: list[OutlookItemOut]


class EmbeddingsIn(_Body):
    """Vectors for stored subjects (as of a time, default each one's last event) or inline record texts."""

    dataset: str | None = Field(default=None, max_length=200)
    subject_ids: list[SubjectIdIn] | None = Field(default=None, max_length=MAX_IDS)
    as_of: Time | None = None
    records: list[str] | None = Field(default=None, max_length=MAX_RECORDS)
    encoder: str = Field(default="student", max_length=200)
    task: str | None = Field(default=None, max_length=64)
    """Embed for this task (stored or built-in): its question goes into instruction-tuned encoders' instruction."""

    @model_validator(mode="after")
    def _one_source(self) -> EmbeddingsIn:
        if (self.subject_ids is None) == (self.records is None):
            raise ValueError("give exactly one of subject_ids (with dataset) or records")
        if self.subject_ids is not None and self.dataset is None:
            raise ValueError("subject_ids need a dataset")
        if self.records is not None and any(not r.strip() for r in self.records):
            raise ValueError("records must not be empty texts")
        return self


class EmbeddingRow(BaseModel):
    subject_id: int | None
    as_of: dt.datetime | None
    vector: list[float]


class EmbeddingsOut(BaseModel):
    encoder: str
    dim: int
    rows: list[EmbeddingRow]


class SharedCodeOut(BaseModel):
    code: str
    description: str
    domain: str


class ExplanationOut(BaseModel):
    """What the neighbour's record shares with the query (rarest codes first)."""

    conditions: list[SharedCodeOut]
    medications: list[SharedCodeOut]
    procedures: list[SharedCodeOut]
    n_conditions: int
    n_medications: int
    n_procedures: int
    summary: str


class NeighborOut(BaseModel):
    rank: int
    subject_id: int
    prediction_time: dt.datetime | None
    score: float
    split: str | None
    sex: str | None
    age: float | None
    explanation: ExplanationOut


class SimilarOut(BaseModel):
    dataset: str
    subject_id: int | None
    as_of: dt.datetime | None
    k: int
    neighbors: list[NeighborOut]


class FiltersIn(_Body):
    splits: list[Literal["train", "tuning", "held_out"]] = Field(default_factory=list, max_length=3)
    sex: Literal["F", "M"] | None = None
    min_age: float | None = Field(default=None, ge=0, le=150)
    max_age: float | None = Field(default=None, ge=0, le=150)
    has_codes: list[str] = Field(default_factory=list, max_length=20)


class SimilarIn(_Body):
    """Similar patients of an inline record text (embedded with the index's encoder)."""

    dataset: str = Field(max_length=200)
    record: str = Field(min_length=1, max_length=100_000)
    k: int = Field(default=10, ge=1, le=100, strict=True)
    filters: FiltersIn = Field(default_factory=FiltersIn)


class TaskOut(BaseModel):
    name: str
    source: Literal["builtin", "stored"]
    definition: dict[str, Any]


class ExampleIn(_Body):
    """A labelled time in the MEDS label schema's names (``label`` is the old spelling of ``boolean_value``)."""

    subject_id: SubjectIdIn
    prediction_time: Time
    boolean_value: bool = Field(strict=True, validation_alias=AliasChoices("boolean_value", "label"))


class HeadIn(_Body):
    """Fit a few-shot head from a task's labels or from inline labelled examples."""

    dataset: str = Field(max_length=200)
    task: str | None = Field(default=None, max_length=64)
    examples: list[ExampleIn] | None = Field(default=None, max_length=MAX_EXAMPLES)
    head: Literal["lightgbm", "logistic", "knn"] = "logistic"
    encoder: str = Field(default="student", max_length=200)
    max_examples: int = Field(default=400, ge=4, le=MAX_EXAMPLES, strict=True)
    """With ``task``: at most this many examples (half positives, one per patient; a stable sample)."""

    @model_validator(mode="after")
    def _one_source(self) -> HeadIn:
        if (self.task is None) == (self.examples is None):
            raise ValueError("give exactly one of task (a task name) or examples")
        return self


class HeadOut(BaseModel):
    head_id: str
    kind: str
    dataset: str
    task: str | None
    encoder: str
    n_examples: int
    n_positive: int
    metrics: dict[str, Any]
    params: dict[str, Any]


class PredictIn(_Body):
    """What to score: stored subjects (as of one time, default each one's latest), labelled examples (each at
    its own prediction time; their labels come back beside the probabilities), or inline record texts.
    ``format``: ``json`` (probabilities with evidence) or ``meds`` (meds-evaluation rows)."""

    subject_ids: list[SubjectIdIn] | None = Field(default=None, max_length=MAX_IDS)
    as_of: Time | None = None
    examples: list[ExampleIn] | None = Field(default=None, max_length=MAX_IDS)
    records: list[str] | None = Field(default=None, max_length=MAX_RECORDS)
    evidence: int = Field(default=3, ge=0, le=20, strict=True)
    guidelines: int = Field(default=2, ge=0, le=10, strict=True)
    format: Literal["json", "meds"] = "json"

    @model_validator(mode="after")
    def _one_source(self) -> PredictIn:
        if sum(x is not None for x in (self.subject_ids, self.examples, self.records)) != 1:
            raise ValueError("give exactly one of subject_ids, examples or records")
        if self.format == "meds" and self.records is not None:
            raise ValueError("format meds needs subject_ids or examples (a prediction needs a subject and a time)")
        if self.as_of is not None and self.subject_ids is None:
            raise ValueError("as_of goes with subject_ids (examples carry their own prediction_time)")
        if self.records is not None and any(not r.strip() for r in self.records):
            raise ValueError("records must not be empty texts")
        return self


class PassageOut(BaseModel):
    guideline_id: str
    title: str
    section: str
    passage: str
    score: float
    doi: str | None = None


class PredictionOut(BaseModel):
    subject_id: int | None
    as_of: dt.datetime | None
    probability: float
    similar_examples: list[dict[str, Any]]
    guidelines: list[PassageOut]


class PredictOut(BaseModel):
    head_id: str
    predictions: list[PredictionOut]


class MedsPredictionOut(BaseModel):
    """One row of meds-evaluation's prediction schema (``boolean_value`` only when the request gave labels)."""

    subject_id: int
    prediction_time: dt.datetime
    boolean_value: bool | None
    predicted_boolean_probability: float
    predicted_boolean_value: bool


class MedsPredictOut(BaseModel):
    head_id: str
    format: Literal["meds"] = "meds"
    predictions: list[MedsPredictionOut]


class GuidelineSearchOut(BaseModel):
    query: str
    results: list[PassageOut]


class ReloadOut(BaseModel):
    dataset: str
    index: str
    rows: int
    kind: str
