"""Who may be a neighbour: the filters, and the per-subject attributes (split, sex, birth) they test."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.errors import InputError

EXPLAINED_DOMAINS: tuple[s.Domain, ...] = (s.Domain.CONDITION, s.Domain.DRUG, s.Domain.PROCEDURE)
SEXES: dict[str, str] = {"f": "F", "female": "F", "m": "M", "male": "M", "o": "O", "other": "O", "u": "U"}
_DAYS_PER_YEAR = 365.25
_MIN_TEXT_MATCH = 4  # shortest description matched inside a query text


class SimilarError(InputError):
    """A similar-patient query cannot be answered as asked (unknown subject, bad filter, no encoder)."""


@dataclass(frozen=True)
class SimilarFilters:
    """Conditions every neighbour must meet (all optional).

    ``splits``: the neighbour's split is one of these; ``sex``: ``F`` / ``M`` (from the ``Gender/*``
    code); ``min_age`` / ``max_age``: age in years at the neighbour's prediction time (inclusive);
    ``has_codes``: each code occurs in the neighbour's record at or before its prediction time.
    """

    splits: tuple[str, ...] = ()
    sex: str | None = None
    min_age: float | None = None
    max_age: float | None = None
    has_codes: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        splits: Iterable[str] | None = None,
        sex: str | None = None,
        min_age: float | None = None,
        max_age: float | None = None,
        has_codes: Iterable[str] | None = None,
    ) -> SimilarFilters:
        """Filters from what a front end has (optional lists from a query string, a body or CLI options)."""
        return cls(tuple(splits or ()), sex, min_age, max_age, tuple(has_codes or ()))

    def __post_init__(self) -> None:
        splits = tuple(str(v) for v in self.splits)
        known = {split.value for split in s.Split}
        for value in splits:
            if value not in known:
                raise SimilarError(f"split must be one of {', '.join(sorted(known))}; got {value!r}")
        object.__setattr__(self, "splits", splits)
        if self.sex is not None:
            sex = SEXES.get(str(self.sex).strip().lower())
            if sex is None:
                raise SimilarError(f"sex must be F or M; got {self.sex!r}")
            object.__setattr__(self, "sex", sex)
        for name in ("min_age", "max_age"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise SimilarError(f"{name} must be at least 0, got {value}")
        if self.min_age is not None and self.max_age is not None and self.min_age > self.max_age:
            raise SimilarError(f"min_age {self.min_age} is above max_age {self.max_age}")
        object.__setattr__(self, "has_codes", tuple(dict.fromkeys(str(c) for c in self.has_codes)))

    @property
    def active(self) -> bool:
        return bool(self.splits or self.sex or self.min_age is not None or self.max_age is not None or self.has_codes)


@dataclass(frozen=True)
class SubjectAttributes:
    """Split, sex and birth time per subject, as sorted arrays (looked up by ``searchsorted``)."""

    subject_ids: np.ndarray  # int64, sorted
    splits: np.ndarray  # object (str | None)
    sexes: np.ndarray  # object (str | None)
    births: np.ndarray  # datetime64[us], NaT where unknown

    @classmethod
    def from_dataset(cls, dataset: MedsDataset) -> SubjectAttributes:
        static = (
            dataset.scan()
            .filter(pl.col(s.CODE).str.starts_with("Gender/") | (pl.col(s.CODE) == s.BIRTH_CODE))
            .select(s.SUBJECT_ID, s.CODE, s.TIME)
            .collect()
        )
        sex = (
            static.filter(pl.col(s.CODE).str.starts_with("Gender/"))
            .group_by(s.SUBJECT_ID)
            .agg(pl.col(s.CODE).first().str.strip_prefix("Gender/").alias("sex"))
        )
        birth = (
            static.filter(pl.col(s.CODE) == s.BIRTH_CODE)
            .group_by(s.SUBJECT_ID)
            .agg(pl.col(s.TIME).min().alias("birth"))
        )
        frame = (
            dataset.splits()
            .select(pl.col(s.SUBJECT_ID).cast(pl.Int64), pl.col(s.SPLIT).cast(pl.String))
            .join(sex, on=s.SUBJECT_ID, how="full", coalesce=True)
            .join(birth, on=s.SUBJECT_ID, how="full", coalesce=True)
            .sort(s.SUBJECT_ID)
        )
        return cls(
            subject_ids=frame.get_column(s.SUBJECT_ID).to_numpy().astype(np.int64),
            splits=np.asarray(frame.get_column(s.SPLIT).to_list(), dtype=object),
            sexes=np.asarray(frame.get_column("sex").to_list(), dtype=object),
            births=frame.get_column("birth").cast(pl.Datetime("us")).to_numpy().astype("datetime64[us]"),
        )

    def positions(self, subject_ids: np.ndarray) -> np.ndarray:
        """Row of each subject, -1 where the dataset does not know it."""
        if not len(self.subject_ids):
            return np.full(len(subject_ids), -1, dtype=np.int64)
        where = np.clip(np.searchsorted(self.subject_ids, subject_ids), 0, len(self.subject_ids) - 1)
        return np.where(self.subject_ids[where] == subject_ids, where, -1)


def ages_at(births: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Age in years (float, NaN where either time is unknown)."""
    delta = (times.astype("datetime64[us]") - births.astype("datetime64[us]")).astype("timedelta64[us]")
    days = delta.astype(np.float64) / 86_400e6
    days[np.isnat(delta)] = np.nan
    return days / _DAYS_PER_YEAR


def _to_datetime(value: np.datetime64) -> dt.datetime | None:
    if np.isnat(value):
        return None
    micros = int(value.astype("datetime64[us]").astype(np.int64))
    return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=micros)
