"""A patient as Markdown, as of a time, within a token budget.

Two layouts (../shared/DESIGN.md section 4):

- ``markdown``: the EHRSHOT LLM-encoder layout — title and current time, demographics, recent
  body metrics / vital signs / lab results (last values with units and low/normal/high flags),
  a one-line-per-visit list, unique events outside visits, then each visit newest first with its
  conditions, medications, procedures and measurements.
- ``list``: the reference's final format — one line per unique code, most recent first,
  ``description (unit): value`` with numbers to 2 decimals (trailing zeros stripped), no title,
  headings or dates; codes without a description are dropped and undated codes (sex, race) come
  last, so over budget they and then the oldest codes go first.
- ``list_dated``: the earlier list — title, current time and demographics, then one line per
  unique code, most recent first, with its age (``(3 days ago)``) and low/normal/high flags.

Only events at or before ``as_of`` are read: the cut happens before anything else, so nothing
later can leak into the text. Over budget, the oldest content goes first, whole lines at a time.
The output is a pure function of (patient, as_of, config, vocabulary): ``version`` names it for
cache keys.

An optional :class:`Appendix` (e.g. guideline passages, :mod:`ehrembed.retrieval.augment`) adds a
closing section computed from the same cut events; with a budget it gets ``share`` of the tokens
(plus whatever the record leaves unused), the record is fitted into the rest, and its lines are
kept whole, best first. It enters ``version``. How measurements read (body metrics, vital signs,
reference ranges, flags, number formatting) lives in :mod:`ehrembed.ehr.measurements`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

from ehrembed import schema as s
from ehrembed.ehr.measurements import (
    BODY_METRICS,
    VITAL_SIGNS,
    _format_value,
    _two_decimals,
)
from ehrembed.ehr.text import one_line
from ehrembed.ehr.tokens import TokenCounter
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.errors import InputError

FORMAT_VERSION = 1
Format = Literal["markdown", "list", "list_dated"]
FORMATS: tuple[str, ...] = ("markdown", "list", "list_dated")
EMBED_FORMAT: Format = "list"
"""The layout records are embedded in by default: the reference's list. On Eunomia's tuning split it gave the
MiniLM student a logistic-head AUROC of 0.877 at k=all against 0.743 for Markdown (0.598 vs 0.533 at k=1);
Markdown stays the layout for reading (``ehrembed serialize``, the record endpoint)."""


class SerializeError(InputError):
    """The request cannot be serialized as asked (e.g. an as-of time before birth)."""


@dataclass(frozen=True)
class SerializerConfig:
    """What goes into a record. Every field enters ``Serializer.version``."""

    format: Format = "markdown"
    max_tokens: int | None = None
    recent_values: int = 3
    max_labs: int = 24
    unknown_codes: Literal["raw", "drop"] = "raw"


class Appendix(Protocol):
    """Lines appended to a record under ``## {heading}``, computed only from the events the record may show."""

    heading: str
    share: float
    """Fraction of the token budget reserved for these lines (the record is fitted into the rest)."""
    version: str
    """Names everything that changes the lines; enters ``Serializer.version``."""

    def lines(self, events: Sequence[s.Event], as_of: dt.datetime, vocabulary: Vocabulary) -> list[str]: ...


@dataclass(frozen=True)
class Serialized:
    """A record's text and what the budget did to it."""

    text: str
    n_tokens: int | None
    dropped_lines: int

    @property
    def truncated(self) -> bool:
        return self.dropped_lines > 0


_DETAIL_SECTIONS: tuple[tuple[str, tuple[s.Domain, ...]], ...] = (
    ("Conditions", (s.Domain.CONDITION,)),
    ("Medications", (s.Domain.DRUG,)),
    ("Procedures", (s.Domain.PROCEDURE,)),
    ("Measurements", (s.Domain.MEASUREMENT,)),
    ("Allergies", (s.Domain.ALLERGY,)),
    ("Other Events", (s.Domain.OBSERVATION, s.Domain.DEVICE, s.Domain.OTHER)),
)
_SECTION_OF_DOMAIN = {domain: i for i, (_, domains) in enumerate(_DETAIL_SECTIONS) for domain in domains}
_SKIP_IN_LISTS = {s.Domain.DEMOGRAPHIC, s.Domain.VISIT}
_COST_BATCH = 48  # lines costed per tokenizer call when fitting a budget
_LIKELY_FITS_CHARS_PER_TOKEN = 3  # English Markdown runs ~4 characters per token


