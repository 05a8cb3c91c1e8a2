"""Small helpers several test modules share (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ehrembed.encoders.base import EncoderSpec, l2_normalize
from ehrembed.retrieval.chunking import clean_markdown


class HashEncoder:
    """Hashed bag of words, L2-normalised: a fast dense encoder whose similarity is word overlap.

    It keeps the texts it saw in ``seen`` so tests can check what was (not) encoded.
    """

    def __init__(self, dim: int = 256, max_tokens: int = 128) -> None:
        self.spec = EncoderSpec(
            name="hash", kind="student", model_path="/nowhere", revision="0", pooling="mean", dim=dim,
            max_tokens=max_tokens,
        )  # fmt: skip
        self.seen: list[str] = []

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def encode(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        self.seen.extend(texts)
        out = np.zeros((len(texts), self.spec.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in clean_markdown(text).lower().split():
                out[row, zlib.crc32(word.strip(".,:;()").encode()) % self.spec.dim] += 1.0
        return l2_normalize(out + 1e-6)
