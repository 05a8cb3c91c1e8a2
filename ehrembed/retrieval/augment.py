"""Knowledge augmentation: guideline passages relevant to a patient, appended to the record.

At the as-of time, a patient's *active problems* (conditions recorded in the last
``lookback_days``) and *recent abnormal results* (the latest value of each numeric measurement in
that window, flagged high or low by :func:`ehrembed.ehr.serialize.flag`) become short queries.
Each query is run against a :class:`~ehrembed.retrieval.guidelines.GuidelineKB`, the rankings are
fused by reciprocal rank fusion, and the best passages (one per guideline) become the record's
``## Relevant Guidelines`` section. Only events at or before the as-of time are read: the
serializer hands over its already-cut events, and they are cut again here.

:class:`GuidelineAugmenter` is a :class:`ehrembed.ehr.serialize.Appendix`: pass it to the
``Serializer`` (or set ``EmbedConfig.guidelines``), which reserves ``share`` of the token budget
for these lines and puts the augmenter's ``version`` (settings plus the knowledge base's
fingerprint) into its own, so augmented and plain records never share cache entries.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ehrembed import schema as s
from ehrembed.ehr.measurements import flag
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.retrieval.chunking import SECTION_SEPARATOR, clean_markdown
from ehrembed.retrieval.guidelines import GuidelineError, GuidelineKB, Mode, Passage, reciprocal_rank_fusion

AUGMENT_VERSION = 1
_CACHE_SIZE = 4096
_PER_TERM_DEPTH = 20
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


@dataclass(frozen=True)
class GuidelineAugmentation:
    """Settings of guideline augmentation; every field but ``kb`` (whose content enters by fingerprint) is versioned."""

    kb: str | None = None
    """Knowledge base folder; None: ``<EHREMBED_HOME>/guidelines/default``."""
    k: int = 3
    """Passages appended at most (one per guideline)."""
    share: float = 0.25
    """Fraction of the record's token budget reserved for the passages."""
    mode: Mode = "hybrid"
    min_similarity: float | None = 0.45
    """A passage must reach this cosine to the query term (dense and hybrid modes), so a problem no guideline
    covers adds nothing; None turns the gate off. The default suits MiniLM, whose unrelated texts score lower;
    models with compressed cosines (BGE) want a higher one."""
    lookback_days: int = 365
    max_problems: int = 5
    max_results: int = 5
    max_passage_chars: int = 200
    heading: str = "Relevant Guidelines"

    def augmenter(self) -> GuidelineAugmenter:
        """The appendix these settings describe, its knowledge base loaded (what the embed job calls)."""
        return GuidelineAugmenter(self)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise GuidelineError(f"k must be >= 1, got {self.k}")
        if not 0.0 <= self.share < 1.0:
            raise GuidelineError(f"share must be in [0, 1), got {self.share}")
        if self.lookback_days < 1 or self.max_passage_chars < 40:
            raise GuidelineError("lookback_days must be >= 1 and max_passage_chars >= 40")


@dataclass(frozen=True)
class QueryTerm:
    """One thing about the patient worth looking up: a problem or an abnormal result."""

    kind: str  # "problem" or "result"
    text: str
    time: dt.datetime


def patient_terms(
    events: Sequence[s.Event],
    as_of: dt.datetime,
    vocabulary: Vocabulary,
    *,
    lookback_days: int = 365,
    max_problems: int = 5,
    max_results: int = 5,
) -> list[QueryTerm]:
    """Active problems and abnormal results in ``(as_of - lookback_days, as_of]``, most recent first.

    Events after ``as_of`` are ignored, whatever the caller passed.
    """
    as_of = s.normalize_time(as_of)
    start = as_of - dt.timedelta(days=lookback_days)
    recent = [e for e in events if e.time is not None and start < e.time <= as_of]
    problems: dict[str, QueryTerm] = {}
    latest_value: dict[str, s.Event] = {}
    for event in recent:  # time-ordered: later events overwrite earlier ones
        domain = vocabulary.domain(event.code)
        if domain == s.Domain.CONDITION and vocabulary.describe(event.code) is not None:
            name = vocabulary.label(event.code)
            problems.pop(name, None)
            assert event.time is not None
            problems[name] = QueryTerm("problem", name, event.time)
        elif event.numeric_value is not None and domain in (s.Domain.MEASUREMENT, s.Domain.OBSERVATION):
            latest_value[event.code] = event
    results: list[QueryTerm] = []
    for code, event in latest_value.items():
        assert event.numeric_value is not None and event.time is not None
        label = flag(code, event.numeric_value, event.unit, event.ref_low, event.ref_high)
        if label in ("high", "low") and vocabulary.describe(code) is not None:
            results.append(QueryTerm("result", f"{label} {_short_name(vocabulary.label(code))}", event.time))
    by_recency = sorted(problems.values(), key=lambda t: t.time, reverse=True)[:max_problems]
    results = sorted(results, key=lambda t: t.time, reverse=True)[:max_results]
    return by_recency + results


