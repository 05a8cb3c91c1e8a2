"""Prediction tasks as data: a YAML file a user can write without code, validated with clear errors.

A task says *when* to predict (``prediction_times``), *what* is predicted (``outcome``) and over
which window (``horizon``)::

    name: new_afib
    description: Atrial fibrillation diagnosed within the next year
    group: new_diagnosis
    prediction_times: {rule: visit_days, time: "23:59"}
    horizon: {start_days: 1, end_days: 365}
    outcome: {codes: ["SNOMED/49436004"], include_descendants: true}
    exclude_if_prior_outcome: true

Prediction-time rules: ``visit_days`` (every day with a recorded event, at ``time``),
``admission_day`` / ``discharge_day`` (each inpatient visit, at ``time`` on its first / last day)
and ``before_lab`` (``offset_minutes`` before each numeric result of the outcome's lab codes).
Outcome rules (``outcome.rule``): ``codes`` (the default: any of the codes, with descendants, in the
horizon), ``length_of_stay`` (the visit lasts at least ``min_days``), ``readmission`` (another
inpatient admission within ``within_days`` of discharge), ``icu_transfer`` (an ICU code during the
rest of the visit) and ``abnormal_lab`` (the lab result being predicted is beyond a threshold).
Two rules bring their own labels and prediction times (``prediction_times.rule: given``): ``aces``
(an ACES task config, MEDS-DEV's format, labelled by the ``es-aces`` package; :mod:`.aces`) and
``labels`` (a folder of MEDS label files; :mod:`.meds_labels`). :func:`load_task` makes them from an
ACES config file or a labels folder; :func:`parse_task` from an ACES config with a ``name``.

The built-in files under ``predict/tasks/`` follow EHRSHOT's groups (operational outcomes, new
diagnoses within 365 days, abnormal lab results); :func:`builtin_tasks` lists them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ehrembed.errors import InputError

TASKS_DIR = Path(__file__).parent / "tasks"
GROUPS = ("operational", "new_diagnosis", "abnormal_lab", "custom")
INPATIENT_VISIT_CODES = ("Visit/IP", "Visit/ERIP", "Visit/IMP")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
_PARENTHETICAL = re.compile(r"\s*\([^()]*\)")
_CODE = re.compile(r"^[^\s/]+/\S+$|^MEDS_[A-Z_]+$")


class TaskError(InputError):
    """A task file or definition is invalid; the message names the file, the field and the problem."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_codes(codes: Sequence[str], what: str) -> list[str]:
    if not codes:
        raise ValueError(f"{what} must list at least one code")
    bad = [c for c in codes if not _CODE.match(c)]
    if bad:
        raise ValueError(f"{what}: {bad[0]!r} is not a code of the form VOCABULARY/CODE (e.g. SNOMED/49436004)")
    return list(dict.fromkeys(codes))


class PredictionTimes(_Frozen):
    """When labels are made. ``time`` is the clock time on the chosen day (``HH:MM``)."""

    rule: Literal["visit_days", "admission_day", "discharge_day", "before_lab", "given"] = "visit_days"
    """``given``: the outcome brings its own prediction times (an ACES config's index times, a labels folder)."""
    time: str = "23:59"
    offset_minutes: int = Field(default=1, ge=0, le=24 * 60)
    """``before_lab``: how long before the result the prediction is made."""
    visit_codes: tuple[str, ...] = INPATIENT_VISIT_CODES
    """``admission_day`` / ``discharge_day``: the visit codes that count as inpatient stays."""
    max_per_subject: int | None = Field(default=None, ge=1)
    """Keep at most this many prediction times per subject (a stable hash picks which)."""

    @field_validator("time")
    @classmethod
    def _clock(cls, value: str) -> str:
        try:
            dt.time.fromisoformat(value)
        except ValueError:
            raise ValueError(f"time must be HH:MM such as 23:59, got {value!r}") from None
        return value

    @field_validator("visit_codes")
    @classmethod
    def _visits(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_codes(value, "visit_codes"))

    @property
    def clock(self) -> dt.time:
        return dt.time.fromisoformat(self.time)


