"""Seeded synthetic MEDS cohorts: realistic codes, visits, lab dynamics and planted signal.

``generate_cohort(SynthConfig(n_subjects=100_000), out)`` writes a MEDS folder in shards, so
memory does not grow with the cohort. Every subject has sex, race/ethnicity and birth; chronic
conditions (ICD-10-CM) start with age-, BMI-, smoking- and comorbidity-dependent hazards; visits
are outpatient, emergency and inpatient (length of stay grows with comorbidity burden, HF/CKD
patients are readmitted more often); labs (LOINC, with units and reference ranges) follow latent
trajectories, e.g. eGFR falls and creatinine rises for months before a CKD diagnosis, HbA1c and
glucose climb before a diabetes diagnosis, potassium rises with CKD and ACE inhibitors; RxNorm
drugs start at the visit that diagnosed their indication; symptoms (palpitations before atrial
fibrillation, dyspnea and edema before heart failure) and procedures (CPT-4) appear around them.

The signal is planted but noisy: latent onsets precede diagnoses by a random delay, labs carry
measurement noise, and symptoms also occur in subjects who never develop the condition.

Output depends only on the config (seed, size, window, shard size): the same config gives
byte-identical ``data/*.parquet``. Codes (RxNorm names, LOINC long common names, ICD-10-CM
descriptions from ``simple_icd_10_cm``) are real; the patients are not.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import simple_icd_10_cm as icd

from ehrembed import schema as s
from ehrembed.ehr.meds import IngestReport, append_shards, conform_events, finish_dataset
from ehrembed.errors import InputError
from ehrembed.fsutil import atomic_dir

__all__ = ["SynthConfig", "generate_cohort", "synth_codes"]

ETL_NAME = "ehrembed.ehr.synth"
YEAR = 365.25
MINUTE = 1.0 / 1440.0
HOUR = 1.0 / 24.0
_KEY = 1e6  # subject stride for (subject, day) search keys; larger than any window in days

Arr = np.ndarray


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. The same config always gives the same events.

    ``start``/``end`` are the first and last day of the observation window; subjects are 18–90
    years old at ``start``. ``disease_scale`` multiplies every incidence hazard and
    ``visit_scale`` every visit rate. Data also depend on ``shard_subjects`` (one random stream
    per shard), so keep it fixed when reproducing a cohort.
    """

    n_subjects: int = 1_000
    seed: int = 0
    start: dt.date = dt.date(2010, 1, 1)
    end: dt.date = dt.date(2024, 12, 31)
    shard_subjects: int = 10_000
    disease_scale: float = 1.0
    visit_scale: float = 1.0
    dataset_name: str = "ehrembed-synthetic"

    def __post_init__(self) -> None:
        if self.n_subjects < 1:
            raise InputError(f"n_subjects must be at least 1, got {self.n_subjects}")
        if self.shard_subjects < 1:
            raise InputError(f"shard_subjects must be at least 1, got {self.shard_subjects}")
        if (self.end - self.start).days < 30:
            raise InputError(f"observation window {self.start}..{self.end} must span at least 30 days")
        if self.disease_scale < 0 or self.visit_scale <= 0:
            raise InputError("disease_scale must be >= 0 and visit_scale > 0")

    @property
    def window_days(self) -> float:
        """Window length in days (``end`` inclusive)."""
        return float((self.end - self.start).days + 1)

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in dataclasses.asdict(self).items()}


# --- vocabulary ------------------------------------------------------------------------------------

D = s.Domain


@dataclass(frozen=True)
class _Concept:
    code: str
    description: str
    domain: str
    unit: str | None = None
    ref_low: float | None = None
    ref_high: float | None = None


# Chronic conditions: key, ICD-10-CM code, prevalence logit at window start (age 50, BMI 28),
# log annual incidence (age 50, BMI 28), per-year age effect, BMI, male and current-smoker
# effects, comorbidity log hazard ratios, and mean days from onset to diagnosis.
@dataclass(frozen=True)
class _Chronic:
    key: str
    icd: str
    prev: float
    inc: float
    age: float
    bmi: float = 0.0
    male: float = 0.0
    smoker: float = 0.0
    deps: tuple[tuple[str, float], ...] = ()
    delay: float = 60.0


# fmt: off
_CHRONIC: tuple[_Chronic, ...] = (
    _Chronic("hld", "E78.5", prev=-1.36, inc=-4.57, age=0.04, bmi=0.03),
    _Chronic("htn", "I10", prev=-1.25, inc=-4.82, age=0.06, bmi=0.07),
    _Chronic("dm", "E11.9", prev=-3.14, inc=-6.26, age=0.03, bmi=0.10, deps=(("htn", 0.3), ("hld", 0.2)),
             delay=90),
    _Chronic("cad", "I25.10", prev=-4.8, inc=-7.87, age=0.07, male=0.7, smoker=0.6,
             deps=(("htn", 0.5), ("dm", 0.6), ("hld", 0.4))),
    _Chronic("af", "I48.91", prev=-5.21, inc=-7.53, age=0.08, bmi=0.03, male=0.3,
             deps=(("htn", 0.4), ("cad", 0.3)), delay=45),
    _Chronic("hf", "I50.9", prev=-5.45, inc=-7.79, age=0.07, bmi=0.03,
             deps=(("htn", 0.5), ("cad", 1.0), ("af", 0.9), ("dm", 0.4)), delay=30),
    _Chronic("ckd", "N18.30", prev=-4.92, inc=-7.18, age=0.08, deps=(("dm", 1.0), ("htn", 0.7), ("hf", 0.6)),
             delay=90),
    _Chronic("copd", "J44.9", prev=-4.16, inc=-7.21, age=0.05, smoker=2.2, delay=120),
    _Chronic("dep", "F32.9", prev=-2.2, inc=-4.79, age=-0.01, male=-0.6),
    _Chronic("hypothy", "E03.9", prev=-2.75, inc=-5.81, age=0.03, male=-1.2),
    _Chronic("gerd", "K21.9", prev=-2.24, inc=-5.15, age=0.01, bmi=0.04),
    _Chronic("anemia", "D64.9", prev=-3.65, inc=-5.98, age=0.03, male=-0.4, deps=(("ckd", 1.3),)),
    _Chronic("oa", "M17.9", prev=-3.22, inc=-5.93, age=0.06, bmi=0.06),
)
# fmt: on
_MAJOR = ("htn", "dm", "cad", "af", "hf", "ckd", "copd", "anemia")

# Other ICD-10-CM codes: symptoms, acute reasons for visits, lab-driven diagnoses, smoking.
_ICD_OTHER = (
    "R00.2", "R06.00", "R60.0", "R05.9", "R53.83", "R35.0", "R07.89",  # symptoms (planted)
    "Z00.00", "Z23", "J06.9", "M54.50", "R51.9", "R10.9",  # outpatient episodes
    "R07.9", "R42", "R55", "N39.0",  # emergency room
    "J18.9", "K92.2", "E86.0", "I21.9", "I63.9", "J44.1", "N17.9", "E11.65",  # admissions
    "E87.5", "E87.1", "D69.6", "R73.03", "N18.4", "E66.9",  # lab / vital driven
    "F17.210", "Z87.891",  # smoking
)  # fmt: skip

