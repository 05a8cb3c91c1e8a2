"""The generator's clinical tables and vocabulary.

The tables (chronic conditions with their hazards, drugs, procedures, labs with units and ranges,
visit kinds, races) live in ``ehrembed/ehr/data/synth_tables.json``, read once (:func:`tables`).
Codes are real: RxNorm names as RxNav serves them, LOINC long common names, CPT-4, and ICD-10-CM
descriptions and parents from ``simple_icd_10_cm``; the effect sizes are invented.

``concepts()`` lists every code the generator can emit, in a fixed order: events store a code as
its index in that list (:func:`ix`).
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass
from functools import lru_cache

import polars as pl
import simple_icd_10_cm as icd

from ehrembed import schema as s

D = s.Domain
TABLES_FILE = "synth_tables.json"


@dataclass(frozen=True)
class Concept:
    code: str
    description: str
    domain: str
    unit: str | None = None
    ref_low: float | None = None
    ref_high: float | None = None


@dataclass(frozen=True)
class Chronic:
    """A chronic condition: ICD-10-CM code, prevalence logit at window start (age 50, BMI 28), log annual
    incidence (age 50, BMI 28), per-year age effect, BMI, male and current-smoker effects, comorbidity log
    hazard ratios, and mean days from onset to diagnosis."""

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


Lab = tuple[str, str, str, float | None, float | None]
"""LOINC code, long common name, unit, reference low, reference high (sex-specific ones: the female range)."""


@dataclass(frozen=True)
class Tables:
    chronic: tuple[Chronic, ...]
    major: tuple[str, ...]
    """Conditions that count towards the comorbidity burden."""
    icd_other: tuple[str, ...]
    """Symptoms, acute reasons for visits, lab-driven diagnoses, smoking (ICD-10-CM)."""
    drugs: dict[str, tuple[str, str]]
    """key -> (RxNorm CUI, clinical drug name)."""
    procedures: dict[str, tuple[str, str]]
    """key -> (CPT-4 code, name)."""
    labs: dict[str, Lab]
    female_ranges: dict[str, tuple[float, float]]
    male_ranges: dict[str, tuple[float, float]]
    visits: tuple[tuple[str, str], ...]
    """(code, description) of the outpatient, inpatient and emergency visit kinds, in that order."""
    races: tuple[tuple[str, str, float], ...]
    """(code, description, share of subjects)."""


OP, IP, ER = 0, 1, 2
"""Positions of the visit kinds in ``Tables.visits``."""


@lru_cache(maxsize=1)
def tables() -> Tables:
    raw = json.loads(importlib.resources.files("ehrembed.ehr").joinpath("data", TABLES_FILE).read_text())
    return Tables(
        chronic=tuple(Chronic(**{**c, "deps": tuple(c["deps"].items())}) for c in raw["chronic"]),
        major=tuple(raw["major"]),
        icd_other=tuple(raw["icd_other"]),
        drugs={k: (v[0], v[1]) for k, v in raw["drugs"].items()},
        procedures={k: (v[0], v[1]) for k, v in raw["procedures"].items()},
        labs={k: (v[0], v[1], v[2], v[3], v[4]) for k, v in raw["labs"].items()},
        female_ranges={k: (v[0], v[1]) for k, v in raw["female_ranges"].items()},
        male_ranges={k: (v[0], v[1]) for k, v in raw["male_ranges"].items()},
        visits=tuple((v[0], v[1]) for v in raw["visits"]),
        races=tuple((r[0], r[1], float(r[2])) for r in raw["races"]),
    )


def icd_code(code: str) -> str:
    return f"ICD10CM/{code}"


@lru_cache(maxsize=1)
def concepts() -> tuple[Concept, ...]:
    """Every code the generator can emit, with its description, domain, unit and range."""
    t = tables()
    out: list[Concept] = [
        Concept(s.BIRTH_CODE, "Birth", D.DEMOGRAPHIC),
        Concept(s.DEATH_CODE, "Death", D.DEMOGRAPHIC),
        Concept(s.VISIT_END_CODE, "End of visit", D.VISIT),
        Concept("Gender/F", "FEMALE", D.DEMOGRAPHIC),
        Concept("Gender/M", "MALE", D.DEMOGRAPHIC),
        Concept("Ethnicity/Hispanic", "Hispanic or Latino", D.DEMOGRAPHIC),
        Concept("Ethnicity/NotHispanic", "Not Hispanic or Latino", D.DEMOGRAPHIC),
    ]
    out += [Concept(code, desc, D.DEMOGRAPHIC) for code, desc, _ in t.races]
    out += [Concept(code, desc, D.VISIT) for code, desc in t.visits]
    for raw in [c.icd for c in t.chronic] + list(t.icd_other):
        if not icd.is_valid_item(raw):  # pragma: no cover - guards the tables
            raise ValueError(f"not an ICD-10-CM code: {raw}")
        out.append(Concept(icd_code(raw), icd.get_description(raw), D.CONDITION))
    out += [Concept(f"RxNorm/{cui}", name, D.DRUG) for cui, name in t.drugs.values()]
    out += [Concept(f"CPT4/{code}", name, D.PROCEDURE) for code, name in t.procedures.values()]
    out += [Concept(f"LOINC/{c}", name, D.MEASUREMENT, unit, lo, hi) for c, name, unit, lo, hi in t.labs.values()]
    return tuple(out)


@lru_cache(maxsize=1)
def _index() -> dict[str, int]:
    return {c.code: i for i, c in enumerate(concepts())}


def ix(code: str) -> int:
    """A code's index in :func:`concepts` (how events store it)."""
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
    for c in concepts():
        parents = None
        if c.code.startswith("ICD10CM/"):
            parent = _icd_parent(c.code.removeprefix("ICD10CM/"))
            parents = [icd_code(parent)] if parent else None
        rows[c.code] = (c.description, parents, str(c.domain))
    todo = [r[1][0] for r in rows.values() if r[1]]
    while todo:
        code = todo.pop()
        if code in rows:
            continue
        raw = code.removeprefix("ICD10CM/")
        parent = _icd_parent(raw)
        rows[code] = (icd.get_description(raw), [icd_code(parent)] if parent else None, str(D.CONDITION))
        if parent:
            todo.append(icd_code(parent))
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