_NOT_LISTED = frozenset({s.BIRTH_CODE, s.DEATH_CODE, s.VISIT_END_CODE})
_UNDATED = dt.datetime.min
"""Undated codes' place in the reference list: older than anything, so the budget drops them first."""


@dataclass
class _Line:
    """One output line: ``time`` orders truncation (None = keep), ``parents`` are its headings."""

    text: str
    time: dt.datetime | None = None
    parents: tuple[int, ...] = ()
    heading: bool = False


@dataclass
class _Doc:
    lines: list[_Line] = field(default_factory=list)

    def add(self, text: str, time: dt.datetime | None = None, parents: tuple[int, ...] = ()) -> int:
        self.lines.append(_Line(text, time, parents))
        return len(self.lines) - 1

    def heading(self, text: str, parents: tuple[int, ...] = ()) -> int:
        self.lines.append(_Line(text, None, parents, heading=True))
        return len(self.lines) - 1


@dataclass
class _Visit:
    code: str
    start: dt.datetime
    end: dt.datetime | None = None
    explicit: bool = True
    events: list[s.Event] = field(default_factory=list)


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
        self.token_counter = token_counter

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
        doc = _Doc()
        if self.config.format == "list":
            self._reference_list(doc, events)
            return self._finish(doc, events, as_of)
        doc.add("# Electronic Healthcare Record")
        doc.add(f"Current time: {as_of:%Y-%m-%d %H:%M}")
        self._demographics(doc, events, birth, as_of)
        if self.config.format == "list_dated":
            self._unique_codes(doc, events, as_of)
        else:
            self._recent_values(doc, events)
            visits, general = self._visits(events)
            self._visit_list(doc, visits, as_of)
            self._general_events(doc, general, as_of)
            self._visit_details(doc, visits, as_of)
        return self._finish(doc, events, as_of)

    def _finish(self, doc: _Doc, events: Sequence[s.Event], as_of: dt.datetime) -> Serialized:
        if self.appendix is not None:
            return self._fit_with_appendix(doc, self.appendix.lines(events, as_of, self.vocabulary))
        return self._fit(doc)

    # --- sections ---------------------------------------------------------------------------
    def _demographics(
        self, doc: _Doc, events: Sequence[s.Event], birth: dt.datetime | None, as_of: dt.datetime
    ) -> None:
        section = doc.heading("\n## Patient Demographics")
        if birth is not None:
            doc.add(f"- Age: {_years(birth, as_of)} years", parents=(section,))
        shown: set[str] = set()
        for event in events:
            prefix = event.code.partition("/")[0]
            if prefix in ("Gender", "Race", "Ethnicity") and event.code not in shown:
                shown.add(event.code)
                label = {"Gender": "Sex"}.get(prefix, prefix)
                doc.add(f"- {label}: {_tidy_case(self.vocabulary.label(event.code))}", parents=(section,))
            elif event.code == s.DEATH_CODE and event.time is not None:
                doc.add(f"- Deceased: {event.time:%Y-%m-%d}", parents=(section,))

    def _recent_values(self, doc: _Doc, events: Sequence[s.Event]) -> None:
        series: dict[str, list[s.Event]] = defaultdict(list)
        for event in events:
            if event.numeric_value is not None and event.time is not None:
                series[event.code].append(event)
        groups: dict[str, list[str]] = {
            "Recent Body Metrics": [],
            "Recent Vital Signs": [],
            "Recent Lab Results": [],
        }
        for code in series:
            if code in BODY_METRICS:
                groups["Recent Body Metrics"].append(code)
            elif code in VITAL_SIGNS:
                groups["Recent Vital Signs"].append(code)
            elif self.vocabulary.domain(code) in (s.Domain.MEASUREMENT, s.Domain.OBSERVATION, s.Domain.OTHER):
                groups["Recent Lab Results"].append(code)
        for title, codes in groups.items():
            if not codes:
                continue
            codes.sort(key=lambda c: (-_ts(series[c][-1].time), self._name(c)))
            if title == "Recent Lab Results":
                codes = codes[: self.config.max_labs]
            section = doc.heading(f"\n## {title}")
            for code in codes:
                recent = series[code][-self.config.recent_values :][::-1]
                values = ", ".join(_format_value(code, e) for e in recent)
                name = BODY_METRICS.get(code) or VITAL_SIGNS.get(code) or self._name(code)
                doc.add(f"- {name}: {values}", time=recent[0].time, parents=(section,))

    def _visits(self, events: Sequence[s.Event]) -> tuple[list[_Visit], list[s.Event]]:
        """Group events by visit; events without a visit id are the general events."""
        explicit: dict[int, _Visit] = {}
        for event in events:
            if event.time is None or event.visit_id is None:
                continue
            if self.vocabulary.domain(event.code) == s.Domain.VISIT and event.code != s.VISIT_END_CODE:
                explicit.setdefault(event.visit_id, _Visit(event.code, event.time))
            elif event.code == s.VISIT_END_CODE and event.visit_id in explicit:
                explicit[event.visit_id].end = event.time
        implicit: dict[int, _Visit] = {}
        general: list[s.Event] = []
        for event in events:
            if event.time is None or event.code in (s.BIRTH_CODE, s.DEATH_CODE):
                continue
            domain = self.vocabulary.domain(event.code)
            if domain in _SKIP_IN_LISTS:
                continue
            if event.visit_id is None:
                general.append(event)
            elif event.visit_id in explicit:
                explicit[event.visit_id].events.append(event)
            else:  # a visit id without a visit row (common in extracts): an untyped visit
                implicit.setdefault(event.visit_id, _Visit("", event.time, explicit=False)).events.append(event)
        visits = sorted(
            [*explicit.values(), *implicit.values()],
            key=lambda v: (v.start, v.code, v.explicit),
            reverse=True,
        )
        return visits, general

    def _visit_title(self, visit: _Visit) -> str:
        return self.vocabulary.label(visit.code) if visit.explicit else "Visit"

    def _visit_list(self, doc: _Doc, visits: list[_Visit], as_of: dt.datetime) -> None:
        if not visits:
            return
        section = doc.heading("\n## Past Medical Visits")
        for visit in visits:
            when = _ago(visit.start, as_of)
            if visit.explicit and visit.end is None:
                span = f"since {visit.start:%Y-%m-%d}, ongoing"
            elif visit.explicit and visit.end is not None and visit.end.date() != visit.start.date():
                days = (visit.end.date() - visit.start.date()).days
                span = f"{visit.start:%Y-%m-%d} to {visit.end:%Y-%m-%d}, {days} day{'s' if days != 1 else ''}"
            else:
                span = f"{visit.start:%Y-%m-%d}"
            doc.add(f"- {self._visit_title(visit)}: {span} ({when})", time=visit.start, parents=(section,))

    def _general_events(self, doc: _Doc, general: list[s.Event], as_of: dt.datetime) -> None:
        latest = _latest_by_code(general)
        codes = [c for c in latest if self._keep(c)]
        if not codes:
            return
        section = doc.heading("\n## General Medical Events")
        for code in sorted(codes, key=lambda c: (-_ts(latest[c].time), self._name(c))):
            event = latest[code]
            doc.add(f"- {self._name(code)} (last {_ago(event.time, as_of)})", time=event.time, parents=(section,))

    def _visit_details(self, doc: _Doc, visits: list[_Visit], as_of: dt.datetime) -> None:
        with_events = [v for v in visits if v.events]
        if not with_events:
            return
        section = doc.heading("\n## Detailed Past Medical Visits")
        for visit in with_events:
            head = doc.heading(
                f"\n### {self._visit_title(visit)} on {visit.start:%Y-%m-%d} ({_ago(visit.start, as_of)})",
                parents=(section,),
            )
            for (title, _), items in zip(_DETAIL_SECTIONS, self._detail_items(visit.events), strict=True):
                if not items:
                    continue
                sub = doc.heading(f"#### {title}", parents=(section, head))
                for item in items.values():
                    doc.add(f"- {item}", time=visit.start, parents=(section, head, sub))

    def _detail_items(self, events: Iterable[s.Event]) -> list[dict[str, str]]:
        """Per detail section, code -> item text, in one pass over the visit's events."""
        sections: list[dict[str, str]] = [{} for _ in _DETAIL_SECTIONS]
        for event in events:
            where = _SECTION_OF_DOMAIN.get(self.vocabulary.domain(event.code))
            if where is None or not self._keep(event.code):
                continue
            text = self._name(event.code)
            if event.numeric_value is not None:
                text = f"{text}: {_format_value(event.code, event)}"
            elif event.text_value:
                text = f"{text}: {one_line(event.text_value)}"
            sections[where][event.code] = text  # the visit's last value of a code wins
        return sections

    def _unique_codes(self, doc: _Doc, events: Sequence[s.Event], as_of: dt.datetime) -> None:
        dated = [e for e in events if e.time is not None and e.code not in (s.BIRTH_CODE, s.DEATH_CODE)]
        latest = _latest_by_code(
            e for e in dated if e.code != s.VISIT_END_CODE and self.vocabulary.domain(e.code) != s.Domain.DEMOGRAPHIC
        )
        codes = [c for c in latest if self._keep(c)]
        if not codes:
            return
        section = doc.heading("\n## Medical Events (most recent first)")
        for code in sorted(codes, key=lambda c: (-_ts(latest[c].time), self._name(c))):
            event = latest[code]
            text = self._name(code)
            if event.numeric_value is not None:
                text = f"{text}: {_format_value(code, event)}"
            elif event.text_value and self.vocabulary.domain(code) != s.Domain.VISIT:
                text = f"{text}: {one_line(event.text_value)}"
            doc.add(f"- {text} ({_ago(event.time, as_of)})", time=event.time, parents=(section,))

    def _reference_list(self, doc: _Doc, events: Sequence[s.Event]) -> None:
        """One line per described code, most recent first; undated codes last (cut first over budget)."""
        latest = _latest_by_code(e for e in events if e.code not in _NOT_LISTED)
        rows = []
        for code, event in latest.items():
            description = self.vocabulary.describe(code)
            if description is None:
                continue
            text = _tidy_case(description)
            if event.numeric_value is not None:
                unit = f" ({one_line(event.unit, 64)})" if event.unit else ""
                text = f"{text}{unit}: {_two_decimals(event.numeric_value)}"
            elif event.text_value and self.vocabulary.domain(code) != s.Domain.VISIT:
                text = f"{text}: {one_line(event.text_value)}"
            rows.append((event.time or _UNDATED, text))
        for when, text in sorted(rows, key=lambda r: (-_ts(r[0]), r[1])):
            doc.add(text, time=when)

    # --- helpers ----------------------------------------------------------------------------
    def _name(self, code: str) -> str:
        return self.vocabulary.label(code)

    def _keep(self, code: str) -> bool:
        return self.config.unknown_codes == "raw" or self.vocabulary.describe(code) is not None

    def _fit_with_appendix(self, doc: _Doc, extra: list[str]) -> Serialized:
        """The record within ``1 - share`` of the budget, then the appendix lines that fit, whole, best first."""
        assert self.appendix is not None
        if not extra:
            return self._fit(doc)
        budget, counter = self.config.max_tokens, self.token_counter
        heading = f"\n## {self.appendix.heading}"
        if budget is None or counter is None:
            record = self._fit(doc)
            return Serialized(record.text + "\n".join([heading, *extra]) + "\n", None, record.dropped_lines)
        record = self._fit(doc, budget - int(budget * self.appendix.share))
        used = record.n_tokens if record.n_tokens is not None else counter.count([record.text])[0]
        heading_cost, *costs = counter.count([heading, *extra])
        room = budget - used - heading_cost
        kept: list[str] = []
        for line, cost in zip(extra, costs, strict=True):
            if cost > room:
                break
            kept.append(line)
            room -= cost
        while kept:
            text = record.text + "\n".join([heading, *kept]) + "\n"
            exact = counter.count([text])[0]
            if exact <= budget:
                return Serialized(text, exact, record.dropped_lines)
            kept.pop()  # per-line sums can undercount the joined text
        return record

    def _fit(self, doc: _Doc, budget: int | None = None) -> Serialized:
        """Keep the newest lines that fit the budget: the oldest dated lines go first, whole.

        Lines are costed newest first, in small batches, and costing stops at the first line
        that no longer fits, so a long history costs little more tokenizer work than the budget
        itself. Undated lines (title, demographics) are kept first; headings are kept (and paid
        for) only while something under them is. The joined text is then counted exactly, and
        lines are dropped until it fits too.
        """
        lines = doc.lines
        budget = self.config.max_tokens if budget is None else budget
        if budget is None or self.token_counter is None:
            return Serialized(_join(lines, None), None, 0)
        counter = self.token_counter
        full = _join(lines, None)
        if len(full.encode()) <= budget:  # no tokenizer makes more tokens than UTF-8 bytes
            return Serialized(full, None, 0)
        if len(full) <= _LIKELY_FITS_CHARS_PER_TOKEN * budget:  # probably fits: one exact count decides
            exact = counter.count([full])[0]
            if exact <= budget:
                return Serialized(full, exact, 0)
        undated = [i for i, line in enumerate(lines) if line.time is None and not line.heading]
        dated = sorted(
            (i for i, line in enumerate(lines) if line.time is not None),
            key=lambda i: (lines[i].time, -i),
            reverse=True,
        )
        order = undated + dated
        keep: list[int] = []  # in the order they were admitted: undated, then newest first
        heading_cost: dict[int, int] = {}  # costed with the first batch that needs them
        paid: set[int] = set()
        total = 0
        for batch_start in range(0, len(order), _COST_BATCH):
            batch = order[batch_start : batch_start + _COST_BATCH]
            heads = sorted({p for i in batch for p in lines[i].parents if p not in heading_cost})
            costs = counter.count([lines[i].text for i in batch] + [lines[p].text for p in heads])
            heading_cost.update(zip(heads, costs[len(batch) :], strict=True))
            full_stop = False
            for i, cost in zip(batch, costs[: len(batch)], strict=True):
                extra = cost + sum(heading_cost[p] for p in lines[i].parents if p not in paid)
                if total + extra > budget:
                    full_stop = True
                    break
                keep.append(i)
                paid.update(lines[i].parents)
                total += extra
            if full_stop:
                break
        additive = bool(getattr(counter, "additive", False))
        while True:
            alive = [False] * len(lines)
            for i in keep:
                alive[i] = True
                for parent in lines[i].parents:
                    alive[parent] = True
            text = _join(lines, alive)
            dropped = sum(1 for line, on in zip(lines, alive, strict=True) if not on and not line.heading)
            if keep and additive:  # whitespace-split tokenizers: the line costs add up exactly
                return Serialized(text, total, dropped)
            exact = counter.count([text])[0]
            if not keep:
                raise SerializeError(f"a budget of {budget} tokens cannot hold even the record's first line")
            if exact <= budget:
                return Serialized(text, exact, dropped)
            keep.pop()  # per-line sums can undercount the joined text: give up the oldest kept line


def _join(lines: list[_Line], alive: list[bool] | None) -> str:
    kept = [line.text for i, line in enumerate(lines) if alive is None or alive[i]]
    return "\n".join(kept).strip() + "\n"


def _latest_by_code(events: Iterable[s.Event]) -> dict[str, s.Event]:
    latest: dict[str, s.Event] = {}
    for event in events:  # time-ordered, so the last one seen is the most recent
        latest[event.code] = event
    return latest


def _ts(time: dt.datetime | None) -> float:
    return time.timestamp() if time is not None and time != _UNDATED else float("-inf")


def _years(birth: dt.datetime, as_of: dt.datetime) -> int:
    return as_of.year - birth.year - ((as_of.month, as_of.day) < (birth.month, birth.day))


def _ago(time: dt.datetime | None, as_of: dt.datetime) -> str:
    if time is None:
        return "undated"
    days = (as_of.date() - time.date()).days
    if days <= 0:
        return "today"
    if days == 1:
        return "1 day ago"
    return f"{days} days ago"


def _tidy_case(text: str) -> str:
    return text.capitalize() if text.isupper() else text
