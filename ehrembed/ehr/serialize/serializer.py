"""The :class:`Serializer`: a patient as text, as of a time, within a token budget.

Only events at or before ``as_of`` are read: the cut happens before anything else, so nothing
later can leak into the text. The output is a pure function of (patient, as_of, config,
vocabulary, appendix): ``version`` names it for cache keys.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict

from ehrembed import schema as s
from ehrembed.ehr.tokens import TokenCounter
from ehrembed.ehr.vocabulary import Vocabulary

from .base import FORMATS, Appendix, Clock, Doc, Names, Serialized, SerializeError, SerializerConfig
from .compact import CompactWriter
from .fit import fit, fit_with_appendix
from .lists import dated_list, reference_list
from .markdown import MarkdownWriter, header

FORMAT_VERSION = 2
"""Bumped when a layout's output changes for the same config (2: Markdown aligned with the reference)."""


class Serializer:
    """Turns a Patient into text as of a time. Build once per dataset; thread-safe to call."""

    def __init__(
        self,
        vocabulary: Vocabulary,
        config: SerializerConfig | None = None,
        token_counter: TokenCounter | None = None,
        appendix: Appendix | None = None,
    ) -> None:
        self.vocabulary = vocabulary
        self.appendix = appendix
        if appendix is not None and not 0.0 <= appendix.share < 1.0:
            raise SerializeError(f"an appendix share must be in [0, 1), got {appendix.share}")
        self.config = config or SerializerConfig()
        if self.config.max_tokens is not None:
            if self.config.max_tokens <= 0:
                raise SerializeError(f"max_tokens must be positive, got {self.config.max_tokens}")
            if token_counter is None:
                raise SerializeError("a token budget needs a token counter (ehrembed.ehr.tokens.load_token_counter)")
        if self.config.format not in FORMATS:
            raise SerializeError(f"unknown format {self.config.format!r}; use one of {', '.join(FORMATS)}")
        if self.config.recent_values < 1:
            raise SerializeError(f"recent_values must be at least 1, got {self.config.recent_values}")
        self.token_counter = token_counter
        self._names = Names(vocabulary, self.config.unknown_codes)

    @property
    def version(self) -> str:
        """Names everything that changes the output; part of every embedding cache key."""
        payload = json.dumps(
            {
                "format_version": FORMAT_VERSION,
                **asdict(self.config),
                "tokenizer": self.token_counter.name if self.token_counter and self.config.max_tokens else None,
                **({"appendix": self.appendix.version} if self.appendix is not None else {}),
            },
            sort_keys=True,
        )
        return f"{self.config.format}-v{FORMAT_VERSION}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"

    def serialize(self, patient: s.Patient, *, as_of: dt.datetime) -> str:
        return self.serialize_with_stats(patient, as_of=as_of).text

    def serialize_with_stats(self, patient: s.Patient, *, as_of: dt.datetime) -> Serialized:
        as_of = s.normalize_time(as_of)
        birth = patient.birth_time
        if birth is not None and as_of < birth:
            raise SerializeError(
                f"as-of time {as_of.isoformat()} is before subject {patient.subject_id}'s birth ({birth.date()})"
            )
        events = patient.events_until(as_of)  # the leakage cut: nothing after as_of is read again
        clock = Clock(as_of, self.config.shift_dates)
        doc = Doc()
        layout = self.config.format
        if layout == "list":
            reference_list(doc, events, self._names)
        elif layout == "list_dated":
            header(doc, events, birth, self._names, clock)
            dated_list(doc, events, self._names, clock)
        elif layout == "markdown_compact":
            CompactWriter(self._names, clock, self.config.recent_values).write(doc, events, birth)
        else:
            MarkdownWriter(self._names, clock, self.config.recent_values).write(doc, events, birth)
        budget = self.config.max_tokens
        if self.appendix is not None:
            extra = self.appendix.lines(events, as_of, self.vocabulary)
            return fit_with_appendix(doc, self.appendix.heading, extra, self.appendix.share, budget, self.token_counter)
        return fit(doc, budget, self.token_counter)
