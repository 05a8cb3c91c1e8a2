"""The compact Markdown layout (``markdown_compact``; the Markdown layout before it was aligned with the
reference): recent values of whichever numeric codes the patient has (body metrics and vital signs by
LOINC code, then up to :data:`MAX_LABS` labs, newest first, with units and flags; no fixed concepts and
no ``No recent data`` lines), visits as ``date to date, N days (N days ago)``, general events without
values, and one value per code in visit details.

Kept because it measured better in a short window where records carry many labs: carebundle, MiniLM at
192 tokens, tuning split, k=all: logistic 0.924 vs 0.889 for ``markdown``, LightGBM 0.949 vs 0.937
(every ``markdown`` record was cut to fit; none of these) — while on Eunomia ``markdown`` measured
better (``bench/layouts.py``; README, "Serializer").
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence

from ehrembed import schema as s
from ehrembed.ehr.measurements import BODY_METRICS, VITAL_SIGNS, _format_value
from ehrembed.ehr.text import one_line

from .base import Doc, ago, latest_by_code, ts
from .markdown import DETAIL_SECTIONS, SECTION_OF_DOMAIN, MarkdownWriter, Visit, header

MAX_LABS = 24


class CompactWriter(MarkdownWriter):
    """The compact layout's sections, on :class:`MarkdownWriter`'s header and visit grouping."""

    hidden_codes: frozenset[str] = frozenset()

    def write(self, doc: Doc, events: Sequence[s.Event], birth: dt.datetime | None) -> None:
        header(doc, events, birth, self.names, self.clock)
        self._recent_any(doc, events)
        visits, general = self._visits(events)
        as_of = self.clock.as_of
        if visits:
            section = doc.heading("\n## Past Medical Visits")
            for visit in visits:
                if visit.explicit and visit.end is None:
                    span = f"since {visit.start:%Y-%m-%d}, ongoing"
                elif visit.explicit and visit.end is not None and visit.end.date() != visit.start.date():
                    days = (visit.end.date() - visit.start.date()).days
                    span = f"{visit.start:%Y-%m-%d} to {visit.end:%Y-%m-%d}, {days} day{'s' if days != 1 else ''}"
                else:
                    span = f"{visit.start:%Y-%m-%d}"
                doc.add(f"- {self._visit_title(visit)}: {span} ({ago(visit.start, as_of)})", time=visit.start,
                        parents=(section,))  # fmt: skip
        latest = latest_by_code(general)
        codes = [c for c in latest if self.names.keep(c)]
        if codes:
            section = doc.heading("\n## General Medical Events")
            for code in sorted(codes, key=lambda c: (-ts(latest[c].time), self.names.name(c))):
                event = latest[code]
                doc.add(f"- {self.names.name(code)} (last {ago(event.time, as_of)})", time=event.time,
                        parents=(section,))  # fmt: skip
        self._one_value_details(doc, visits)

    def _recent_any(self, doc: Doc, events: Sequence[s.Event]) -> None:
        series: dict[str, list[s.Event]] = defaultdict(list)
        for event in events:
            if event.numeric_value is not None and event.time is not None:
                series[event.code].append(event)
        groups: dict[str, list[str]] = {"Recent Body Metrics": [], "Recent Vital Signs": [], "Recent Lab Results": []}
        for code in series:
            if code in BODY_METRICS:
                groups["Recent Body Metrics"].append(code)
            elif code in VITAL_SIGNS:
                groups["Recent Vital Signs"].append(code)
            elif self.names.vocabulary.domain(code) in (s.Domain.MEASUREMENT, s.Domain.OBSERVATION, s.Domain.OTHER):
                groups["Recent Lab Results"].append(code)
        for title, codes in groups.items():
            if not codes:
                continue
            codes.sort(key=lambda c: (-ts(series[c][-1].time), self.names.name(c)))
            if title == "Recent Lab Results":
                codes = codes[:MAX_LABS]
            section = doc.heading(f"\n## {title}")
            for code in codes:
                recent = series[code][-self.recent :][::-1]
                values = ", ".join(_format_value(code, e) for e in recent)
                name = BODY_METRICS.get(code) or VITAL_SIGNS.get(code) or self.names.name(code)
                doc.add(f"- {name}: {values}", time=recent[0].time, parents=(section,))

    def _one_value_details(self, doc: Doc, visits: list[Visit]) -> None:
        with_events = [v for v in visits if v.events]
        if not with_events:
            return
        section = doc.heading("\n## Detailed Past Medical Visits")
        for visit in with_events:
            head = doc.heading(
                f"\n### {self._visit_title(visit)} on {visit.start:%Y-%m-%d} ({ago(visit.start, self.clock.as_of)})",
                parents=(section,),
            )
            sections: list[dict[str, str]] = [{} for _ in DETAIL_SECTIONS]
            for event in visit.events:
                where = SECTION_OF_DOMAIN.get(self.names.vocabulary.domain(event.code))
                if where is None or not self.names.keep(event.code):
                    continue
                text = self.names.name(event.code)
                if event.numeric_value is not None:
                    text = f"{text}: {_format_value(event.code, event)}"
                elif event.text_value:
                    text = f"{text}: {one_line(event.text_value)}"
                sections[where][event.code] = text
            for (title, _), items in zip(DETAIL_SECTIONS, sections, strict=True):
                if not items:
                    continue
                sub = doc.heading(f"#### {title}", parents=(section, head))
                for item in items.values():
                    doc.add(f"- {item}", time=visit.start, parents=(section, head, sub))
