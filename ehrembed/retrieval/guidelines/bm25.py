"""BM25 over passages (``bm25s``; English stop words; Snowball stemming when PyStemmer is installed)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_WORD = re.compile(r"(?u)\b\w\w+\b")


class Bm25Index:
    """``bm25s`` over passages, with English stop words and (when PyStemmer is installed) stemming."""

    def __init__(self, texts: Sequence[str], *, stemmer: str | None = "english", k1: float = 1.5, b: float = 0.75):
        import bm25s
        from bm25s.stopwords import STOPWORDS_EN

        self.stemmer_name = stemmer if stemmer and _stemmer(stemmer) is not None else None
        if stemmer and self.stemmer_name is None:
            log.warning("PyStemmer is not installed: BM25 runs without stemming (pip install PyStemmer)")
        self._stem = _stemmer(self.stemmer_name) if self.stemmer_name else None
        self._stop = frozenset(STOPWORDS_EN)
        self.k1, self.b = k1, b
        self.n = len(texts)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index([self.tokens(t) for t in texts], show_progress=False)

    def tokens(self, text: str) -> list[str]:
        words = [w for w in _WORD.findall(text.lower()) if w not in self._stop]
        return list(self._stem.stemWords(words)) if self._stem is not None else words

    def scores(self, query: str) -> np.ndarray:
        vocab = self.retriever.vocab_dict
        known = [t for t in self.tokens(query) if t in vocab]
        if not known:
            return np.zeros(self.n, dtype=np.float32)
        return np.asarray(self.retriever.get_scores(known), dtype=np.float32)


def _stemmer(name: str) -> Any:
    try:
        import Stemmer
    except ImportError:
        return None
    return Stemmer.Stemmer(name)
