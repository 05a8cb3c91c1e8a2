"""The index's row table: which (subject_id, prediction_time) each FAISS position holds, under an int64 id,
with tombstones.

Position ``i`` is FAISS row ``i`` (rows are only ever appended). Ids are unique among live rows; a removed
row keeps its position (FAISS cannot delete cheaply) and is skipped by searches, and its id may be added
again as a new row. Lookups by id and by subject use sorted copies built on first use and dropped on change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.encoders.embeddings import PREDICTION_TIME

from .params import VectorIndexError
from .storage import ID, REMOVED


class RowTable:
    """Ids, subjects, prediction times and tombstones by FAISS position."""

    def __init__(
        self,
        ids: np.ndarray | None = None,
        subjects: np.ndarray | None = None,
        times: np.ndarray | None = None,
        removed: np.ndarray | None = None,
    ) -> None:
        self.ids = np.empty(0, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        n = len(self.ids)
        self.subjects = np.asarray(self.ids if subjects is None else subjects, dtype=np.int64)
        self.times = (
            np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
            if times is None
            else np.asarray(times, dtype="datetime64[us]")
        )
        self.removed = np.zeros(n, dtype=bool) if removed is None else np.asarray(removed, dtype=bool)
        self._by_id: tuple[np.ndarray, np.ndarray] | None = None
        self._by_subject: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        """Rows, removed ones included (the FAISS index's ``ntotal``)."""
        return len(self.ids)

    @property
    def n_removed(self) -> int:
        return int(self.removed.sum())

    @property
    def live_ids(self) -> np.ndarray:
        """Ids of the live rows, in insertion order."""
        return self.ids[~self.removed]

    def next_id(self) -> int:
        return int(self.ids.max()) + 1 if len(self.ids) else 0

    def frame(self, *, include_removed: bool = False) -> pl.DataFrame:
        """id, subject_id, prediction_time (and removed) per row, in insertion order."""
        frame = pl.DataFrame(
            {
                ID: self.ids,
                s.SUBJECT_ID: self.subjects,
                PREDICTION_TIME: pl.Series(self.times, dtype=pl.Datetime("us")),
                REMOVED: self.removed,
            }
        )
        return frame if include_removed else frame.filter(~pl.col(REMOVED)).drop(REMOVED)

    def positions(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Position of each live id, -1 where the id is unknown or removed."""
        if self._by_id is None:
            live = np.flatnonzero(~self.removed)
            order = np.argsort(self.ids[live], kind="stable")
            self._by_id = (self.ids[live][order], live[order])
        sorted_ids, positions = self._by_id
        wanted = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        if not len(sorted_ids):
            return np.full(wanted.shape, -1, dtype=np.int64)
        where = np.clip(np.searchsorted(sorted_ids, wanted), 0, len(sorted_ids) - 1)
        return np.where(sorted_ids[where] == wanted, positions[where], -1).astype(np.int64)

    def live_positions(self, ids: Iterable[int]) -> np.ndarray:
        """Sorted, unique positions of the live ones among ``ids``."""
        array = np.fromiter((int(i) for i in ids), dtype=np.int64)
        if not len(array):
            return np.empty(0, dtype=np.int64)
        positions = self.positions(array)
        return np.unique(positions[positions >= 0])

    def exclusions(self, exclude_ids: Iterable[int] | Sequence[Iterable[int]] | None, nq: int) -> list[np.ndarray]:
        """Live positions to drop, per query (sorted, unique): one collection for all queries, or one each."""
        if exclude_ids is None:
            return [np.empty(0, dtype=np.int64)] * nq
        items = list(exclude_ids)
        if items and all(not np.isscalar(item) and not isinstance(item, str) for item in items):
            if len(items) != nq:
                raise VectorIndexError(f"exclude_ids has {len(items)} collections for {nq} queries")
            return [self.live_positions(item) for item in cast(list[Iterable[int]], items)]
        shared = self.live_positions(cast(list[int], items))
        return [shared] * nq

    def lookup(self, ids: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(subject_ids, prediction_times) of live ids; KeyError naming the first unknown id."""
        wanted = np.asarray(ids, dtype=np.int64)
        positions = self.positions(wanted)
        if (positions < 0).any():
            raise KeyError(f"id {int(wanted[np.argmax(positions < 0)])} is not in the index")
        return self.subjects[positions], self.times[positions]

    def ids_for_subject(self, subject_id: int) -> np.ndarray:
        """Live ids of one subject's rows, latest prediction time last (NaT first)."""
        if self._by_subject is None:
            live = np.flatnonzero(~self.removed)
            order = np.lexsort((self.times[live].astype(np.int64), self.subjects[live]))
            self._by_subject = (self.subjects[live][order], live[order])
        subjects, positions = self._by_subject
        lo, hi = np.searchsorted(subjects, subject_id, "left"), np.searchsorted(subjects, subject_id, "right")
        return self.ids[positions[lo:hi]]

    def append(self, ids: np.ndarray, subjects: np.ndarray, times: np.ndarray) -> None:
        """New rows after the last position (the caller checked the ids are new)."""
        self.ids = np.concatenate([self.ids, ids])
        self.subjects = np.concatenate([self.subjects, subjects])
        self.times = np.concatenate([self.times, times])
        self.removed = np.concatenate([self.removed, np.zeros(len(ids), dtype=bool)])
        self.invalidate()

    def tombstone(self, ids: np.ndarray | Sequence[int] | int) -> int:
        """Mark live ids removed (unknown ones are ignored); how many were."""
        positions = self.positions(np.atleast_1d(np.asarray(ids, dtype=np.int64)))
        positions = np.unique(positions[positions >= 0])
        self.removed[positions] = True
        self.invalidate()
        return len(positions)

    def invalidate(self) -> None:
        self._by_id = None
        self._by_subject = None
