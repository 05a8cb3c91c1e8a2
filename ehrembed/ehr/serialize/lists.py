"""The list layouts: one line per unique code, most recent first.

- ``list`` (the reference's final format): ``description (unit): value`` with numbers to 2 decimals
  (trailing zeros stripped); no title, headings or dates; codes without a description are dropped;
  undated codes (sex, race) come last, so over budget they and then the oldest codes go first.
- ``list_dated`` (the earlier list): title, current time and demographics, then one line per unique
  code with its age (``(3 days ago)``) and low / normal / high flags.
"""

from __future__ import annotations

from collections.abc import Sequence

from ehrembed import schema as s
from ehrembed.ehr.measurements import _format_value, format_decimals
from ehrembed.ehr.text import one_line

from .base import UNDATED, Clock, Doc, Names, ago, latest_by_code, tidy_case, ts

_NOT_LISTED = frozenset({s.BIRTH_CODE, s.DEATH_CODE, s.VISIT_END_CODE})


def reference_list(doc: Doc, events: Sequence[s.Event], names: Names) -> None:
    """One line per described code, most recent first; undated codes last (cut first over budget)."""
    vocabulary = names.vocabulary
    rows = []
    for code, event in latest_by_code(e for e in events if e.code not in _NOT_LISTED).items():
        description = vocabulary.describe(code)
        if description is None:
            continue
        text = tidy_case(description)
        if event.numeric_value is not None:
            unit = f" ({one_line(event.unit, 64)})" if event.unit else ""
            text = f"{text}{unit}: {format_decimals(event.numeric_value, 2)}"
        elif event.text_value and vocabulary.domain(code) != s.Domain.VISIT:
            text = f"{text}: {one_line(event.text_value)}"
        rows.append((event.time or UNDATED, text))
    for when, text in sorted(rows, key=lambda r: (-ts(r[0]), r[1])):
        doc.add(text, time=when)


def dated_list(doc: Doc, events: Sequence[s.Event], names: Names, clock: Clock) -> None:
    """Unique dated codes, newest first, with their age and flags (the header is the caller's)."""
    vocabulary = names.vocabulary
    dated = [e for e in events if e.time is not None and e.code not in (s.BIRTH_CODE, s.DEATH_CODE)]
    latest = latest_by_code(
        e for e in dated if e.code != s.VISIT_END_CODE and vocabulary.domain(e.code) != s.Domain.DEMOGRAPHIC
    )
    codes = [c for c in latest if names.keep(c)]
    if not codes:
        return
    section = doc.heading("\n## Medical Events (most recent first)")
    for code in sorted(codes, key=lambda c: (-ts(latest[c].time), names.name(c))):
        event = latest[code]
        text = names.name(code)
        if event.numeric_value is not None:
            text = f"{text}: {_format_value(code, event)}"
        elif event.text_value and vocabulary.domain(code) != s.Domain.VISIT:
            text = f"{text}: {one_line(event.text_value)}"
        doc.add(f"- {text} ({ago(event.time, clock.as_of)})", time=event.time, parents=(section,))
