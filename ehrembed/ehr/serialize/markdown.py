"""The Markdown layout, aligned with the reference's Markdown (../shared/DESIGN.md section 4).

::

    # Electronic Healthcare Record
    Current time: 2024-01-01 00:00            (the real as-of time unless shift_dates)
    ## Patient Demographics                   age, sex, race, ethnicity, death
    ## Recent Body Metrics                    the 24 fixed concepts of measurements.CONCEPTS,
    ## Recent Vital Signs                     synonymous codes merged, implausible values and
    ## Recent Lab Results                     foreign units dropped, last values newest first
                                              with (low|normal|high), else "No recent data"
    ## Past Medical Visits                    one line a visit, newest first
    ## General Medical Events                 codes outside visits, last values newest first
    ## Detailed Past Medical Visits (most recent first)
    ### {visit} on {date} ({n} days before prediction time, duration: {n} days)
    #### Conditions / Medications / Procedures / Measurements / Allergies / Other Events

Codes of the fixed concepts appear only in their Recent section. Per code, up to ``recent_values``
values are shown, newest first, as ``name (unit): v1 (high), v2`` (2 decimals, trailing zeros
stripped; flagged where the source or :data:`~ehrembed.ehr.measurements.REFERENCE_RANGES` gives a range).
An ongoing visit shows ``current visit`` and never its future end. Over budget, the oldest lines
go first; the ``No recent data`` lines count as the oldest of all, so a short window spends its
tokens on what the patient has.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ehrembed import schema as s
from ehrembed.ehr.measurements import CONCEPT_OF_CODE, CONCEPTS, GROUPS, Concept, flag, format_decimals
from ehrembed.ehr.text import one_line

from .base import UNDATED, Clock, Doc, Names, latest_by_code, tidy_case, ts, years

DETAIL_SECTIONS: tuple[tuple[str, tuple[s.Domain, ...]], ...] = (
    ("Conditions", (s.Domain.CONDITION,)),
    ("Medications", (s.Domain.DRUG,)),
    ("Procedures", (s.Domain.PROCEDURE,)),
    ("Measurements", (s.Domain.MEASUREMENT,)),
    ("Allergies", (s.Domain.ALLERGY,)),
    ("Other Events", (s.Domain.OBSERVATION, s.Domain.DEVICE, s.Domain.OTHER)),
)
SECTION_OF_DOMAIN = {domain: i for i, (_, domains) in enumerate(DETAIL_SECTIONS) for domain in domains}
_SKIP_IN_LISTS = {s.Domain.DEMOGRAPHIC, s.Domain.VISIT}
_DEMOGRAPHIC_LABELS = {"Gender": "Sex", "Race": "Race", "Ethnicity": "Ethnicity"}


@dataclass
class Visit:
    code: str
    start: dt.datetime
    end: dt.datetime | None = None
    explicit: bool = True
    events: list[s.Event] = field(default_factory=list)


def header(doc: Doc, events: Sequence[s.Event], birth: dt.datetime | None, names: Names, clock: Clock) -> None:
    """Title, current time and demographics: the undated top every Markdown-like layout starts with."""
    doc.add("# Electronic Healthcare Record")
    doc.add(f"Current time: {clock.now:%Y-%m-%d %H:%M}")
    section = doc.heading("\n## Patient Demographics")
    if birth is not None:
        doc.add(f"- Age: {years(birth, clock.as_of)} years", parents=(section,))
    shown: set[str] = set()
    for event in events:
        label = _DEMOGRAPHIC_LABELS.get(event.code.partition("/")[0])
        if label is not None and event.code not in shown:
            shown.add(event.code)
            doc.add(f"- {label}: {tidy_case(names.name(event.code))}", parents=(section,))
        elif event.code == s.DEATH_CODE and event.time is not None:
            doc.add(f"- Deceased: {clock.show(event.time):%Y-%m-%d}", parents=(section,))


class MarkdownWriter:
    """Writes one record's Markdown into a :class:`Doc` (one writer per record)."""

    hidden_codes: frozenset[str] = frozenset(CONCEPT_OF_CODE)
    """Codes left out of visits and general events (the fixed concepts: shown in their Recent section)."""

    def __init__(self, names: Names, clock: Clock, recent_values: int) -> None:
        self.names = names
        self.clock = clock
        self.recent = recent_values

    def write(self, doc: Doc, events: Sequence[s.Event], birth: dt.datetime | None) -> None:
        header(doc, events, birth, self.names, self.clock)
        self._recent_values(doc, events)
        visits, general = self._visits(events)
        self._visit_list(doc, visits)
        self._general_events(doc, general)
        self._visit_details(doc, visits)

    # --- the fixed concepts -------------------------------------------------------------------
    def _recent_values(self, doc: Doc, events: Sequence[s.Event]) -> None:
        readings: dict[str, list[tuple[s.Event, float]]] = defaultdict(list)
        for event in events:
            concept = CONCEPT_OF_CODE.get(event.code)
            if concept is None or event.numeric_value is None or event.time is None:
                continue
            shown = concept.reading(event.numeric_value, event.unit)
            if shown is not None:
                readings[concept.name].append((event, shown))
        for group in GROUPS:
            section = doc.heading(f"\n## Recent {group}")
            for concept in (c for c in CONCEPTS if c.group == group):
                series = readings.get(concept.name)
                if not series:
                    doc.add(f"- {concept.name}: No recent data", time=UNDATED, parents=(section,))
                    continue
                series.sort(key=lambda r: ts(r[0].time))  # synonyms interleave: one time order
                recent = series[-self.recent :][::-1]
                values = ", ".join(_concept_value(concept, event, shown) for event, shown in recent)
                doc.add(f"- {concept.name} ({concept.unit}): {values}", time=recent[0][0].time, parents=(section,))

    # --- visits -------------------------------------------------------------------------------
    def _visits(self, events: Sequence[s.Event]) -> tuple[list[Visit], list[s.Event]]:
        """Group events by visit; events without a visit id are the general events."""
        vocabulary = self.names.vocabulary
        explicit: dict[int, Visit] = {}
        for event in events:
            if event.time is None or event.visit_id is None:
                continue
            if vocabulary.domain(event.code) == s.Domain.VISIT and event.code != s.VISIT_END_CODE:
                explicit.setdefault(event.visit_id, Visit(event.code, event.time))
            elif event.code == s.VISIT_END_CODE and event.visit_id in explicit:
                explicit[event.visit_id].end = event.time
        implicit: dict[int, Visit] = {}
        general: list[s.Event] = []
        for event in events:
            if event.time is None or event.code in (s.BIRTH_CODE, s.DEATH_CODE) or event.code in self.hidden_codes:
                continue
            if vocabulary.domain(event.code) in _SKIP_IN_LISTS:
                continue
            if event.visit_id is None:
                general.append(event)
            elif event.visit_id in explicit:
                explicit[event.visit_id].events.append(event)
            else:  # a visit id without a visit row (common in extracts): an untyped visit
                implicit.setdefault(event.visit_id, Visit("", event.time, explicit=False)).events.append(event)
        visits = sorted(
            [*explicit.values(), *implicit.values()],
            key=lambda v: (v.start, v.code, v.explicit),
            reverse=True,
        )
        return visits, general

    def _visit_title(self, visit: Visit) -> str:
        return self.names.name(visit.code) if visit.explicit else "Visit"

    def _when(self, visit: Visit) -> str:
        """``2023-05-01 (245 days before prediction time, duration: 3 days)``; an open visit is current."""
        days = (self.clock.as_of.date() - visit.start.date()).days
        parts = [f"{days} day{'s' if days != 1 else ''} before prediction time"]
        if visit.explicit and visit.end is None:
            parts.append("current visit")
        elif visit.end is not None and (length := (visit.end.date() - visit.start.date()).days) > 0:
            parts.append(f"duration: {length} day{'s' if length != 1 else ''}")
        return f"{self.clock.show(visit.start):%Y-%m-%d} ({', '.join(parts)})"

    def _visit_list(self, doc: Doc, visits: list[Visit]) -> None:
        if not visits:
            return
        section = doc.heading("\n## Past Medical Visits")
        for visit in visits:
            doc.add(f"- {self._visit_title(visit)} on {self._when(visit)}", time=visit.start, parents=(section,))

    def _general_events(self, doc: Doc, general: list[s.Event]) -> None:
        items = self._items(general)
        if not items:
            return
        section = doc.heading("\n## General Medical Events")
        newest = latest_by_code(general)
        for code in sorted(items, key=lambda c: (-ts(newest[c].time), self.names.name(c))):
            doc.add(f"- {items[code]}", time=newest[code].time, parents=(section,))

    def _visit_details(self, doc: Doc, visits: list[Visit]) -> None:
        with_events = [v for v in visits if v.events]
        if not with_events:
            return
        section = doc.heading("\n## Detailed Past Medical Visits (most recent first)")
        for visit in with_events:
            head = doc.heading(f"\n### {self._visit_title(visit)} on {self._when(visit)}", parents=(section,))
            by_section: list[list[str]] = [[] for _ in DETAIL_SECTIONS]
            for code, text in self._items(visit.events).items():
                by_section[SECTION_OF_DOMAIN[self.names.vocabulary.domain(code)]].append(text)
            for (title, _), texts in zip(DETAIL_SECTIONS, by_section, strict=True):
                if not texts:
                    continue
                sub = doc.heading(f"#### {title}", parents=(section, head))
                for text in texts:
                    doc.add(f"- {text}", time=visit.start, parents=(section, head, sub))

    def _items(self, events: Iterable[s.Event]) -> dict[str, str]:
        """code -> ``name (unit): newest, older, ...`` (or ``name: text``), in first-seen order."""
        series: dict[str, list[s.Event]] = {}
        for event in events:
            if SECTION_OF_DOMAIN.get(self.names.vocabulary.domain(event.code)) is None:
                continue
            if self.names.keep(event.code):
                series.setdefault(event.code, []).append(event)
        items: dict[str, str] = {}
        for code, seen in series.items():
            text = self.names.name(code)
            numbers = [e for e in seen if e.numeric_value is not None][-self.recent :][::-1]
            if numbers:
                unit = next((e.unit for e in numbers if e.unit), None)
                suffix = f" ({one_line(unit, 64)})" if unit else ""
                values = ", ".join(_code_value(e) for e in numbers)
                text = f"{text}{suffix}: {values}"
            elif (words := next((e.text_value for e in reversed(seen) if e.text_value), None)) is not None:
                text = f"{text}: {one_line(words)}"
            items[code] = text
        return items


def _concept_value(concept: Concept, event: s.Event, shown: float) -> str:
    """``7.2 (high)``: the source's range when it gave one (in its own unit), else the concept's."""
    assert event.numeric_value is not None
    if event.ref_low is not None or event.ref_high is not None:
        label = flag(event.code, event.numeric_value, event.unit, event.ref_low, event.ref_high)
    elif concept.normal is not None:
        low, high = concept.normal
        label = "low" if shown < low else "high" if shown > high else "normal"
    else:
        label = None
    text = format_decimals(shown, concept.decimals)
    return f"{text} ({label})" if label else text


def _code_value(event: s.Event) -> str:
    """``2.6 (high)``: 2 decimals, flagged where the source or :data:`REFERENCE_RANGES` gives a range."""
    assert event.numeric_value is not None
    label = flag(event.code, event.numeric_value, event.unit, event.ref_low, event.ref_high)
    text = format_decimals(event.numeric_value, 2)
    return f"{text} ({label})" if label else text
