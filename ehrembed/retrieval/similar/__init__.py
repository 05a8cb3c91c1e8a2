"""Similar-patient search: the nearest patients to a subject (or to a record text) in a VectorIndex.

A query is a subject in the index (by default its latest row; ``as_of`` picks another row, or,
with an encoder, embeds the record as of that time), or an inline record text embedded with the
index's encoder. The query patient never appears among its own neighbours, and each neighbour is
one patient (its best-scoring row).

Filters (split, sex, age at the neighbour's prediction time, codes recorded at or before it) are
applied after the vector search: the search over-fetches, filters, and widens until ``k``
patients pass or the index is exhausted. Per-subject attributes (split, sex, birth) are read from
the MEDS dataset once per :class:`SimilarPatients`.

Each neighbour comes with a short explanation: the conditions, medications and procedures it
shares with the query patient, described through the dataset's :class:`Vocabulary`, counting only
events at or before each patient's own as-of time (no leakage from either record's future). For a
text query, the neighbour's codes whose descriptions appear in the text count as shared.

Modules: ``filters`` (filters and per-subject attributes), ``results`` (neighbours and
explanations), ``search`` (:class:`SimilarPatients`, :func:`find_similar`).
"""

from ehrembed.retrieval.similar.filters import (
    EXPLAINED_DOMAINS,
    SEXES,
    SimilarError,
    SimilarFilters,
    SubjectAttributes,
    ages_at,
)
from ehrembed.retrieval.similar.results import Explanation, Neighbor, SharedCode, SimilarQuery, SimilarResult
from ehrembed.retrieval.similar.search import SimilarPatients, find_similar

__all__ = [
    "EXPLAINED_DOMAINS",
    "SEXES",
    "Explanation",
    "Neighbor",
    "SharedCode",
    "SimilarError",
    "SimilarFilters",
    "SimilarPatients",
    "SimilarQuery",
    "SimilarResult",
    "SubjectAttributes",
    "ages_at",
    "find_similar",
]
