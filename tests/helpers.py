"""Small helpers several test modules share (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from ehrembed.encoders.base import EncoderSpec, l2_normalize
from ehrembed.retrieval.chunking import clean_markdown
from ehrembed.store.db import make_engine

POSTGRES_URL = os.environ.get("EHREMBED_TEST_POSTGRES_URL")
"""A PostgreSQL server for the store tests (``.ci/run`` sets it when one answers)."""

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgres",
        id="postgres",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not POSTGRES_URL, reason="EHREMBED_TEST_POSTGRES_URL is not set"),
        ],
    ),
]
"""Fixture parameters: every store-backed test runs on SQLite and, when a server is set, on PostgreSQL."""


@contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """A fresh schema on the test server, dropped with everything in it afterwards."""
    assert POSTGRES_URL
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


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
