"""What every layout shares: the config, the result, the appendix protocol, the line document
the budget fitter works on, and small helpers for times and names.

A layout writes a :class:`Doc`: lines in reading order, each with the time that orders truncation
(``None``: always kept) and the headings it sits under (a heading is shown only while a line under
it is).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ehrembed import schema as s
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.errors import InputError

Format = Literal["markdown", "list", "list_dated", "markdown_compact"]
FORMATS: tuple[str, ...] = ("markdown", "list", "list_dated", "markdown_compact")
SHIFTED_NOW = dt.datetime(2024, 1, 1)
"""Where ``shift_dates`` puts every prediction time (the reference's constant label time)."""


class SerializeError(InputError):
    """The request cannot be serialized as asked (e.g. an as-of time before birth)."""


@dataclass(frozen=True)
class SerializerConfig:
    """What goes into a record. Every field enters ``Serializer.version``.

    ``recent_values``: values shown per fixed measurement and per code in Markdown (newest first).
    ``shift_dates``: Markdown shows every date moved by the same offset so that the prediction
    time reads ``2024-01-01 00:00`` (intervals are kept; the calendar year is hidden).
    """

    format: Format = "markdown"
    max_tokens: int | None = None
    recent_values: int = 3
    unknown_codes: Literal["raw", "drop"] = "raw"
    shift_dates: bool = False


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


@dataclass
class Line:
    """One output line: ``time`` orders truncation (None = keep), ``parents`` are its headings."""

    text: str
    time: dt.datetime | None = None
    parents: tuple[int, ...] = ()
    heading: bool = False


@dataclass
class Doc:
    lines: list[Line] = field(default_factory=list)

    def add(self, text: str, time: dt.datetime | None = None, parents: tuple[int, ...] = ()) -> int:
        self.lines.append(Line(text, time, parents))
        return len(self.lines) - 1

    def heading(self, text: str, parents: tuple[int, ...] = ()) -> int:
        self.lines.append(Line(text, None, parents, heading=True))
        return len(self.lines) - 1


@dataclass(frozen=True)
class Names:
    """How codes read: the vocabulary's label, and whether an undescribed code is shown at all."""

    vocabulary: Vocabulary
    unknown_codes: Literal["raw", "drop"]

    def name(self, code: str) -> str:
        return self.vocabulary.label(code)

    def keep(self, code: str) -> bool:
        return self.unknown_codes == "raw" or self.vocabulary.describe(code) is not None


UNDATED = dt.datetime.min
"""Place of lines with no date of their own that may still go over budget: older than anything, so first."""


def latest_by_code(events: Iterable[s.Event]) -> dict[str, s.Event]:
    latest: dict[str, s.Event] = {}
    for event in events:  # events are time-ordered, so the last one seen per code is the newest
        latest[event.code] = event
    return latest


def ts(time: dt.datetime | None) -> float:
    return time.timestamp() if time is not None and time != UNDATED else float("-inf")


def years(birth: dt.datetime, as_of: dt.datetime) -> int:
    return as_of.year - birth.year - ((as_of.month, as_of.day) < (birth.month, birth.day))


def ago(time: dt.datetime | None, as_of: dt.datetime) -> str:
    if time is None:
        return "undated"
    days = (as_of.date() - time.date()).days
    if days <= 0:
        return "today"
    if days == 1:
        return "1 day ago"
    return f"{days} days ago"


def tidy_case(text: str) -> str:
    """``FEMALE`` → ``Female``; mixed-case text is left alone."""
    return text.capitalize() if text.isupper() else text


@dataclass(frozen=True)
class Clock:
    """Dates as a record shows them: real, or shifted so that ``as_of`` reads as :data:`SHIFTED_NOW`."""

    as_of: dt.datetime
    shift: bool = False

    @property
    def now(self) -> dt.datetime:
        return SHIFTED_NOW if self.shift else self.as_of

    def show(self, time: dt.datetime) -> dt.datetime:
        return SHIFTED_NOW - (self.as_of - time) if self.shift else time