# RxNorm clinical drugs (normalized names as RxNav serves them).
_DRUGS: dict[str, tuple[str, str]] = {
    "metformin": ("861007", "metformin hydrochloride 500 MG Oral Tablet"),
    "empagliflozin": ("1545658", "empagliflozin 10 MG Oral Tablet"),
    "lisinopril": ("314076", "lisinopril 10 MG Oral Tablet"),
    "losartan": ("979492", "losartan potassium 50 MG Oral Tablet"),
    "amlodipine": ("197361", "amlodipine 5 MG Oral Tablet"),
    "hctz": ("310798", "hydrochlorothiazide 25 MG Oral Tablet"),
    "carvedilol": ("200032", "carvedilol 12.5 MG Oral Tablet"),
    "furosemide": ("313988", "furosemide 40 MG Oral Tablet"),
    "apixaban": ("1364445", "apixaban 5 MG Oral Tablet"),
    "atorvastatin": ("617310", "atorvastatin 20 MG Oral Tablet"),
    "aspirin": ("243670", "aspirin 81 MG Oral Tablet"),
    "sertraline": ("312941", "sertraline 50 MG Oral Tablet"),
    "levothyroxine": ("966221", "levothyroxine sodium 0.05 MG Oral Tablet"),
    "omeprazole": ("198051", "omeprazole 20 MG Delayed Release Oral Capsule"),
    "ferrous_sulfate": ("310325", "ferrous sulfate 325 MG Oral Tablet"),
}

_PROCEDURES: dict[str, tuple[str, str]] = {
    "ecg": ("93000", "Electrocardiogram, routine ECG with at least 12 leads; with interpretation and report"),
    "cmp": ("80053", "Comprehensive metabolic panel"),
    "cbc": ("85025", "Blood count; complete (CBC), automated and automated differential WBC count"),
    "a1c": ("83036", "Hemoglobin; glycosylated (A1C)"),
    "echo": (
        "93306",
        "Echocardiography, transthoracic, real-time with image documentation (2D), includes M-mode "
        "recording, when performed, complete, with spectral Doppler echocardiography, and with color "
        "flow Doppler echocardiography",
    ),
    "cxr": ("71046", "Radiologic examination, chest; 2 views"),
    "spirometry": (
        "94010",
        "Spirometry, including graphic record, total and timed vital capacity, expiratory flow rate "
        "measurement(s), with or without maximal voluntary ventilation",
    ),
}

# LOINC: key -> (code, long common name, unit, ref_low, ref_high). Creatinine and hemoglobin
# ranges are sex-specific per row; the ones here are the female ranges.
_LABS: dict[str, tuple[str, str, str, float | None, float | None]] = {
    "creatinine": ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 1.1),
    "egfr": (
        "33914-3",
        "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum or Plasma by "
        "Creatinine-based formula (MDRD)",
        "mL/min/{1.73_m2}",
        60.0,
        None,
    ),
    "glucose": ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70.0, 99.0),
    "a1c": ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6),
    "potassium": ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1),
    "sodium": ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136.0, 145.0),
    "hemoglobin": ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 15.5),
    "platelets": ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150.0, 400.0),
    "weight": ("29463-7", "Body weight", "kg", None, None),
    "bmi": ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 18.5, 24.9),
    "sbp": ("8480-6", "Systolic blood pressure", "mm[Hg]", 90.0, 120.0),
    "dbp": ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60.0, 80.0),
    "hr": ("8867-4", "Heart rate", "/min", 60.0, 100.0),
}
_FEMALE_RANGES = {"creatinine": (0.5, 1.1), "hemoglobin": (12.0, 15.5)}
_MALE_RANGES = {"creatinine": (0.7, 1.3), "hemoglobin": (13.5, 17.5)}

_VISITS = (
    ("Visit/OP", "Outpatient Visit"),
    ("Visit/IP", "Inpatient Visit"),
    ("Visit/ER", "Emergency Room Visit"),
)
OP, IP, ER = 0, 1, 2

_RACES = (
    ("Race/White", "White", 0.62),
    ("Race/Black", "Black or African American", 0.13),
    ("Race/Asian", "Asian", 0.06),
    ("Race/Other", "Other race", 0.19),
)


def _icd_code(code: str) -> str:
    return f"ICD10CM/{code}"


@lru_cache(maxsize=1)
def _concepts() -> tuple[_Concept, ...]:
    """Every code the generator can emit, with its description, domain, unit and range."""
    out: list[_Concept] = [
        _Concept(s.BIRTH_CODE, "Birth", D.DEMOGRAPHIC),
        _Concept(s.DEATH_CODE, "Death", D.DEMOGRAPHIC),
        _Concept(s.VISIT_END_CODE, "End of visit", D.VISIT),
        _Concept("Gender/F", "FEMALE", D.DEMOGRAPHIC),
        _Concept("Gender/M", "MALE", D.DEMOGRAPHIC),
        _Concept("Ethnicity/Hispanic", "Hispanic or Latino", D.DEMOGRAPHIC),
        _Concept("Ethnicity/NotHispanic", "Not Hispanic or Latino", D.DEMOGRAPHIC),
    ]
    out += [_Concept(code, desc, D.DEMOGRAPHIC) for code, desc, _ in _RACES]
    out += [_Concept(code, desc, D.VISIT) for code, desc in _VISITS]
    for raw in [c.icd for c in _CHRONIC] + list(_ICD_OTHER):
        if not icd.is_valid_item(raw):  # pragma: no cover - guards the tables above
            raise ValueError(f"not an ICD-10-CM code: {raw}")
        out.append(_Concept(_icd_code(raw), icd.get_description(raw), D.CONDITION))
    out += [_Concept(f"RxNorm/{cui}", name, D.DRUG) for cui, name in _DRUGS.values()]
    out += [_Concept(f"CPT4/{code}", name, D.PROCEDURE) for code, name in _PROCEDURES.values()]
    out += [_Concept(f"LOINC/{c}", name, D.MEASUREMENT, unit, lo, hi) for c, name, unit, lo, hi in _LABS.values()]
    return tuple(out)


@lru_cache(maxsize=1)
def _index() -> dict[str, int]:
    return {c.code: i for i, c in enumerate(_concepts())}


def _ix(code: str) -> int:
    return _index()[code]


def _icd_parent(raw: str) -> str | None:
    """ICD-10-CM parent of a code or block; None at the top (chapters are left out)."""
    parent = icd.get_parent(raw)
    if not parent or icd.is_chapter(parent):
        return None
    return str(parent)


def synth_codes() -> pl.DataFrame:
    """The codes.parquet rows: every code the generator emits plus its ICD-10-CM ancestors."""
    rows: dict[str, tuple[str, list[str] | None, str]] = {}
    for c in _concepts():
        parents = None
        if c.code.startswith("ICD10CM/"):
            parent = _icd_parent(c.code.removeprefix("ICD10CM/"))
            parents = [_icd_code(parent)] if parent else None
        rows[c.code] = (c.description, parents, str(c.domain))
    todo = [r[1][0] for r in rows.values() if r[1]]
    while todo:
        code = todo.pop()
        if code in rows:
            continue
        raw = code.removeprefix("ICD10CM/")
        parent = _icd_parent(raw)
        rows[code] = (icd.get_description(raw), [_icd_code(parent)] if parent else None, str(D.CONDITION))
        if parent:
            todo.append(_icd_code(parent))
    return pl.DataFrame(
        {
            s.CODE: list(rows),
            s.DESCRIPTION: [r[0] for r in rows.values()],
            s.PARENT_CODES: [r[1] for r in rows.values()],
            s.DOMAIN: [r[2] for r in rows.values()],
        },
        schema={
            s.CODE: pl.String,
            s.DESCRIPTION: pl.String,
            s.PARENT_CODES: pl.List(pl.String),
            s.DOMAIN: pl.String,
        },
    )


# --- event accumulation ------------------------------------------------------------------------

# Order of events that share a subject and a time: statics, birth, visit start, vitals, labs,
# diagnoses, drugs, procedures, visit end, death.
P_STATIC, P_BIRTH, P_VISIT, P_VITAL, P_LAB, P_DX, P_DRUG, P_PROC, P_END, P_DEATH = range(10)


