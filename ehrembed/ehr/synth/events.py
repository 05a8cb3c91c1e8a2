"""Event accumulation for one shard, the visit table, and the small random helpers the generator uses."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from ehrembed import schema as s

from .config import KEY, Arr
from .tables import concepts

# Order of events that share a subject and a time: statics, birth, visit start, vitals, labs,
# diagnoses, drugs, procedures, visit end, death.
P_STATIC, P_BIRTH, P_VISIT, P_VITAL, P_LAB, P_DX, P_DRUG, P_PROC, P_END, P_DEATH = range(10)


class Events:
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
        table = concepts()
        lo0 = np.array([np.nan if c.ref_low is None else c.ref_low for c in table], dtype=np.float32)
        hi0 = np.array([np.nan if c.ref_high is None else c.ref_high for c in table], dtype=np.float32)
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
        names = pl.Series([c.code for c in table], dtype=pl.String)
        units = pl.Series([c.unit for c in table], dtype=pl.String)
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


def sigmoid(x: Arr) -> Arr:
    return 1.0 / (1.0 + np.exp(-x))


def choice(rng: np.random.Generator, weights: Arr) -> Arr:
    """One category per row of a (rows, k) non-negative weight matrix."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cum[:, -1]
    return np.minimum((cum <= u[:, None]).sum(axis=1), weights.shape[1] - 1)


def expand(counts: Arr) -> tuple[Arr, Arr]:
    """For ``counts[i]`` copies of each row i: the row of each copy and its rank 0..counts[i]-1."""
    rows = np.repeat(np.arange(len(counts)), counts)
    return rows, np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)


def ramp(t: Arr, t0: Arr, width: Arr | float) -> Arr:
    """0 before ``t0``, rising linearly to 1 at ``t0 + width`` (nan/inf onsets give 0)."""
    with np.errstate(invalid="ignore"):
        r = np.clip((t - t0) / width, 0.0, 1.0)
    return np.nan_to_num(r, nan=0.0)


@dataclass
class Visits:
    """Visits of one shard, sorted by subject then start time."""

    sub: Arr
    kind: Arr
    start: Arr
    end: Arr
    reason: Arr  # concept index of the admission / ER reason, -1 for none
    key: Arr  # sub * KEY + start, for first-visit-after searches

    def __len__(self) -> int:
        return len(self.sub)

    def first_at_or_after(self, sub: Arr, t: Arr) -> Arr:
        """Index of each subject's first visit starting at or after ``t`` (-1 if none)."""
        ok = np.isfinite(t)
        q = sub * KEY + np.where(ok, np.maximum(t, -1.0), 0.0)
        j = np.searchsorted(self.key, q, side="left")
        jj = np.minimum(j, max(len(self) - 1, 0))
        found = ok & (j < len(self)) & (self.sub[jj] == sub) if len(self) else np.zeros(len(sub), bool)
        return np.where(found, j, -1)
