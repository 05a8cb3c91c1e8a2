"""What a search returns: neighbours with their scores, attributes and what their records share."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from ehrembed.retrieval.similar.filters import SimilarFilters


@dataclass(frozen=True)
class SharedCode:
    """A code both records hold, with its description and domain."""

    code: str
    description: str
    domain: str


def _shared(code: SharedCode) -> dict[str, str]:
    return {"code": code.code, "description": code.description, "domain": code.domain}


@dataclass(frozen=True)
class Explanation:
    """What a neighbour shares with the query: up to a few codes per domain and the totals.

    Codes are listed rarest first (fewest patients in the dataset have them), so the telling
    ones (heart failure) come before the ones nearly everybody shares (a check-up visit).
    """

    conditions: tuple[SharedCode, ...] = ()
    medications: tuple[SharedCode, ...] = ()
    procedures: tuple[SharedCode, ...] = ()
    n_conditions: int = 0
    n_medications: int = 0
    n_procedures: int = 0

    @property
    def summary(self) -> str:
        """One line, e.g. ``conditions: Essential hypertension · Type 2 diabetes | medications: metformin``."""
        parts = []
        for label, items, total in (
            ("conditions", self.conditions, self.n_conditions),
            ("medications", self.medications, self.n_medications),
            ("procedures", self.procedures, self.n_procedures),
        ):
            if items:
                more = f" (+{total - len(items)} more)" if total > len(items) else ""
                parts.append(f"{label}: {' · '.join(item.description for item in items)}{more}")
        return " | ".join(parts) if parts else "no shared conditions, medications or procedures"

    def brief(self, limit: int = 3) -> str:
        """The first ``limit`` shared items (conditions, then medications, then procedures) and a count of the rest."""
        items = [*self.conditions, *self.medications, *self.procedures][:limit]
        total = self.n_conditions + self.n_medications + self.n_procedures
        if not items:
            return "-"
        more = f" (+{total - len(items)})" if total > len(items) else ""
        return " · ".join(item.description for item in items) + more


@dataclass(frozen=True)
class Neighbor:
    """One similar patient: its index row, similarity score and attributes at its prediction time."""

    rank: int
    subject_id: int
    prediction_time: dt.datetime | None
    score: float
    index_id: int
    split: str | None
    sex: str | None
    age: float | None
    explanation: Explanation


@dataclass(frozen=True)
class SimilarQuery:
    """What was searched for: a subject's row (id, as-of time) or an inline text."""

    subject_id: int | None
    as_of: dt.datetime | None
    index_id: int | None
    from_text: bool = False


@dataclass(frozen=True)
class SimilarResult:
    query: SimilarQuery
    k: int
    filters: SimilarFilters
    neighbors: tuple[Neighbor, ...]
    candidates_scanned: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for neighbor, original in zip(data["neighbors"], self.neighbors, strict=True):
            neighbor["explanation"]["summary"] = original.explanation.summary
        return data

    def neighbors_json(self) -> list[dict[str, Any]]:
        """The neighbours as JSON-ready dicts (times as ISO strings), built directly: the API's hot path."""
        out = []
        for n in self.neighbors:
            e = n.explanation
            out.append(
                {
                    "rank": n.rank,
                    "subject_id": n.subject_id,
                    "prediction_time": n.prediction_time.isoformat() if n.prediction_time else None,
                    "score": n.score,
                    "split": n.split,
                    "sex": n.sex,
                    "age": n.age,
                    "explanation": {
                        "conditions": [_shared(c) for c in e.conditions],
                        "medications": [_shared(c) for c in e.medications],
                        "procedures": [_shared(c) for c in e.procedures],
                        "n_conditions": e.n_conditions,
                        "n_medications": e.n_medications,
                        "n_procedures": e.n_procedures,
                        "summary": e.summary,
                    },
                }
            )
        return out