class _Events:
    """Column chunks of events for one shard; assembled into a polars frame at the end."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Arr]] = {k: [] for k in ("sub", "t", "code", "val", "vis", "txt", "lo", "hi", "prio")}

    def add(
        self,
        sub: Arr,
        t: Arr | float,
        code: Arr | int,
        prio: int,
        *,
        value: Arr | None = None,
        visit: Arr | None = None,
        text: Arr | int = -1,
        ref_low: Arr | None = None,
        ref_high: Arr | None = None,
    ) -> None:
        n = len(sub)
        if n == 0:
            return

        def full(x: Arr | float | int | None, dtype: Any, fill: Any) -> Arr:
            if x is None:
                return np.full(n, fill, dtype=dtype)
            return np.broadcast_to(np.asarray(x, dtype=dtype), (n,))

        c = self.cols
        c["sub"].append(np.asarray(sub, dtype=np.int64))
        c["t"].append(full(t, np.float64, np.nan))
        c["code"].append(full(code, np.int32, -1))
        c["val"].append(full(value, np.float32, np.nan))
        c["vis"].append(full(visit, np.int64, -1))
        c["txt"].append(full(text, np.int32, -1))
        c["lo"].append(full(ref_low, np.float32, np.nan))
        c["hi"].append(full(ref_high, np.float32, np.nan))
        c["prio"].append(np.full(n, prio, dtype=np.int8))

    def frame(self, start: dt.date, first_sid: int, first_vid: int) -> pl.DataFrame:
        """One polars frame in the event schema, sorted by subject, time and event order."""
        col = {k: np.concatenate(v) for k, v in self.cols.items()}
        self.cols = {k: [] for k in self.cols}
        minutes = np.rint(col.pop("t") * 1440.0)
        static = np.isnan(minutes)
        minutes = np.where(static, 0, minutes).astype(np.int64)
        # one sort key: subject, then time (statics first), then event order; sorted stably
        slot = np.where(static, 0, minutes + (1 << 31))
        key = (col["sub"] << 36) | (slot << 4) | col.pop("prio").astype(np.int64)
        start_us = int((dt.datetime.combine(start, dt.time()) - dt.datetime(1970, 1, 1)) / dt.timedelta(microseconds=1))
        concepts = _concepts()
        lo0 = np.array([np.nan if c.ref_low is None else c.ref_low for c in concepts], dtype=np.float32)
        hi0 = np.array([np.nan if c.ref_high is None else c.ref_high for c in concepts], dtype=np.float32)
        code = col.pop("code")
        lo, hi = col.pop("lo"), col.pop("hi")
        raw = pl.DataFrame(
            {
                "key": key,
                "sub": col.pop("sub"),
                "us": np.where(static, 0, start_us + minutes * 60_000_000),
                "static": static,
                "code": code.astype(np.uint32),
                "val": col.pop("val"),
                "txt": col.pop("txt"),
                "vis": col.pop("vis"),
                "lo": np.where(np.isnan(lo), lo0[code], lo),
                "hi": np.where(np.isnan(hi), hi0[code], hi),
            }
        )
        del key, static, minutes, slot, code, lo, hi
        raw = raw.sort("key", maintain_order=True)
        names = pl.Series([c.code for c in concepts], dtype=pl.String)
        units = pl.Series([c.unit for c in concepts], dtype=pl.String)
        txt = raw.select(pl.when(pl.col("txt") >= 0).then(pl.col("txt")).cast(pl.UInt32)).to_series()
        return pl.DataFrame(
            {
                s.SUBJECT_ID: raw.select(pl.col("sub") + first_sid).to_series(),
                s.TIME: raw.select(pl.when(~pl.col("static")).then(pl.col("us")).cast(pl.Datetime("us"))).to_series(),
                s.CODE: names.gather(raw["code"]),
                s.NUMERIC_VALUE: raw["val"].fill_nan(None),
                s.TEXT_VALUE: names.gather(txt),
                s.UNIT: units.gather(raw["code"]),
                s.VISIT_ID: raw.select(pl.when(pl.col("vis") >= 0).then(pl.col("vis") + first_vid)).to_series(),
                s.REF_LOW: raw["lo"].fill_nan(None),
                s.REF_HIGH: raw["hi"].fill_nan(None),
            }
        )


# --- small helpers ---------------------------------------------------------------------------


def _sigmoid(x: Arr) -> Arr:
    return 1.0 / (1.0 + np.exp(-x))


def _choice(rng: np.random.Generator, weights: Arr) -> Arr:
    """One category per row of a (rows, k) non-negative weight matrix."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cum[:, -1]
    return np.minimum((cum <= u[:, None]).sum(axis=1), weights.shape[1] - 1)


def _expand(counts: Arr) -> tuple[Arr, Arr]:
    """For ``counts[i]`` copies of each row i: the row of each copy and its rank 0..counts[i]-1."""
    rows = np.repeat(np.arange(len(counts)), counts)
    return rows, np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)


def _ramp(t: Arr, t0: Arr, width: Arr | float) -> Arr:
    """0 before ``t0``, rising linearly to 1 at ``t0 + width`` (nan/inf onsets give 0)."""
    with np.errstate(invalid="ignore"):
        r = np.clip((t - t0) / width, 0.0, 1.0)
    return np.nan_to_num(r, nan=0.0)


@dataclass
class _Visits:
    """Visits of one shard, sorted by subject then start time."""

    sub: Arr
    kind: Arr
    start: Arr
    end: Arr
    reason: Arr  # concept index of the admission / ER reason, -1 for none
    key: Arr  # sub * _KEY + start, for first-visit-after searches

    def __len__(self) -> int:
        return len(self.sub)

    def first_at_or_after(self, sub: Arr, t: Arr) -> Arr:
        """Index of each subject's first visit starting at or after ``t`` (-1 if none)."""
        ok = np.isfinite(t)
        q = sub * _KEY + np.where(ok, np.maximum(t, -1.0), 0.0)
        j = np.searchsorted(self.key, q, side="left")
        jj = np.minimum(j, max(len(self) - 1, 0))
        found = ok & (j < len(self)) & (self.sub[jj] == sub) if len(self) else np.zeros(len(sub), bool)
        return np.where(found, j, -1)


# --- the generator ---------------------------------------------------------------------------


