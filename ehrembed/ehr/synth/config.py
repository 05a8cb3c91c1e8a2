"""What ``ehrembed synth`` generates (:class:`SynthConfig`) and the time units it counts in (days)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np

from ehrembed.errors import InputError

ETL_NAME = "ehrembed.ehr.synth"
YEAR = 365.25
MINUTE = 1.0 / 1440.0
HOUR = 1.0 / 24.0
KEY = 1e6  # subject stride for (subject, day) search keys; larger than any window in days

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
