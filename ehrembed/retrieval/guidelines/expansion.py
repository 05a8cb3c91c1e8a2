"""Query expansion with clinical abbreviations and synonyms, from a table (data, not code).

The packaged table is ``retrieval/data/clinical_abbreviations.tsv``: ``TERM<TAB>EXPANSION[; EXPANSION...]``
per line, ``#`` comments. A term written with a capital letter matches only that exact spelling (``PE``,
``HE``: short capitals are ambiguous as words), a lower-case term matches in any case; either matches as
a whole token (not inside a longer word, nor next to ``/`` or ``-``). A term listed twice keeps every
expansion (``RA``: rheumatoid arthritis; room air): retrieval sees both readings rather than a guess.

``expand("afib w RVR")`` returns ``"afib w RVR (atrial fibrillation; with; rapid ventricular response ...)"``:
the query unchanged with the expansions of the terms it contains appended once each, in order of
appearance, so BM25 finds the words guidelines use and the dense model reads the long forms. The
table's SHA-256 is part of the knowledge base's fingerprint (:attr:`QueryExpander.digest`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ehrembed.retrieval.guidelines.base import GuidelineError

PACKAGED_TABLE = Path(__file__).parents[1] / "data" / "clinical_abbreviations.tsv"
_EDGE_BEFORE = r"(?<![\w/\-])"
_EDGE_AFTER = r"(?![\w/\-])"


def _pattern(terms: list[str], flags: int) -> re.Pattern[str] | None:
    if not terms:
        return None
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(f"{_EDGE_BEFORE}(?:{alternatives}){_EDGE_AFTER}", flags)


@dataclass(frozen=True)
class QueryExpander:
    """Expands queries with a term table; see the module docstring."""

    exact: dict[str, tuple[str, ...]]
    folded: dict[str, tuple[str, ...]]
    """Lower-case terms (matched in any case), keyed lower-case."""
    digest: str
    _patterns: tuple[re.Pattern[str] | None, re.Pattern[str] | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_patterns", (_pattern(list(self.exact), 0), _pattern(list(self.folded), re.IGNORECASE))
        )

    @classmethod
    def from_text(cls, text: str, where: str = "the table") -> QueryExpander:
        exact: dict[str, list[str]] = {}
        folded: dict[str, list[str]] = {}
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            term, sep, expansions = line.partition("\t")
            meanings = [e.strip() for e in expansions.split(";") if e.strip()]
            if not sep or not term.strip() or not meanings:
                raise GuidelineError(f"{where} line {n}: expected TERM<TAB>EXPANSION[; EXPANSION...], got {raw!r}")
            term = term.strip()
            target = folded if term == term.lower() else exact
            key = term.lower() if target is folded else term
            target.setdefault(key, [])
            target[key] += [m for m in meanings if m not in target[key]]
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return cls({k: tuple(v) for k, v in exact.items()}, {k: tuple(v) for k, v in folded.items()}, digest)

    @classmethod
    def load(cls, path: Path | str | None = None) -> QueryExpander:
        """The table at ``path`` (default: the packaged one)."""
        target = Path(path) if path is not None else PACKAGED_TABLE
        if not target.is_file():
            raise GuidelineError(f"abbreviation table {target} not found")
        return cls.from_text(target.read_text(encoding="utf-8"), str(target))

    def __len__(self) -> int:
        return len(self.exact) + len(self.folded)

    def expansions(self, query: str) -> list[str]:
        """The expansions of the terms in ``query``, in order of appearance, each once."""
        found: list[tuple[int, tuple[str, ...]]] = []
        exact, folded = self._patterns
        if exact is not None:
            found += [(m.start(), self.exact[m.group(0)]) for m in exact.finditer(query)]
        if folded is not None:
            found += [(m.start(), self.folded[m.group(0).lower()]) for m in folded.finditer(query)]
        out: list[str] = []
        for _, meanings in sorted(found, key=lambda item: item[0]):
            out += [m for m in meanings if m not in out]
        return out

    def expand(self, query: str) -> str:
        """``query`` with its terms' expansions appended in parentheses (unchanged when none match)."""
        extra = [e for e in self.expansions(query) if e.lower() not in query.lower()]
        return f"{query} ({'; '.join(extra)})" if extra else query


@cache
def packaged_expander() -> QueryExpander:
    return QueryExpander.load()
