"""The search: nearest patients to a subject, a text or a vector, filtered, widened and explained."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.encoders.base import Encoder
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.retrieval.index import VectorIndex
from ehrembed.retrieval.similar.filters import (
    _MIN_TEXT_MATCH,
    EXPLAINED_DOMAINS,
    SimilarError,
    SimilarFilters,
    SubjectAttributes,
    _to_datetime,
    ages_at,
)
from ehrembed.retrieval.similar.results import Explanation, Neighbor, SharedCode, SimilarQuery, SimilarResult


class SimilarPatients:
    """Similar-patient search over one index and the MEDS dataset its rows came from.

    ``encoder`` (optional) embeds inline texts and records as of times the index has no row for;
    it must be the index's encoder. ``embeddings`` (optional) supplies exact query vectors where
    the index only keeps compressed ones (IVF-PQ); otherwise query vectors come from the index.
    """

    def __init__(
        self,
        index: VectorIndex,
        dataset: MedsDataset,
        *,
        vocabulary: Vocabulary | None = None,
        encoder: Encoder | None = None,
        embeddings: EmbeddingSet | None = None,
        max_shared: int = 5,
    ) -> None:
        if encoder is not None:
            index.check_spec(encoder.spec)
        if embeddings is not None:
            index.check_spec(embeddings.spec)
        self.index = index
        self.dataset = dataset
        self.vocabulary = vocabulary or Vocabulary.from_dataset(dataset)
        self.encoder = encoder
        self.embeddings = embeddings
        self.max_shared = max_shared
        self._attributes: SubjectAttributes | None = None
        self._code_times: dict[str, pl.DataFrame] = {}
        self._rows_key: tuple[int, int] | None = None
        self._code_counts: dict[str, int] | None = None
        self._seen_index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._several = False

    @property
    def attributes(self) -> SubjectAttributes:
        if self._attributes is None:
            self._attributes = SubjectAttributes.from_dataset(self.dataset)
        return self._attributes

    def warm(self) -> SimilarPatients:
        """Read now what the first query would otherwise read: attributes, code index, prevalence."""
        self.attributes  # noqa: B018
        self._first_seen()
        self._prevalence()
        return self

    # --- queries --------------------------------------------------------------------------------

    def by_subject(
        self,
        subject_id: int,
        *,
        as_of: dt.datetime | None = None,
        k: int = 10,
        filters: SimilarFilters | None = None,
    ) -> SimilarResult:
        """Neighbours of a subject: its index row as of ``as_of`` (default its latest row)."""
        filters = filters or SimilarFilters()
        subject_id = int(subject_id)
        row_ids = self.index.ids_for_subject(subject_id)
        index_id: int | None = None
        when: dt.datetime | None = None
        if len(row_ids):
            _, times = self.index.lookup(row_ids)
            if as_of is None:
                index_id, when = int(row_ids[-1]), _to_datetime(times[-1])
            else:
                match = np.flatnonzero(times == np.datetime64(as_of, "us"))
                if len(match):
                    index_id, when = int(row_ids[match[-1]]), as_of
        if index_id is not None:
            vector = self._stored_vector(index_id, subject_id, when)
        else:
            vector, when = self._embed_subject(subject_id, as_of, has_rows=len(row_ids) > 0)
        query_codes: dict[str, Any] = self._codes_at(subject_id, when)
        query = SimilarQuery(subject_id=subject_id, as_of=when, index_id=index_id)
        return self._search(vector, k, filters, query, exclude_subject=subject_id, query_codes=query_codes)

    def by_text(
        self,
        text: str,
        *,
        k: int = 10,
        filters: SimilarFilters | None = None,
        instruction: str | None = None,
        encoder: Encoder | None = None,
    ) -> SimilarResult:
        """Neighbours of an inline record text, embedded with the index's encoder."""
        encoder = encoder or self.encoder
        if encoder is None:
            raise SimilarError("searching by text needs an encoder (the one the index was built with)")
        self.index.check_spec(encoder.spec)
        if not text or not text.strip():
            raise SimilarError("the query text is empty")
        vector = encoder.encode([text], instruction=instruction or self.index.extra.get("instruction"))
        query = SimilarQuery(subject_id=None, as_of=None, index_id=None, from_text=True)
        return self._search(vector[0], k, filters or SimilarFilters(), query, query_text=text)

    def by_vector(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        filters: SimilarFilters | None = None,
        exclude_subject: int | None = None,
    ) -> SimilarResult:
        """Neighbours of a vector (no explanation: there is no query record to compare with)."""
        query = SimilarQuery(subject_id=exclude_subject, as_of=None, index_id=None)
        return self._search(np.asarray(vector), k, filters or SimilarFilters(), query, exclude_subject=exclude_subject)

    # --- query vectors --------------------------------------------------------------------------

    def _stored_vector(self, index_id: int, subject_id: int, when: dt.datetime | None) -> np.ndarray:
        if self.embeddings is not None:
            match = np.flatnonzero(self.embeddings.subject_ids == subject_id)
            if when is not None:
                match = match[self.embeddings.as_of[match] == np.datetime64(when, "us")]
            if len(match):
                return np.asarray(self.embeddings.vectors[match[-1]], dtype=np.float32)
        return self.index.reconstruct([index_id])[0]

    def _embed_subject(self, subject_id: int, as_of: dt.datetime | None, *, has_rows: bool) -> tuple[np.ndarray, Any]:
        if self.encoder is None:
            if has_rows:
                raise SimilarError(
                    f"the index has no row for subject {subject_id} as of {as_of}; leave out --as-of to use its "
                    "latest row, or give an encoder to embed the record as of that time"
                )
            raise SimilarError(
                f"subject {subject_id} is not in the index; give an encoder to embed its record, or rebuild the "
                "index from embeddings that include it"
            )
        from ehrembed.encoders.job import EmbedConfig, record_serializer

        patient = self.dataset.patient(subject_id)
        if as_of is None:
            times = [e.time for e in patient.events if e.time is not None]
            if not times:
                raise SimilarError(f"subject {subject_id} has no dated events; give an as-of time")
            as_of = max(times)
        config = EmbedConfig.replaying(self.index.extra)
        serializer = record_serializer(self.encoder, self.vocabulary, config)
        text = serializer.serialize(patient, as_of=as_of)
        return self.encoder.encode([text], instruction=config.instruction_for(self.encoder))[0], as_of

    # --- search ---------------------------------------------------------------------------------

    def _search(
        self,
        vector: np.ndarray,
        k: int,
        filters: SimilarFilters,
        query: SimilarQuery,
        *,
        exclude_subject: int | None = None,
        query_codes: dict[str, dt.datetime | None] | None = None,
        query_text: str | None = None,
    ) -> SimilarResult:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise SimilarError(f"k must be a positive integer, got {k!r}")
        excluded: list[int] = []
        if exclude_subject is not None:
            excluded = self.index.ids_for_subject(exclude_subject).tolist()
        available = len(self.index) - len(excluded)
        if available <= 0:
            raise SimilarError("the index holds no other patients")
        if k > available:
            raise SimilarError(f"k={k} is larger than the {available} other rows in the index")
        fetch = min(available, k * (4 if filters.active else 1) * (2 if self._several_rows_per_subject() else 1))
        chosen: list[tuple[int, int, np.datetime64, float]] = []
        scanned = 0
        while True:
            ids, scores = self.index.search(vector[None, :], fetch, exclude_ids=excluded)
            keep = ids[0] >= 0
            ids, scores = ids[0][keep], scores[0][keep]
            scanned = len(ids)
            chosen = self._pick(ids, scores, k, filters)
            if len(chosen) >= k or fetch >= available:
                break
            fetch = min(available, fetch * 4)
        neighbors = self._explain(chosen, query_codes, query_text)
        return SimilarResult(query=query, k=k, filters=filters, neighbors=tuple(neighbors), candidates_scanned=scanned)

    def _several_rows_per_subject(self) -> bool:
        """Whether some subject has more than one live row (then one patient can fill several hits)."""
        key = (self.index.ntotal, self.index.removed)
        if self._rows_key != key:
            self._several = len(self.index) > len(np.unique(self.index.rows().get_column(s.SUBJECT_ID).to_numpy()))
            self._rows_key = key
        return self._several

    def _pick(
        self, ids: np.ndarray, scores: np.ndarray, k: int, filters: SimilarFilters
    ) -> list[tuple[int, int, np.datetime64, float]]:
        """The first ``k`` candidates (by score) passing the filters, one row per subject."""
        subjects, times = self.index.lookup(ids)
        ok = np.ones(len(ids), dtype=bool)
        if filters.active:
            attrs = self.attributes
            rows = attrs.positions(subjects)
            known = rows >= 0
            safe = np.maximum(rows, 0)
            if filters.splits:
                ok &= known & np.isin(attrs.splits[safe].astype(str), list(filters.splits))
            if filters.sex:
                ok &= known & (attrs.sexes[safe] == filters.sex)
            if filters.min_age is not None or filters.max_age is not None:
                ages = ages_at(np.where(known, attrs.births[safe], np.datetime64("NaT", "us")), times)
                with np.errstate(invalid="ignore"):
                    if filters.min_age is not None:
                        ok &= ages >= filters.min_age
                    if filters.max_age is not None:
                        ok &= ages <= filters.max_age
            for code in filters.has_codes:
                ok &= self._has_code(code, subjects, times)
        chosen: list[tuple[int, int, np.datetime64, float]] = []
        seen: set[int] = set()
        for i in np.flatnonzero(ok).tolist():
            subject = int(subjects[i])
            if subject in seen:
                continue
            seen.add(subject)
            chosen.append((int(ids[i]), subject, times[i], float(scores[i])))
            if len(chosen) == k:
                break
        return chosen

    def _has_code(self, code: str, subjects: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Whether each (subject, time) has ``code`` at or before that time (static codes always count)."""
        first = self._code_times.get(code)
        if first is None:
            first = (
                self.dataset.scan()
                .filter(pl.col(s.CODE) == code)
                .group_by(s.SUBJECT_ID)
                .agg(
                    pl.col(s.TIME).is_null().any().alias("static"),
                    pl.col(s.TIME).min().alias("first"),
                )
                .sort(s.SUBJECT_ID)
                .collect()
            )
            self._code_times[code] = first
        if first.is_empty():
            return np.zeros(len(subjects), dtype=bool)
        owners = first.get_column(s.SUBJECT_ID).to_numpy()
        static = first.get_column("static").to_numpy()
        first_times = first.get_column("first").cast(pl.Datetime("us")).to_numpy().astype("datetime64[us]")
        where = np.clip(np.searchsorted(owners, subjects), 0, len(owners) - 1)
        present = owners[where] == subjects
        unknown_time = np.isnat(times)
        with np.errstate(invalid="ignore"):
            early = ~np.isnat(first_times[where]) & (unknown_time | (first_times[where] <= times))
        return present & (static[where] | early)

    # --- explanations ---------------------------------------------------------------------------

    def _first_seen(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (subject, explained code) with the code's first time, sorted by subject (read once).

        Explanations only ask which explained codes a record holds at its time, so one pass over the
        dataset answers every later query by a binary search instead of reading patients.
        """
        if self._seen_index is None:
            codes = self.dataset.scan().select(pl.col(s.CODE).unique()).collect().get_column(s.CODE).to_list()
            explained = [c for c in codes if self.vocabulary.domain(c) in EXPLAINED_DOMAINS]
            frame = (
                self.dataset.scan()
                .filter(pl.col(s.CODE).is_in(explained))
                .group_by(s.SUBJECT_ID, s.CODE)
                .agg(pl.col(s.TIME).min().alias("first"), pl.col(s.TIME).is_null().any().alias("static"))
                .with_columns(pl.when(pl.col("static")).then(None).otherwise(pl.col("first")).alias("first"))
                .sort(s.SUBJECT_ID, s.CODE)
                .collect()
            )
            self._seen_index = (
                frame.get_column(s.SUBJECT_ID).to_numpy().astype(np.int64),
                np.asarray(frame.get_column(s.CODE).to_list(), dtype=object),
                frame.get_column("first").cast(pl.Datetime("us")).to_numpy().astype("datetime64[us]"),
            )
        return self._seen_index

    def _codes_at(self, subject_id: int, as_of: dt.datetime | np.datetime64 | None) -> dict[str, None]:
        """The explained codes of a subject's record at or before ``as_of`` (static ones always)."""
        subjects, codes, first = self._first_seen()
        lo, hi = np.searchsorted(subjects, subject_id, "left"), np.searchsorted(subjects, subject_id, "right")
        picked, times = codes[lo:hi], first[lo:hi]
        if as_of is not None:
            limit = np.asarray(as_of, dtype="datetime64[us]")
            picked = picked[np.isnat(times) | (times <= limit)]
        return dict.fromkeys(picked.tolist())

    def _explain(
        self,
        chosen: Sequence[tuple[int, int, np.datetime64, float]],
        query_codes: dict[str, dt.datetime | None] | None,
        query_text: str | None,
    ) -> list[Neighbor]:
        attrs = self.attributes if chosen else None
        neighbors = []
        lowered = query_text.lower() if query_text else None
        for rank, (index_id, subject, time, score) in enumerate(chosen, start=1):
            when = _to_datetime(time)
            explanation = Explanation()
            if query_codes is not None or lowered is not None:
                codes = self._codes_at(subject, when)
                if query_codes is not None:
                    shared = [code for code in codes if code in query_codes]
                else:
                    shared = [code for code in codes if self._mentioned(code, lowered or "")]
                explanation = self._explanation(shared)
            split = sex = None
            age: float | None = None
            if attrs is not None:
                row = int(attrs.positions(np.asarray([subject], dtype=np.int64))[0])
                if row >= 0:
                    split, sex = attrs.splits[row], attrs.sexes[row]
                    value = float(ages_at(attrs.births[row : row + 1], np.asarray([time]))[0])
                    age = None if np.isnan(value) else round(value, 1)
            neighbors.append(
                Neighbor(
                    rank=rank,
                    subject_id=subject,
                    prediction_time=when,
                    score=round(score, 6),
                    index_id=index_id,
                    split=split,
                    sex=sex,
                    age=age,
                    explanation=explanation,
                )
            )
        return neighbors

    def _mentioned(self, code: str, text: str) -> bool:
        description = self.vocabulary.describe(code)
        return bool(description) and len(description or "") >= _MIN_TEXT_MATCH and (description or "").lower() in text

    def _prevalence(self) -> dict[str, int]:
        """Patients per explained code in the whole dataset (read once)."""
        if self._code_counts is None:
            counts = self.dataset.scan().group_by(s.CODE).agg(pl.col(s.SUBJECT_ID).n_unique().alias("n")).collect()
            self._code_counts = dict(
                zip(counts.get_column(s.CODE).to_list(), counts.get_column("n").to_list(), strict=True)
            )
        return self._code_counts

    def _explanation(self, shared: Iterable[str]) -> Explanation:
        by_domain: dict[s.Domain, list[str]] = {domain: [] for domain in EXPLAINED_DOMAINS}
        for code in shared:
            by_domain[self.vocabulary.domain(code)].append(code)
        prevalence = self._prevalence()
        groups: list[tuple[SharedCode, ...]] = []
        totals: list[int] = []
        for domain in EXPLAINED_DOMAINS:
            codes = sorted(by_domain[domain], key=lambda c: (prevalence.get(c, 0), c))
            groups.append(
                tuple(SharedCode(code, self.vocabulary.label(code), domain.value) for code in codes[: self.max_shared])
            )
            totals.append(len(codes))
        return Explanation(
            conditions=groups[0],
            medications=groups[1],
            procedures=groups[2],
            n_conditions=totals[0],
            n_medications=totals[1],
            n_procedures=totals[2],
        )


def find_similar(
    index: VectorIndex,
    dataset: MedsDataset,
    subject_id: int,
    *,
    k: int = 10,
    as_of: dt.datetime | None = None,
    filters: SimilarFilters | None = None,
) -> SimilarResult:
    """One-shot :meth:`SimilarPatients.by_subject` (build a :class:`SimilarPatients` to reuse its caches)."""
    return SimilarPatients(index, dataset).by_subject(subject_id, as_of=as_of, k=k, filters=filters)