class Horizon(_Frozen):
    """The outcome window after the prediction time, in days: ``(start_days, end_days]``."""

    start_days: float = Field(default=0.0, ge=0)
    end_days: float = Field(default=365.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Horizon:
        if self.end_days <= self.start_days:
            raise ValueError(f"horizon end_days ({self.end_days}) must be after start_days ({self.start_days})")
        return self


class CodesOutcome(_Frozen):
    """Positive when any of ``codes`` (with descendants when asked) is recorded in the horizon."""

    rule: Literal["codes"] = "codes"
    codes: tuple[str, ...]
    include_descendants: bool = True

    @field_validator("codes")
    @classmethod
    def _codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_codes(value, "outcome.codes"))


class LengthOfStayOutcome(_Frozen):
    """Positive when the inpatient visit lasts at least ``min_days`` (EHRSHOT: 7)."""

    rule: Literal["length_of_stay"]
    min_days: float = Field(default=7.0, gt=0)


class ReadmissionOutcome(_Frozen):
    """Positive when another inpatient admission starts within ``within_days`` after discharge."""

    rule: Literal["readmission"]
    within_days: float = Field(default=30.0, gt=0)


class IcuTransferOutcome(_Frozen):
    """Positive when an ICU code (a care-site or visit-detail code) is recorded later in the same visit."""

    rule: Literal["icu_transfer"]
    codes: tuple[str, ...] = ("Visit/ICU", "CareSite/ICU")

    @field_validator("codes")
    @classmethod
    def _codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_codes(value, "outcome.codes"))


class AbnormalLabOutcome(_Frozen):
    """Positive when the predicted result is ``below`` / ``above`` a threshold (or outside the
    result's own reference range when neither is given and ``reference_range`` is true)."""

    rule: Literal["abnormal_lab"]
    codes: tuple[str, ...]
    below: float | None = None
    above: float | None = None
    reference_range: bool = False

    @field_validator("codes")
    @classmethod
    def _codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_codes(value, "outcome.codes"))

    @model_validator(mode="after")
    def _threshold(self) -> AbnormalLabOutcome:
        if self.below is None and self.above is None and not self.reference_range:
            raise ValueError("an abnormal_lab outcome needs below, above or reference_range: true")
        return self


class AcesOutcome(_Frozen):
    """Labels from an ACES task config (MEDS-DEV's format), run by the ``es-aces`` package
    (:mod:`ehrembed.predict.aces`): ``config`` is the config itself, ``predicates`` the dataset's
    predicates laid over its own (filling MEDS-DEV's ``???``)."""

    rule: Literal["aces"]
    config: dict[str, Any]
    predicates: dict[str, Any] | None = None


class LabelsOutcome(_Frozen):
    """Labels given as MEDS label files (:mod:`ehrembed.predict.meds_labels`): ``path`` is the task's folder."""

    rule: Literal["labels"]
    path: str


Outcome = Annotated[
    CodesOutcome
    | LengthOfStayOutcome
    | ReadmissionOutcome
    | IcuTransferOutcome
    | AbnormalLabOutcome
    | AcesOutcome
    | LabelsOutcome,
    Field(discriminator="rule"),
]
EXTERNAL_RULES = ("aces", "labels")
"""Outcome rules whose labels (and prediction times) come from outside ehrembed's labelers."""

_DEFAULT_TIMES = {
    "codes": "visit_days",
    "length_of_stay": "admission_day",
    "readmission": "discharge_day",
    "icu_transfer": "admission_day",
    "abnormal_lab": "before_lab",
    "aces": "given",
    "labels": "given",
}
_ALLOWED_TIMES = {
    "codes": {"visit_days", "admission_day", "discharge_day"},
    "length_of_stay": {"admission_day"},
    "readmission": {"discharge_day"},
    "icu_transfer": {"admission_day"},
    "abnormal_lab": {"before_lab"},
    "aces": {"given"},
    "labels": {"given"},
}


