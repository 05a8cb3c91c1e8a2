"""A patient as text, as of a time, within a token budget.

Four layouts (../shared/DESIGN.md section 4):

- ``markdown`` (:mod:`.markdown`): the reference's Markdown — title and current time (optionally
  shifted to 2024-01-01), demographics, 24 fixed body-metric / vital-sign / lab concepts (synonyms
  merged, implausible values dropped, ``No recent data`` when absent), the visit list, general
  events, then each visit newest first with its conditions, medications, procedures and
  measurements (last values per code).
- ``list`` (:mod:`.lists`): the reference's final format — one line per unique code, most recent
  first, ``description (unit): value``; no title, headings or dates.
- ``list_dated`` (:mod:`.lists`): the earlier list — title, current time and demographics, then one
  line per unique code with its age and flags.
- ``markdown_compact`` (:mod:`.compact`): the Markdown before it was aligned with the reference —
  recent values of whichever numeric codes the patient has, one value per code in visits; shorter,
  so it measured better in a 192-token window on a lab-heavy cohort.

Only events at or before ``as_of`` are read. Over budget, the oldest content goes first, whole
lines at a time (:mod:`.fit`). An optional :class:`Appendix` (e.g. guideline passages,
:mod:`ehrembed.retrieval.augment`) adds a closing section computed from the same cut events; with
a budget it gets ``share`` of the tokens, the record is fitted into the rest. How measurements
read (concepts, units, reference ranges, flags, number formatting) lives in
:mod:`ehrembed.ehr.measurements`.
"""

from .base import FORMATS, SHIFTED_NOW, Appendix, Format, Serialized, SerializeError, SerializerConfig
from .serializer import FORMAT_VERSION, Serializer

EMBED_FORMAT: Format = "list"
"""The layout records are embedded in by default: the reference's list. On Eunomia's tuning split it gave the
MiniLM student a logistic-head AUROC of 0.877 at k=all against 0.743 for Markdown (0.598 vs 0.533 at k=1);
Markdown stays the layout for reading (``ehrembed serialize``, the record endpoint)."""

__all__ = [
    "EMBED_FORMAT",
    "FORMATS",
    "FORMAT_VERSION",
    "SHIFTED_NOW",
    "Appendix",
    "Format",
    "SerializeError",
    "Serialized",
    "Serializer",
    "SerializerConfig",
]