class _Shard:
    """Generate the events of ``n`` subjects; all arrays are indexed by subject 0..n-1."""

    def __init__(self, cfg: SynthConfig, shard_index: int, first_sid: int, first_vid: int, n: int) -> None:
        self.cfg = cfg
        self.n = n
        self.first_sid = first_sid
        self.first_vid = first_vid
        self.rng = np.random.default_rng([cfg.seed, shard_index])
        self.W = cfg.window_days
        self.ev = _Events()
        self.counts: dict[str, int] = {}

    # subjects, conditions and death -------------------------------------------------------
    def subjects(self) -> None:
        rng, n = self.rng, self.n
        self.male = rng.random(n) < 0.48
        old = rng.random(n) < 0.3
        self.age0 = np.where(old, rng.uniform(65, 90, n), rng.uniform(18, 65, n))
        self.birth = -np.floor(self.age0 * YEAR) - 1.0
        self.race = _choice(rng, np.tile([r[2] for r in _RACES], (n, 1)))
        self.hispanic = rng.random(n) < 0.18
        self.height = np.where(self.male, rng.normal(1.76, 0.07, n), rng.normal(1.62, 0.065, n))
        self.bmi0 = np.clip(27.5 * np.exp(rng.normal(0.0, 0.19, n)), 16.0, 60.0)
        self.bmi_trend = rng.normal(0.08, 0.25, n)
        smoke = rng.random(n)
        self.smoker = smoke < 0.15
        self.former = (smoke >= 0.15) & (smoke < 0.35)
        self.predm = rng.random(n) < _sigmoid(-1.7 + 0.03 * (self.age0 - 50) + 0.08 * (self.bmi0 - 28))

    def age(self, sub: Arr, t: Arr) -> Arr:
        return (t - self.birth[sub]) / YEAR

    def conditions(self) -> None:
        rng, n, cfg = self.rng, self.n, self.cfg
        years = int(np.ceil(self.W / YEAR))
        onset: dict[str, Arr] = {}
        for c in _CHRONIC:
            extra = 1.2 * self.predm if c.key == "dm" else 0.0
            fixed = c.male * self.male + c.smoker * self.smoker + extra
            lin0 = c.age * (self.age0 - 50) + c.bmi * (self.bmi0 - 28) + fixed
            lin0 = lin0 + sum(w * (onset[d] <= 0) for d, w in c.deps)
            t = np.full(n, np.inf)
            prevalent = rng.random(n) < _sigmoid(c.prev + lin0)
            t[prevalent] = -rng.uniform(30, 3650, int(prevalent.sum()))
            u = rng.random((years, n))
            when = rng.random((years, n))
            for y in range(years):
                lin = c.age * (self.age0 + y - 50) + c.bmi * (self.bmi0 + self.bmi_trend * y - 28) + fixed
                lin = lin + sum(w * (onset[d] <= y * YEAR) for d, w in c.deps)
                p = -np.expm1(-np.exp(c.inc + lin) * cfg.disease_scale)
                new = np.isinf(t) & (u[y] < p)
                t[new] = (y + when[y][new]) * YEAR
            t[t >= self.W] = np.inf
            onset[c.key] = t
        self.onset = onset

        # death: Gompertz in age, raised by comorbidity, on a yearly grid
        u = rng.random((years, n))
        when = rng.random((years, n))
        death = np.full(n, np.inf)
        for y in range(years):
            t0 = y * YEAR
            lin = -11.4 + 0.088 * (self.age0 + y) + 0.3 * self.smoker
            for key, w in (("hf", 0.9), ("ckd", 0.5), ("copd", 0.6), ("dm", 0.3), ("cad", 0.3), ("af", 0.2)):
                lin = lin + w * (onset[key] <= t0)
            new = np.isinf(death) & (u[y] < -np.expm1(-np.exp(lin)))
            death[new] = (y + when[y][new]) * YEAR
        death[death >= self.W] = np.inf
        self.death = death
        self.obs_end = np.minimum(self.W, death)
        late = rng.random(n) < 0.45
        obs_start = np.where(late, rng.uniform(0, 0.6 * self.W, n), rng.uniform(0, 45, n))
        self.obs_start = np.where(obs_start >= self.obs_end - 1, self.obs_end * rng.uniform(0, 0.5, n), obs_start)

    def active(self, key: str, sub: Arr, t: Arr) -> Arr:
        return self.onset[key][sub] <= t

    def burden(self, sub: Arr, t: Arr) -> Arr:
        return sum((self.active(k, sub, t) for k in _MAJOR), np.zeros(len(sub)))

    # visits -------------------------------------------------------------------------------
    _IP_REASONS = (
        "J18.9", "N39.0", "R07.9", "R55", "K92.2", "E86.0", "I21.9", "I63.9", "J44.1", "I50.9", "N17.9", "E11.65",
        "I48.91",
    )  # fmt: skip
    _IP_LOS = (0.15, 0.0, -0.5, -0.3, 0.1, -0.3, 0.3, 0.5, 0.1, 0.25, 0.2, -0.1, -0.2)

    def _ip_reason(self, sub: Arr, t: Arr) -> Arr:
        a = {k: self.active(k, sub, t).astype(float) for k in ("cad", "af", "copd", "hf", "ckd", "dm")}
        one = np.ones(len(sub))
        w = np.column_stack(
            [1.0 * one, 0.7 * one, 0.6 * one, 0.4 * one, 0.3 * one, 0.4 * one, 0.15 + 0.8 * a["cad"],
             0.15 + 0.6 * a["af"], 1.5 * a["copd"], 0.05 + 2.5 * a["hf"], 0.2 + 1.0 * a["ckd"], 0.7 * a["dm"],
             0.3 * a["af"]]
        )  # fmt: skip
        return _choice(self.rng, w)

    def _los(self, sub: Arr, t: Arr, reason: Arr) -> Arr:
        """Length of stay in days: longer with comorbidity burden, age and serious reasons."""
        mu = (
            np.log(2.3)
            + 0.13 * self.burden(sub, t)
            + 0.012 * (self.age(sub, t) - 60)
            + np.asarray(self._IP_LOS)[reason]
        )
        return np.clip(np.exp(mu + self.rng.normal(0, 0.6, len(sub))), 0.3, 45.0)

    def _readmit_p(self, sub: Arr, t: Arr, los: Arr) -> Arr:
        p = 0.06 + 0.12 * self.active("hf", sub, t) + 0.08 * self.active("ckd", sub, t)
        return p + 0.05 * self.active("copd", sub, t) + 0.03 * self.active("dm", sub, t) + 0.03 * (los >= 7)

    def visits(self) -> None:
        rng, n, cfg = self.rng, self.n, self.cfg
        span = self.obs_end - self.obs_start
        mid = (self.obs_start + self.obs_end) / 2
        idx = np.arange(n)
        nact = self.burden(idx, mid) + sum(self.active(k, idx, mid) for k in ("hld", "dep", "hypothy", "gerd", "oa"))
        age_mid = self.age(idx, mid)

        # outpatient: rate grows with conditions and age; the first one opens observation
        rate = np.clip(0.9 + 0.45 * nact + 0.01 * (age_mid - 50), 0.4, 7.0) * cfg.visit_scale
        n_op = rng.poisson(rate * span / YEAR) + 1
        op_sub = np.repeat(idx, n_op)
        op_t = self.obs_start[op_sub] + rng.random(len(op_sub)) * span[op_sub]
        op_t[np.cumsum(n_op) - n_op] = self.obs_start + rng.uniform(0, 20, n)
        op_start = np.floor(op_t) + rng.uniform(8 * HOUR, 16.5 * HOUR, len(op_sub))
        op_end = op_start + rng.uniform(25, 60, len(op_sub)) * MINUTE

        # emergency room
        lin = -2.4 + 0.01 * (age_mid - 50) + 0.15 * nact
        n_er = rng.poisson(np.exp(lin) * cfg.visit_scale * span / YEAR)
        er_sub = np.repeat(idx, n_er)
        er_start = self.obs_start[er_sub] + rng.random(len(er_sub)) * span[er_sub]
        # atrial fibrillation sometimes presents in the ER
        af = self.onset["af"]
        trig = (af > self.obs_start) & (af < self.obs_end) & (rng.random(n) < 0.15)
        er_sub = np.concatenate([er_sub, idx[trig]])
        er_start = np.concatenate([er_start, af[trig] + rng.uniform(0, 2, int(trig.sum()))])
        er_end = er_start + rng.uniform(2, 8, len(er_sub)) * HOUR
        er_reason = self._er_reason(len(er_sub))
        er_reason[len(er_sub) - int(trig.sum()) :] = _ix(_icd_code("I48.91"))

        # inpatient: background, at heart-failure / AF onset, terminal, then readmissions
        lin = -3.3 + 0.03 * (age_mid - 50)
        for key, w in (("hf", 0.7), ("ckd", 0.5), ("copd", 0.6), ("dm", 0.3), ("cad", 0.3), ("af", 0.3)):
            lin = lin + w * self.active(key, idx, mid)
        n_ip = rng.poisson(np.exp(lin) * cfg.visit_scale * span / YEAR)
        ip_sub = np.repeat(idx, n_ip)
        ip_start = self.obs_start[ip_sub] + rng.random(len(ip_sub)) * span[ip_sub]
        ip_reason = self._ip_reason(ip_sub, ip_start)
        for key, p, code in (("hf", 0.5, "I50.9"), ("af", 0.12, "I48.91")):
            on = self.onset[key]
            trig = (on > self.obs_start) & (on < self.obs_end) & (rng.random(n) < p)
            ip_sub = np.concatenate([ip_sub, idx[trig]])
            ip_start = np.concatenate([ip_start, on[trig] + rng.uniform(0, 2, int(trig.sum()))])
            ip_reason = np.concatenate([ip_reason, np.full(int(trig.sum()), self._IP_REASONS.index(code))])
        ip_los = self._los(ip_sub, ip_start, ip_reason)
        ip_end = ip_start + ip_los
        # terminal admissions end at death
        dies = np.isfinite(self.death) & (rng.random(n) < 0.35)
        t_sub = idx[dies]
        t_reason = self._ip_reason(t_sub, self.death[dies])
        t_los = self._los(t_sub, self.death[dies], t_reason)
        ip_sub = np.concatenate([ip_sub, t_sub])
        ip_start = np.concatenate([ip_start, self.death[dies] - t_los])
        ip_end = np.concatenate([ip_end, self.death[dies]])
        ip_reason = np.concatenate([ip_reason, t_reason])
        terminal = np.zeros(len(ip_sub), bool)
        terminal[len(terminal) - len(t_sub) :] = True
        # readmissions, two rounds
        src = np.flatnonzero(~terminal)
        for _ in range(2):
            p_re = self._readmit_p(ip_sub[src], ip_end[src], ip_end[src] - ip_start[src])
            go = src[rng.random(len(src)) < p_re]
            r_sub = ip_sub[go]
            r_start = ip_end[go] + np.minimum(rng.exponential(11.0, len(go)), 90.0) + 0.2
            r_reason = self._ip_reason(r_sub, r_start)
            r_end = r_start + self._los(r_sub, r_start, r_reason)
            src = np.arange(len(ip_sub), len(ip_sub) + len(go))
            ip_sub = np.concatenate([ip_sub, r_sub])
            ip_start = np.concatenate([ip_start, r_start])
            ip_end = np.concatenate([ip_end, r_end])
            ip_reason = np.concatenate([ip_reason, r_reason])
        ip_reason = np.asarray([_ix(_icd_code(c)) for c in self._IP_REASONS])[ip_reason]
        # dying in hospital cuts the stay at death
        ip_end = np.minimum(ip_end, self.death[ip_sub])

        sub = np.concatenate([op_sub, er_sub, ip_sub])
        kind = np.concatenate([np.full(len(op_sub), OP), np.full(len(er_sub), ER), np.full(len(ip_sub), IP)])
        start = np.concatenate([op_start, er_start, ip_start])
        end = np.concatenate([op_end, er_end, ip_end])
        reason = np.concatenate([np.full(len(op_sub), -1), er_reason, ip_reason])
        keep = (start >= self.obs_start[sub]) & (end <= self.obs_end[sub]) & (end > start)
        sub, kind, start, end, reason = sub[keep], kind[keep], start[keep], end[keep], reason[keep]
        order = np.lexsort((start, sub))
        sub, kind, start, end, reason = sub[order], kind[order], start[order], end[order], reason[order]
        # nothing may start while an earlier stay of the same subject is still open
        ends = np.where(kind == IP, sub * _KEY + end, -np.inf)
        prev_open = np.concatenate([[-np.inf], np.maximum.accumulate(ends)[:-1]])
        ok = sub * _KEY + start >= prev_open
        self.v = _Visits(sub[ok], kind[ok], start[ok], end[ok], reason[ok], (sub * _KEY + start)[ok])

    def _er_reason(self, m: int) -> Arr:
        codes = ("R07.9", "R10.9", "R51.9", "J06.9", "R42", "M54.50", "R55", "N39.0")
        w = np.tile([0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], (m, 1))
        table = np.asarray([_ix(_icd_code(c)) for c in codes])
        return table[_choice(self.rng, w)] if m else np.zeros(0, dtype=int)

    # clinical content ---------------------------------------------------------------------
    def emit_visits(self) -> None:
        v, ev = self.v, self.ev
        vid = np.arange(len(v))
        codes = np.asarray([_ix(c) for c, _ in _VISITS])
        ev.add(v.sub, v.start, codes[v.kind], P_VISIT, visit=vid)
        ev.add(v.sub, v.end, _ix(s.VISIT_END_CODE), P_END, visit=vid, text=codes[v.kind])

        # when things happen inside a visit (never after its end: a stay may be cut short by death);
        # one trailing inf so that visit index -1 ("none") reads as never
        def at(offset: Arr) -> Arr:
            return np.append(np.minimum(v.start + offset, v.end), np.inf)

        self.t_vital = at(np.where(v.kind == OP, 5, 10) * MINUTE)
        self.t_lab = at(np.select([v.kind == OP, v.kind == ER], [15 * MINUTE, 30 * MINUTE], HOUR))
        self.t_proc = at(np.select([v.kind == OP, v.kind == ER], [20 * MINUTE, 40 * MINUTE], 2 * HOUR))
        self.t_reason = at(np.where(v.kind == ER, 15 * MINUTE, 30 * MINUTE))
        self.t_refill = at(np.where(v.kind == IP, 2 * HOUR, v.end - v.start))
        self.t_dx = np.append(v.end, np.inf)
        for k, (code, _) in enumerate(_VISITS):
            self.counts[f"visits/{code.removeprefix('Visit/')}"] = int((v.kind == k).sum())

    def emit_statics(self) -> None:
        ev, idx = self.ev, np.arange(self.n)
        ev.add(idx, np.nan, np.where(self.male, _ix("Gender/M"), _ix("Gender/F")), P_STATIC)
        race = np.asarray([_ix(r[0]) for r in _RACES])[self.race]
        ev.add(idx, np.nan, race, P_STATIC)
        eth = np.where(self.hispanic, _ix("Ethnicity/Hispanic"), _ix("Ethnicity/NotHispanic"))
        ev.add(idx, np.nan, eth, P_STATIC)
        ev.add(idx, self.birth, _ix(s.BIRTH_CODE), P_BIRTH)
        dead = np.flatnonzero(np.isfinite(self.death))
        ev.add(dead, self.death[dead], _ix(s.DEATH_CODE), P_DEATH)

    def diagnoses(self) -> None:
        """Chronic diagnoses at the first visit after onset plus a delay, then at follow-ups."""
        rng, v, idx = self.rng, self.v, np.arange(self.n)
        self.dx_visit: dict[str, Arr] = {}
        self.dx_time: dict[str, Arr] = {}
        repeat_p = np.array([0.3, 0.75, 0.15])  # OP, IP, ER
        for c in _CHRONIC:
            t = self.onset[c.key]
            when = np.where(
                t <= self.obs_start,
                self.obs_start + rng.exponential(150.0, self.n),
                t + rng.exponential(c.delay, self.n),
            )
            if c.key in ("hf", "af"):  # acute presentations are diagnosed where they present
                when = np.where(t > self.obs_start, t, when)
            j = v.first_at_or_after(idx, np.where(np.isfinite(t), when, np.inf))
            self.dx_visit[c.key] = j
            self.dx_time[c.key] = self.t_dx[j]
            code = _ix(_icd_code(c.icd))
            has = np.flatnonzero(j >= 0)
            self.ev.add(has, self.t_dx[j[has]], code, P_DX, visit=j[has])
            d = j[v.sub]
            rep = np.flatnonzero((d >= 0) & (np.arange(len(v)) > d) & (rng.random(len(v)) < repeat_p[v.kind]))
            self.ev.add(v.sub[rep], self.t_dx[rep], code, P_DX, visit=rep)
        # smoking status at some visits
        for mask, smoke_code, p in ((self.smoker, "F17.210", 0.2), (self.former, "Z87.891", 0.1)):
            sel = np.flatnonzero(mask[v.sub] & (rng.random(len(v)) < p))
            self.ev.add(v.sub[sel], self.t_dx[sel], _ix(_icd_code(smoke_code)), P_DX, visit=sel)

    def reasons_and_symptoms(self) -> None:
        """Admission/ER reasons, outpatient episodes and the planted prodromal symptoms."""
        rng, v, ev = self.rng, self.v, self.ev
        n_v = len(v)
        has_reason = np.flatnonzero(v.reason >= 0)
        ev.add(v.sub[has_reason], self.t_reason[has_reason], v.reason[has_reason], P_DX, visit=has_reason)
        # outpatient episodes
        op = np.flatnonzero((v.kind == OP) & (rng.random(n_v) < 0.45))
        episodes = ("Z00.00", "J06.9", "M54.50", "R05.9", "R51.9", "Z23", "R10.9")
        ep_codes = np.asarray([_ix(_icd_code(c)) for c in episodes])
        pick = _choice(rng, np.tile([0.35, 0.2, 0.15, 0.1, 0.08, 0.06, 0.06], (len(op), 1)))
        ev.add(v.sub[op], self.t_dx[op], ep_codes[pick], P_DX, visit=op)
        # symptoms: likely in the year before (and month after) onset, rare otherwise
        symptoms = (
            ("R00.2", (("af", 0.3),), 0.008),
            ("R06.00", (("hf", 0.3), ("copd", 0.15)), 0.01),
            ("R60.0", (("hf", 0.25),), 0.008),
            ("R05.9", (("copd", 0.25),), 0.01),
            ("R53.83", (("ckd", 0.1), ("anemia", 0.2)), 0.01),
            ("R35.0", (("dm", 0.12),), 0.005),
            ("R07.89", (("cad", 0.15),), 0.008),
        )
        t = v.start
        self.palpitations = np.zeros(n_v, bool)
        for code, causes, p_bg in symptoms:
            p = np.full(n_v, p_bg)
            for key, p_pre in causes:
                on = self.onset[key][v.sub]
                p = np.where((t >= on - YEAR) & (t < on + 30), np.maximum(p, p_pre), p)
            sel = rng.random(n_v) < p
            if code == "R00.2":
                self.palpitations = sel
            idx = np.flatnonzero(sel)
            when = np.where(v.kind[idx] == IP, self.t_reason[idx], self.t_dx[idx])
            ev.add(v.sub[idx], when, _ix(_icd_code(code)), P_DX, visit=idx)

    def drugs(self) -> None:
        """Drugs start at the visit that diagnosed their indication; refills at later visits."""
        rng, v, n = self.rng, self.v, self.n
        none = np.iinfo(np.int64).max
        start = {g: np.full(n, none, dtype=np.int64) for g in _DRUGS}

        def give(drug: str, visit: Arr, p: float | Arr) -> None:
            ok = (visit >= 0) & (rng.random(n) < p)
            start[drug] = np.where(ok, np.minimum(start[drug], visit), start[drug])

        dx = self.dx_visit
        htn_pick = _choice(rng, np.tile([0.5, 0.25, 0.15, 0.1], (n, 1)))
        for k, drug in enumerate(("lisinopril", "amlodipine", "hctz")):
            give(drug, np.where(htn_pick == k, dx["htn"], -1), 1.0)
        give("atorvastatin", dx["hld"], 0.7)
        give("atorvastatin", dx["cad"], 0.8)
        give("aspirin", dx["cad"], 0.7)
        give("metformin", dx["dm"], 0.85)
        give("apixaban", dx["af"], 0.7)
        give("carvedilol", dx["af"], 0.4)
        give("furosemide", dx["hf"], 0.85)
        give("carvedilol", dx["hf"], 0.6)
        give("lisinopril", dx["hf"], 0.5)
        give("sertraline", dx["dep"], 0.6)
        give("levothyroxine", dx["hypothy"], 0.9)
        give("omeprazole", dx["gerd"], 0.6)
        give("ferrous_sulfate", dx["anemia"], 0.5)
        idx = np.arange(n)
        # second-line agents a year or two later
        later = v.first_at_or_after(idx, self.dx_time["dm"] + 2 * YEAR)
        give("empagliflozin", later, 0.3)
        later = v.first_at_or_after(idx, self.dx_time["htn"] + YEAR)
        give("amlodipine", np.where(start["amlodipine"] == none, later, -1), 0.3)
        ckd_visit = dx["ckd"]
        no_acei = (start["lisinopril"] == none) | (start["lisinopril"] > ckd_visit)
        give("losartan", np.where(no_acei, ckd_visit, -1), 0.35)

        self.drug_t: dict[str, Arr] = {}
        refill_p = np.array([0.3, 0.6, 0.0])
        n_v = len(v)
        for drug, first in start.items():
            has = np.flatnonzero(first != none)
            code = _ix(f"RxNorm/{_DRUGS[drug][0]}")
            self.ev.add(has, self.t_dx[first[has]], code, P_DRUG, visit=first[has])
            self.drug_t[drug] = self.t_dx[np.where(first != none, first, -1)]
            f = first[v.sub]
            rep = np.flatnonzero((f != none) & (np.arange(n_v) > f) & (rng.random(n_v) < refill_p[v.kind]))
            t = self.t_refill[rep]
            self.ev.add(v.sub[rep], t, code, P_DRUG, visit=rep)

    def on(self, drug: str, sub: Arr, t: Arr) -> Arr:
        return self.drug_t[drug][sub] <= t

    # labs and vitals ----------------------------------------------------------------------
    def latent(self) -> None:
        """Per-subject parameters of the lab trajectories."""
        rng, n = self.rng, self.n
        self.egfr0 = np.clip(127 - 0.75 * self.age0 + rng.normal(0, 12, n), 55, 150)
        self.ckd_target = rng.uniform(50, 59, n)
        self.ckd_lead = rng.uniform(1.0, 3.0, n) * YEAR
        self.ckd_start = rng.uniform(35, 59, n)
        self.ckd_slope = rng.uniform(0.5, 3.5, n)
        self.a1c0 = np.where(
            self.predm,
            rng.uniform(5.7, 6.3, n),
            np.clip(5.25 + 0.008 * (self.age0 - 50) + 0.015 * (self.bmi0 - 28) + rng.normal(0, 0.2, n), 4.4, 5.6),
        )
        self.dm_peak = rng.uniform(6.8, 9.8, n)
        self.dm_lead = rng.uniform(1.0, 3.0, n) * YEAR
        self.k0 = rng.normal(4.2, 0.18, n)
        self.na0 = rng.normal(140.0, 1.3, n)
        self.hgb0 = np.where(self.male, rng.normal(15.0, 0.9, n), rng.normal(13.6, 0.8, n))
        lowplt = rng.random(n) < 0.04
        self.plt0 = np.where(lowplt, rng.uniform(85, 145, n), np.clip(250 * np.exp(rng.normal(0, 0.2, n)), 150, 450))
        self.sbp0 = 117 + 0.25 * (self.age0 - 50) + 0.5 * (self.bmi0 - 28) + rng.normal(0, 8, n)
        self.hr0 = rng.normal(73, 7, n)
        self.af_pre = rng.random(n) < 0.5  # paroxysmal AF before diagnosis shows in heart rate

    def egfr(self, sub: Arr, t: Arr) -> Arr:
        base = self.egfr0[sub] - 0.8 * t / YEAR
        T = self.onset["ckd"][sub]
        lead = self.ckd_lead[sub]
        drop = np.maximum(self.egfr0[sub] - 0.8 * np.where(np.isfinite(T), T, 0) / YEAR - self.ckd_target[sub], 0)
        incident = base - drop * _ramp(t, T - lead, lead)
        with np.errstate(invalid="ignore"):
            after = np.nan_to_num(np.maximum(t - np.maximum(T, 0), 0), posinf=0.0) / YEAR
        prevalent = self.ckd_start[sub] - self.ckd_slope[sub] * t / YEAR
        out = np.where(T <= 0, prevalent, incident - self.ckd_slope[sub] * after)
        return np.maximum(out, 5.0)

    def a1c(self, sub: Arr, t: Arr) -> Arr:
        base = self.a1c0[sub] + 0.015 * t / YEAR
        T = self.onset["dm"][sub]
        lead = self.dm_lead[sub]
        base_T = self.a1c0[sub] + 0.015 * np.where(np.isfinite(T), T, 0) / YEAR
        pre = base + np.maximum(6.6 - base_T, 0) * _ramp(t, T - lead, lead)
        post = 6.6 + (self.dm_peak[sub] - 6.6) * _ramp(t, T, 180.0)
        with np.errstate(invalid="ignore"):
            yrs = np.nan_to_num(np.maximum(t - np.maximum(T, 0), 0), posinf=0.0) / YEAR
        post = np.where(T <= 0, self.dm_peak[sub], post) + 0.1 * yrs
        post = post - 0.9 * self.on("metformin", sub, t) - 0.6 * self.on("empagliflozin", sub, t)
        return np.where(t >= T, np.maximum(post, 5.8), pre)

    def labs(self) -> None:
        rng, v, ev = self.rng, self.v, self.ev
        n_v = len(v)
        burden = self.burden(v.sub, v.start)
        p_draw = np.select([v.kind == OP, v.kind == ER], [np.clip(0.35 + 0.1 * burden, 0, 0.9), 0.7], 1.0)
        drawn = rng.random(n_v) < p_draw
        # inpatient stays get a draw on admission and each following morning (at most 10)
        n_draws = np.where(v.kind == IP, np.clip(np.ceil(v.end - v.start - HOUR), 1, 10), 1) * drawn
        d_vis, k = _expand(n_draws.astype(np.int64))
        d_t = self.t_lab[d_vis] + k
        keep = d_t <= v.end[d_vis]
        d_vis, d_t, k = d_vis[keep], d_t[keep], k[keep]
        sub, kind, m = v.sub[d_vis], v.kind[d_vis], len(d_vis)
        admission = k == 0
        reason = v.reason[d_vis]
        age = self.age(sub, d_t)
        ip = (kind == IP).astype(float)

        dm_known = self.dx_time["dm"][sub] <= d_t
        bmp = np.where(kind == OP, rng.random(m) < 0.9, True)
        cbc = np.where(kind == OP, rng.random(m) < 0.5, np.where(admission, True, rng.random(m) < 0.6))
        p_a1c = np.where(dm_known, 0.5, np.where(age > 40, 0.08 + 0.1 * self.predm[sub], 0.02))
        a1c_on = admission & (kind != ER) & (rng.random(m) < np.where(kind == IP, 0.4 * dm_known, p_a1c))

        # kidney: latent eGFR -> creatinine (inverse MDRD), measured with noise, eGFR re-estimated
        female = ~self.male[sub]
        sexf = np.where(female, 0.742, 1.0)
        true_egfr = self.egfr(sub, d_t)
        scr: Arr = (true_egfr / (175.0 * age**-0.203 * sexf)) ** (-1 / 1.154)
        aki = reason == _ix(_icd_code("N17.9"))
        bump = np.where(aki, rng.uniform(1.5, 2.8, m) * np.exp(-k / 3.0) + (1 - np.exp(-k / 3.0)), 1.0)
        bump = bump * np.where(reason == _ix(_icd_code("E86.0")), 1.25, 1.0)
        scr = np.round(np.clip(scr * bump * np.exp(rng.normal(0, 0.05, m)), 0.3, 15.0), 2)
        egfr = np.round(175.0 * scr**-1.154 * age**-0.203 * sexf)
        acei = self.on("lisinopril", sub, d_t) | self.on("losartan", sub, d_t)
        loop, thz = self.on("furosemide", sub, d_t), self.on("hctz", sub, d_t)

        a1c_true = self.a1c(sub, d_t)
        a1c = np.round(np.clip(a1c_true + rng.normal(0, 0.15, m), 4.0, 15.0), 1)
        # ADAG average glucose from HbA1c; outpatient draws are mostly fasting, inpatient ones stressed
        setting: Arr = np.where(ip > 0, 1 + 0.15 * dm_known, 0.85)
        glucose: Arr = (28.7 * a1c_true - 46.7) * np.exp(rng.normal(0, 0.14, m)) * setting
        glucose = np.round(np.clip(glucose, 40, 600))

        ckd_k = 0.035 * np.maximum(60 - true_egfr, 0)
        potassium = self.k0[sub] + ckd_k + 0.25 * acei - 0.3 * loop - 0.2 * thz + 0.5 * aki
        potassium = np.round(np.clip(potassium + rng.normal(0, 0.28, m) + ip * rng.normal(0, 0.2, m), 2.5, 7.5), 1)
        hf_on = self.active("hf", sub, d_t) | (_ramp(d_t, self.onset["hf"][sub] - 180, 180) > 0.5)
        sodium = self.na0[sub] - 3 * hf_on - 2 * thz - 1 * loop - 0.05 * np.maximum(age - 65, 0)
        sodium = sodium - 2.5 * (self.on("sertraline", sub, d_t) & (age > 65)) + 5 * (reason == _ix(_icd_code("E86.0")))
        sodium = np.round(np.clip(sodium + rng.normal(0, 1.8, m) + ip * rng.normal(-1, 2.5, m), 115, 160))

        t_an = self.onset["anemia"][sub]
        anemia = 2.5 * np.where(t_an <= 0, 1.0, _ramp(d_t, t_an - 0.75 * YEAR, 0.75 * YEAR))
        anemia = anemia * (1 - 0.5 * self.on("ferrous_sulfate", sub, d_t))
        hgb = self.hgb0[sub] - 0.06 * np.maximum(60 - true_egfr, 0) - anemia - 0.02 * np.maximum(age - 60, 0)
        hgb = hgb - ip * (0.6 + 0.15 * k) - 3.0 * (reason == _ix(_icd_code("K92.2")))
        hgb = np.round(np.clip(hgb + rng.normal(0, 0.45, m), 4.0, 20.0), 1)
        plt = np.round(np.clip(self.plt0[sub] * np.exp(rng.normal(0, 0.07, m)) * (1 - 0.1 * ip), 5, 900))

        male = self.male[sub]
        lab_rows: list[tuple[str, Arr, Arr]] = [
            ("creatinine", bmp, scr),
            ("egfr", bmp, egfr),
            ("glucose", bmp, glucose),
            ("potassium", bmp, potassium),
            ("sodium", bmp, sodium),
            ("hemoglobin", cbc, hgb),
            ("platelets", cbc, plt),
            ("a1c", a1c_on, a1c),
        ]
        for key, mask, value in lab_rows:
            sel = np.flatnonzero(mask)
            lo = hi = None
            if key in _FEMALE_RANGES:
                (lo_f, hi_f), (lo_m, hi_m) = _FEMALE_RANGES[key], _MALE_RANGES[key]
                lo, hi = np.where(male[sel], lo_m, lo_f), np.where(male[sel], hi_m, hi_f)
            code = _ix(f"LOINC/{_LABS[key][0]}")
            ev.add(sub[sel], d_t[sel], code, P_LAB, value=value[sel], visit=d_vis[sel], ref_low=lo, ref_high=hi)
        # lab orders on outpatient/ER draws and on admission
        order = admission | (kind != IP)
        for key, mask in (("cmp", bmp), ("cbc", cbc), ("a1c", a1c_on)):
            sel = np.flatnonzero(mask & order)
            ev.add(sub[sel], d_t[sel], _ix(f"CPT4/{_PROCEDURES[key][0]}"), P_PROC, visit=d_vis[sel])
        self.counts["lab_draws"] = m

        # diagnoses driven by abnormal results, once per visit
        ckd_known = self.dx_time["ckd"][sub] <= d_t
        derived = (
            ("E87.5", bmp & (potassium >= 5.6), 0.6),
            ("E87.1", bmp & (sodium <= 130), 0.6),
            ("D69.6", cbc & (plt < 120), 0.4),
            ("R73.03", a1c_on & (a1c >= 5.7) & (a1c < 6.5) & ~dm_known, 0.4),
            ("N18.4", bmp & (egfr < 30) & ckd_known, 0.6),
            ("E11.65", bmp & (glucose > 250) & dm_known, 0.3),
        )
        for dx_code, mask, p in derived:
            vis = np.unique(d_vis[mask & (rng.random(m) < p)])
            ev.add(v.sub[vis], self.t_dx[vis], _ix(_icd_code(dx_code)), P_DX, visit=vis)

        # vitals at every OP/ER visit and with every inpatient draw
        self._vitals()

    def _vitals(self) -> None:
        rng, v, ev = self.rng, self.v, self.ev
        op_er = np.flatnonzero(v.kind != IP)
        ip_v = np.flatnonzero(v.kind == IP)
        n_ip = np.clip(np.ceil(v.end[ip_v] - v.start[ip_v] - HOUR), 1, 10).astype(np.int64)
        rep, k = _expand(n_ip)
        ip_rep = ip_v[rep]
        vis = np.concatenate([op_er, ip_rep])
        t = np.concatenate([self.t_vital[op_er], np.maximum(self.t_lab[ip_rep] + k - 20 * MINUTE, v.start[ip_rep])])
        k = np.concatenate([np.zeros(len(op_er), np.int64), k])
        keep = t <= v.end[vis]
        vis, t, k = vis[keep], t[keep], k[keep]
        sub, m = v.sub[vis], len(vis)
        ip = (v.kind[vis] == IP).astype(float)

        hf_t = self.onset["hf"][sub]
        fluid = 3.0 * _ramp(t, hf_t - 90, 90) * (1 - 0.7 * self.on("furosemide", sub, t))
        bmi_t = self.bmi0[sub] + self.bmi_trend[sub] * t / YEAR
        h2 = self.height[sub] ** 2
        weight = np.round(np.clip(bmi_t * h2 + fluid + rng.normal(0, 0.7, m), 35, 250), 1)
        bmi = np.round(weight / h2, 1)
        htn_t = self.onset["htn"][sub]
        htn = 16.0 * np.where(htn_t <= 0, 1.0, _ramp(t, htn_t - YEAR, YEAR))
        drugs = sum(self.on(g, sub, t).astype(float) for g in ("lisinopril", "losartan", "amlodipine", "hctz"))
        drugs = drugs + 0.5 * self.on("carvedilol", sub, t)
        sbp = self.sbp0[sub] + 0.35 * t / YEAR + htn - 7 * drugs + rng.normal(0, 9, m) + ip * rng.normal(0, 10, m)
        sbp = np.round(np.clip(sbp, 80, 230))
        dbp = np.round(np.clip(0.45 * sbp + 22 + rng.normal(0, 6, m), 40, 130))
        af_t = self.onset["af"][sub]
        af_now = t >= af_t
        pre = (t >= af_t - YEAR) & ~af_now & self.af_pre[sub] & (rng.random(m) < 0.3)
        hr = self.hr0[sub] + 14 * af_now + 25 * pre - 8 * self.on("carvedilol", sub, t) + 6 * ip
        hr = np.round(np.clip(hr + rng.normal(0, 6, m) + af_now * rng.normal(0, 10, m), 35, 190))

        body = ((v.kind[vis] == OP) & (rng.random(m) < 0.9)) | ((v.kind[vis] == IP) & (k == 0))
        for key, mask, value in (
            ("weight", body, weight),
            ("bmi", body, bmi),
            ("sbp", None, sbp),
            ("dbp", None, dbp),
            ("hr", None, hr),
        ):
            sel = np.arange(m) if mask is None else np.flatnonzero(mask)
            ev.add(sub[sel], t[sel], _ix(f"LOINC/{_LABS[key][0]}"), P_VITAL, value=value[sel], visit=vis[sel])
        obese = np.flatnonzero(body & (bmi >= 30) & (v.kind[vis] == OP) & (rng.random(m) < 0.08))
        ev.add(sub[obese], self.t_dx[vis[obese]], _ix(_icd_code("E66.9")), P_DX, visit=vis[obese])

    def procedures(self) -> None:
        rng, v, ev = self.rng, self.v, self.ev
        n_v = len(v)
        cardiac = np.isin(v.reason, [_ix(_icd_code(c)) for c in ("R07.9", "R55", "I21.9", "I50.9", "I48.91")])
        p_ecg = np.select(
            [v.kind == IP, v.kind == ER],
            [0.5 + 0.4 * cardiac, 0.2 + 0.6 * cardiac],
            np.where(self.age(v.sub, v.start) > 50, 0.05, 0.02),
        )
        p_ecg = np.where(self.palpitations, 0.7, p_ecg)
        chest = np.isin(v.reason, [_ix(_icd_code(c)) for c in ("J18.9", "I50.9", "J44.1")])
        p_cxr = np.select([v.kind == IP, v.kind == ER], [0.2 + 0.7 * chest, 0.15 + 0.3 * cardiac], 0.01)
        vid = np.arange(n_v)
        for key, p in (("ecg", p_ecg), ("cxr", p_cxr)):
            sel = np.flatnonzero(rng.random(n_v) < p)
            ev.add(v.sub[sel], self.t_proc[sel], _ix(f"CPT4/{_PROCEDURES[key][0]}"), P_PROC, visit=vid[sel])
        for cond, key, p_ in (("hf", "echo", 0.7), ("af", "echo", 0.4), ("copd", "spirometry", 0.6)):
            j = self.dx_visit[cond]
            sel = np.flatnonzero((j >= 0) & (rng.random(self.n) < p_))
            ev.add(sel, self.t_proc[j[sel]], _ix(f"CPT4/{_PROCEDURES[key][0]}"), P_PROC, visit=j[sel])

    def run(self) -> pl.DataFrame:
        self.subjects()
        self.conditions()
        self.visits()
        self.latent()
        self.emit_statics()
        self.emit_visits()
        self.diagnoses()
        self.reasons_and_symptoms()
        self.drugs()
        self.labs()
        self.procedures()
        self.counts["deaths"] = int(np.isfinite(self.death).sum())
        return self.ev.frame(self.cfg.start, self.first_sid, self.first_vid)