class TaskSpec(_Frozen):
    """One binary prediction task (see the module docstring for the file format)."""

    name: str
    description: str = ""
    group: Literal["operational", "new_diagnosis", "abnormal_lab", "custom"] = "custom"
    instruction: str | None = None
    """The task's question for instruction-tuned encoders ("will the patient ..."); optional: without
    one, :attr:`question` derives it from the description (or the name)."""
    prediction_times: PredictionTimes = Field(default_factory=PredictionTimes)
    horizon: Horizon = Field(default_factory=Horizon)
    outcome: Outcome
    exclude_if_prior_outcome: bool = False
    min_age_years: float | None = Field(default=None, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"name must be lowercase letters, digits, '_' or '-' (at most 64), got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """Outcome ``rule`` defaults to ``codes``; prediction times default to the outcome's natural rule."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        outcome = data.get("outcome")
        if isinstance(outcome, Mapping):
            outcome = {"rule": "codes", **outcome}
            data["outcome"] = outcome
            times = data.get("prediction_times")
            if times is None:
                data["prediction_times"] = {"rule": _DEFAULT_TIMES.get(str(outcome["rule"]), "visit_days")}
            elif isinstance(times, Mapping) and "rule" not in times:
                data["prediction_times"] = {"rule": _DEFAULT_TIMES.get(str(outcome["rule"]), "visit_days"), **times}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        allowed = _ALLOWED_TIMES[self.outcome.rule]
        if self.prediction_times.rule not in allowed:
            raise ValueError(
                f"prediction_times.rule {self.prediction_times.rule!r} does not fit outcome rule "
                f"{self.outcome.rule!r} (use {' or '.join(sorted(allowed))})"
            )
        return self

    @property
    def question(self) -> str:
        """The question that goes into an instruction-tuned encoder's instruction
        (:func:`ehrembed.encoders.instructions.instruction_for`): ``instruction``, else one derived from
        the description without its parenthetical remarks, else from the name."""
        if self.instruction and self.instruction.strip():
            return " ".join(self.instruction.split())
        text = " ".join(_PARENTHETICAL.sub("", self.description).split()).rstrip(" .")
        if not text:
            text = self.name.replace("_", " ").replace("-", " ")
        if not text[1:2].isupper():  # "Atrial fibrillation" -> "atrial fibrillation"; "GI bleed" stays
            text = text[:1].lower() + text[1:]
        return f"will the patient have: {text}"

    @property
    def outcome_codes(self) -> tuple[str, ...]:
        """The codes the outcome names (empty for length of stay and readmission)."""
        return tuple(getattr(self.outcome, "codes", ()))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _explain(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"] if not str(p).endswith("Outcome")) or "task"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_task(data: Any, *, source: str = "task") -> TaskSpec:
    """Validate a task definition (a mapping, e.g. parsed YAML or JSON): ours, or an ACES config with a
    ``name`` (and optionally ``dataset_predicates``, the predicates file's mapping)."""
    from ehrembed.predict import aces

    if not isinstance(data, Mapping):
        raise TaskError(f"{source}: a task must be a mapping of fields, got {type(data).__name__}")
    if aces.is_aces_config(data):
        name = data.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise TaskError(
                f"{source}: an ACES config given as a task needs a name (lowercase letters, digits, _ or -)"
            )
        predicates = data.get("dataset_predicates")
        if predicates is not None and not isinstance(predicates, Mapping):
            raise TaskError(f"{source}: dataset_predicates must be a mapping of predicate definitions")
        return aces_task(data, name, predicates)
    try:
        return TaskSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise TaskError(f"{source}: {_explain(exc)}") from None


def load_task(path: Path | str, *, predicates: Mapping[str, Any] | None = None) -> TaskSpec:
    """Read and validate one task: our YAML (or JSON), an ACES config, or a MEDS labels folder.

    ``predicates`` (a dataset predicates mapping, :func:`ehrembed.predict.aces.load_predicates`) fills
    an ACES config's dataset-specific predicates.
    """
    from ehrembed.predict import aces, meds_labels

    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        if not meds_labels.is_labels_folder(path):
            raise TaskError(f"{path}: neither a task file nor a folder of MEDS label files")
        return external_task(path.name, LabelsOutcome(rule="labels", path=str(path.resolve())), "")
    if not path.is_file():
        raise TaskError(f"task file {path} not found (built-in tasks: {', '.join(builtin_task_names())})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TaskError(f"{path}: not valid YAML ({exc})") from None
    if aces.is_aces_config(data):
        return aces_task(data, aces.task_name(path.resolve()), predicates)
    return parse_task(data, source=str(path))


def aces_task(data: Mapping[str, Any], name: str, predicates: Mapping[str, Any] | None = None) -> TaskSpec:
    """An ACES config (with optional ``metadata.description`` / ``metadata.instruction``) as a task."""
    from ehrembed.predict import aces

    found = data.get("metadata")
    metadata: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    description = aces.first_sentence(str(metadata.get("description") or data.get("description") or ""))
    config = {key: value for key, value in data.items() if key in aces.CONFIG_KEYS}
    outcome = AcesOutcome(rule="aces", config=config, predicates=dict(predicates) if predicates else None)
    task = external_task(name, outcome, description)
    instruction = metadata.get("instruction") or data.get("instruction")
    return task.model_copy(update={"instruction": str(instruction)}) if instruction else task


def external_task(name: str, outcome: AcesOutcome | LabelsOutcome, description: str) -> TaskSpec:
    """A task whose labels come from outside (an ACES config, a labels folder)."""
    safe = re.sub(r"[^a-z0-9_\-]+", "_", name.lower()).strip("_-")[:64] or "task"
    return TaskSpec(
        name=safe,
        description=description,
        group="custom",
        prediction_times=PredictionTimes(rule="given"),
        outcome=outcome,
    )


def builtin_task_names() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def builtin_tasks(group: str | None = None) -> list[TaskSpec]:
    """The packaged EHRSHOT-style tasks (all, or one group)."""
    if group is not None and group not in GROUPS:
        raise TaskError(f"unknown task group {group!r}; groups are {', '.join(GROUPS)}")
    tasks = [load_task(p) for p in sorted(TASKS_DIR.glob("*.yaml"))]
    return [t for t in tasks if group is None or t.group == group]


def resolve_tasks(refs: Sequence[str | Path], *, predicates: Path | str | None = None) -> list[TaskSpec]:
    """Task files, built-in task names or groups (``operational``), ACES configs (``meds-dev:PATH`` for one
    of the installed MEDS-DEV tasks), MEDS label folders (a root with one folder per task counts as all of
    them) → tasks, in order. ``predicates``: a dataset predicates file for ACES configs."""
    from ehrembed.predict import aces, meds_labels

    dataset_predicates = aces.load_predicates(predicates) if predicates is not None else None
    out: dict[str, TaskSpec] = {}
    builtin = builtin_task_names()
    for ref in refs:
        text = str(ref)
        if text in GROUPS:
            found = builtin_tasks(text)
        elif text == "all":
            found = builtin_tasks()
        elif text in builtin and not Path(text).exists():
            found = [load_task(TASKS_DIR / f"{text}.yaml")]
        elif text.startswith(aces.MEDS_DEV_PREFIX):
            found = [load_task(aces.meds_dev_task(text), predicates=dataset_predicates)]
        elif Path(text).is_dir() and not meds_labels.is_labels_folder(Path(text)):
            raise TaskError(f"{text}: a folder that holds no MEDS label files")
        elif Path(text).is_dir() and not list(Path(text).glob("*.parquet")):
            root = Path(text)
            found = [
                external_task(
                    "-".join(folder.relative_to(root).parts),
                    LabelsOutcome(rule="labels", path=str(folder.resolve())),
                    "",
                )
                for folder in meds_labels.task_folders(root)
            ]
        else:
            found = [load_task(text, predicates=dataset_predicates)]
        for task in found:
            if task.name in out and out[task.name] != task:
                raise TaskError(f"two different tasks are named {task.name!r}")
            out[task.name] = task
    if not out:
        raise TaskError("no tasks given")
    return list(out.values())