def _short_name(name: str) -> str:
    """A LOINC long name without its property / system / method tail ("Glucose [Mass/volume] in Serum" -> "Glucose")."""
    short = re.split(r"\s*\[|\s+in\s+(?:Serum|Plasma|Blood|Urine)\b", name, maxsplit=1)[0].strip()
    return short or name


def snippet(passage: str, max_chars: int) -> str:
    """A passage as one line of plain text (no list markers), cut at a word boundary to ``max_chars``."""
    lines = (_LIST_MARKER.sub("", line) for line in clean_markdown(passage).splitlines())
    text = " ".join(" ".join(lines).split())
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + "…"


def short_section(section: str) -> str:
    """A section path cut to its first and last parts ("Doc > A > B > C" -> "Doc > C"): short, still placed."""
    parts = section.split(SECTION_SEPARATOR)
    return SECTION_SEPARATOR.join([parts[0], parts[-1]]) if len(parts) > 2 else section


class GuidelineAugmenter:
    """Finds guideline passages for a patient and renders them as record lines (an ``Appendix``)."""

    def __init__(self, config: GuidelineAugmentation | None = None, kb: GuidelineKB | None = None) -> None:
        self.config = config or GuidelineAugmentation()
        self.kb = kb if kb is not None else GuidelineKB.load(Path(self.config.kb) if self.config.kb else None)
        self.heading = self.config.heading
        self.share = self.config.share
        settings = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "kb"}
        payload = json.dumps(
            {"augment_version": AUGMENT_VERSION, **settings, "kb": self.kb.fingerprint}, sort_keys=True
        )
        self.version = f"guidelines-v{AUGMENT_VERSION}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        self._lock = threading.Lock()

    def terms(self, events: Sequence[s.Event], as_of: dt.datetime, vocabulary: Vocabulary) -> list[QueryTerm]:
        c = self.config
        return patient_terms(
            events,
            as_of,
            vocabulary,
            lookback_days=c.lookback_days,
            max_problems=c.max_problems,
            max_results=c.max_results,
        )

    def _ranked(self, queries: list[str]) -> list[list[int]]:
        """Passage indices per query (best first, overview passages left out), cached across patients."""
        unique = list(dict.fromkeys(queries))
        with self._lock:
            known = {q: self._cache[q] for q in unique if q in self._cache}
        missing = [q for q in unique if q not in known]
        if missing:
            vectors = self.kb.query_vectors(missing) if self.config.mode in ("dense", "hybrid") else None
            floor = self.config.min_similarity
            for n, query in enumerate(missing):
                vector = None if vectors is None else vectors[n]
                ranked = [i for i, _ in self.kb.rank(query, self.config.mode, query_vector=vector)]
                ranked = [i for i in ranked if self.kb.chunks[i].section != "Overview"]
                if vector is not None and floor is not None and ranked:
                    sims = np.asarray(self.kb.vectors[ranked], dtype=np.float32) @ vector
                    ranked = [i for i, sim in zip(ranked, sims, strict=True) if sim >= floor]
                known[query] = ranked[:_PER_TERM_DEPTH]
            with self._lock:
                self._cache.update((q, known[q]) for q in missing)
                while len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
        return [list(known[q]) for q in queries]

    def passages(self, events: Sequence[s.Event], as_of: dt.datetime, vocabulary: Vocabulary) -> list[Passage]:
        """The best passages for the patient at ``as_of``, one per guideline, best first."""
        return self.passages_for_terms([t.text for t in self.terms(events, as_of, vocabulary)])

    def passages_for_terms(self, texts: Sequence[str]) -> list[Passage]:
        """The best passages for these query terms together, one per guideline, best first (none for no terms)."""
        if not texts:
            return []
        rankings = self._ranked(list(texts))
        fused = reciprocal_rank_fusion(rankings, [1.0] * len(rankings), k=self.kb.fusion.k)
        hits: list[Passage] = []
        taken: set[str] = set()
        for i, score in fused:
            chunk = self.kb.chunks[i]
            if chunk.guideline_id in taken:
                continue
            taken.add(chunk.guideline_id)
            hits.append(Passage(chunk.guideline_id, chunk.title, chunk.section, chunk.passage, score))
            if len(hits) >= self.config.k:
                break
        return hits

    def lines(self, events: Sequence[s.Event], as_of: dt.datetime, vocabulary: Vocabulary) -> list[str]:
        """Record lines (``- document > section: passage``), best first."""
        return [
            f"- {short_section(p.section) or p.title}: {snippet(p.passage, self.config.max_passage_chars)}"
            for p in self.passages(events, as_of, vocabulary)
        ]


def relevant_guidelines(
    patient: s.Patient,
    as_of: dt.datetime,
    vocabulary: Vocabulary,
    augmenter: GuidelineAugmenter,
) -> list[Passage]:
    """Guideline passages for ``patient`` as of ``as_of`` (only events at or before it are read)."""
    as_of = s.normalize_time(as_of)
    return augmenter.passages(patient.events_until(as_of), as_of, vocabulary)