def generate_cohort(
    config: SynthConfig,
    out: Path,
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Write a synthetic MEDS dataset at ``out`` (atomically) and report what was written.

    Subjects are numbered 1..n; visit ids are unique across the dataset. ``progress`` is called
    with the number of subjects done after each shard.
    """
    began = time.perf_counter()
    out = Path(out)
    report = IngestReport(dataset=out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        next_vid = 1
        for shard_index, first in enumerate(range(0, config.n_subjects, config.shard_subjects)):
            n = min(config.shard_subjects, config.n_subjects - first)
            shard = _Shard(config, shard_index, first + 1, next_vid, n)
            frame = shard.run()
            next_vid += len(shard.v)
            counts = shard.counts
            del shard
            frame = conform_events(frame, source=config.dataset_name)
            append_shards(tmp, [frame], shard_subjects=config.shard_subjects)
            report.n_events += frame.height
            for key, value in counts.items():
                report.counts[key] = report.counts.get(key, 0) + value
            del frame
            if progress is not None:
                progress(first + n)
        finish_dataset(
            tmp,
            synth_codes(),
            dataset_name=config.dataset_name,
            etl_name=ETL_NAME,
            extra_metadata={"synth_config": config.as_dict()},
        )
    report.n_subjects = config.n_subjects
    report.counts["subjects"] = config.n_subjects
    report.seconds = time.perf_counter() - began
    return report
