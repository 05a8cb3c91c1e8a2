"""Distillation fixtures: a tiny student (from the shared tiny BERT in ``tests/conftest.py``) and a
synthetic teacher that is a fixed random nonlinear function of bag-of-words (so it can be learnt)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TEACHER_DIM = 16
WORDS = [
    "diabetes", "glucose", "high", "creatinine", "kidney", "chronic", "hypertension", "essential",
    "metformin", "lisinopril", "tablet", "oral", "inpatient", "visit", "outpatient", "female",
    "male", "age", "years", "normal", "serum", "plasma", "conditions", "medications",
]  # fmt: skip


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(n)]


def synthetic_teacher(texts: list[str], dim: int = TEACHER_DIM, seed: int = 1) -> np.ndarray:
    """Unit vectors ``normalize(tanh(bow @ W1) @ W2)``: fixed, random, nonlinear, learnable from the words."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(len(WORDS), 32))
    w2 = rng.normal(size=(32, dim))
    bow = np.array([[text.split().count(w) for w in WORDS] for text in texts], dtype=np.float64)
    out = np.tanh(bow @ w1 / 2.0) @ w2
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def build_student(bert_dir: Path, out_dim: int = TEACHER_DIM) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    torch.manual_seed(0)
    modules = [
        Transformer(str(bert_dir), max_seq_length=64),
        Pooling(32, "mean"),
        Dense(32, out_dim, activation_function=torch.nn.Identity()),
    ]
    return SentenceTransformer(modules=modules, device="cpu")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a loaded 2-core machine OpenMP spinning made them 20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def toy_data() -> dict[str, Any]:
    texts = make_texts(64)
    teacher = synthetic_teacher(texts)
    return {
        "train_texts": texts[:48],
        "train_teacher": teacher[:48],
        "val_texts": texts[48:],
        "val_teacher": teacher[48:],
    }


@pytest.fixture()
def student(tiny_bert_dir: Path) -> Any:
    return build_student(tiny_bert_dir)
