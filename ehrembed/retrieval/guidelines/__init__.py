"""Guideline knowledge base: Markdown guidelines as passages, searched by BM25, dense vectors, or both.

Sources (:func:`discover_guidelines`): by default the 43 clinical guideline summaries of the
``open-medicine`` package with their registry metadata (id, title, DOI, year, organisation,
topics); or any folder of Markdown — ``*.md`` files (id = file stem, title = first heading), folders
of ``*.md`` files (id = folder name), optionally with a ``registry.json`` list of metadata.

Build (:func:`build_knowledge_base`): each guideline is cut into passages by headings under the
encoder's token window (:mod:`ehrembed.retrieval.chunking`), and each passage is embedded with
its guideline title and section on top. The retrieval model is a :class:`RetrievalModelConfig`:
``bge()`` for BGE folders (query instruction, CLS pooling, unit vectors) or ``minilm()`` for the
packaged all-MiniLM-L6-v2 (its own mean pooling, no instruction: it was not trained with one).

Search (:meth:`GuidelineKB.search`): ``bm25`` (``bm25s``, English stop words, Snowball stemming
when PyStemmer is installed), ``dense`` (cosine to the query vector) or ``hybrid``: reciprocal
rank fusion of the two rankings, ``sum(w / (k + rank))`` with k = 60.

On disk (:meth:`GuidelineKB.save`, written atomically, by default ``<EHREMBED_HOME>/guidelines/default``):
``chunks.parquet``, ``vectors.npy`` (float32, memory-mapped on load) and ``kb.json`` (model config
and encoder spec, chunking and BM25 settings, each source file's SHA-256, package versions). The
BM25 index is rebuilt on load (milliseconds for a few thousand passages).

One concept a module: ``sources``, ``model`` (the retrieval model), ``bm25``, ``fusion``, ``kb`` (the
knowledge base: build, search, save, load) and ``evaluate``; ``base`` holds what they share.
"""

from ehrembed.retrieval.guidelines.base import (
    BGE_QUERY_INSTRUCTION,
    KB_FORMAT_VERSION,
    MODES,
    OPEN_MEDICINE_PACKAGE,
    GuidelineError,
    Mode,
)
from ehrembed.retrieval.guidelines.bm25 import Bm25Index
from ehrembed.retrieval.guidelines.evaluate import LabelledQuery, evaluate, load_queries, query_ranks
from ehrembed.retrieval.guidelines.fusion import FusionConfig, reciprocal_rank_fusion
from ehrembed.retrieval.guidelines.kb import GuidelineKB, Passage, build_knowledge_base, default_kb_dir
from ehrembed.retrieval.guidelines.model import RetrievalModelConfig
from ehrembed.retrieval.guidelines.sources import GuidelineSource, discover_guidelines, open_medicine_folder

__all__ = [
    "BGE_QUERY_INSTRUCTION",
    "KB_FORMAT_VERSION",
    "MODES",
    "OPEN_MEDICINE_PACKAGE",
    "Bm25Index",
    "FusionConfig",
    "GuidelineError",
    "GuidelineKB",
    "GuidelineSource",
    "LabelledQuery",
    "Mode",
    "Passage",
    "RetrievalModelConfig",
    "build_knowledge_base",
    "default_kb_dir",
    "discover_guidelines",
    "evaluate",
    "load_queries",
    "open_medicine_folder",
    "query_ranks",
    "reciprocal_rank_fusion",
]
