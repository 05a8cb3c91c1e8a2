"""The Encoder protocol and EncoderSpec: what every vector producer promises and records.

An encoder turns texts into float32 ``(n, dim)`` arrays. Its ``EncoderSpec`` says exactly which
model and settings made a vector (model path, revision, pooling, dim, token budget,
normalisation, instruction template); it is saved beside every output and its ``fingerprint``
enters every cache key, so vectors from different encoders can never be mixed up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ehrembed.errors import InputError

Pooling = Literal["last", "mean", "cls", "none"]
"""How token states become one vector; ``none`` for encoders that read no text (the prognostic encoder)."""
EncoderKind = Literal["teacher", "student", "onnx", "prognosis"]

INSTRUCTION_SLOT = "{instruction}"
GTE_INSTRUCTION_TEMPLATE = "Instruct: {instruction}\nQuery:\n"
"""GTE-Qwen2 style: the task instruction, then the record after ``Query:``."""


class EncoderError(InputError):
    """An encoder cannot be built or used as asked (missing model, bad input, dim mismatch)."""


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that determines an encoder's vectors (and nothing that doesn't)."""

    name: str
    kind: EncoderKind
    model_path: str
    revision: str
    pooling: Pooling
    dim: int
    max_tokens: int
    normalize: bool = True
    instruction_template: str | None = None
    dtype: str = "float32"

    def fingerprint(self) -> str:
        """Short stable hash of every field except ``model_path`` (moving a folder keeps the cache).

        ``revision`` is a content hash of the weights, so the model itself is still pinned.
        """
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "model_path"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def takes_instruction(self) -> bool:
        """Whether the template has an ``{instruction}`` slot (a fixed prompt has none)."""
        return self.instruction_template is not None and INSTRUCTION_SLOT in self.instruction_template

    def format(self, text: str, instruction: str | None) -> str:
        """The model input for a record: the template (its ``{instruction}`` slot filled) + text.

        A template without a slot is a fixed prompt, always prepended; with a slot and no
        instruction the record goes alone.
        """
        template = self.instruction_template
        if template is None:
            return text
        if INSTRUCTION_SLOT not in template:
            return template + text
        if instruction is None:
            return text
        return template.replace(INSTRUCTION_SLOT, instruction) + text


Progress = Callable[[int], None]
"""Called with the number of texts just finished."""


@runtime_checkable
class Encoder(Protocol):
    """Texts in, float32 ``(n, spec.dim)`` vectors out (L2-normalised when ``spec.normalize``)."""

    spec: EncoderSpec

    def encode(
        self,
        texts: Sequence[str],
        *,
        instruction: str | None = None,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model would see it (special tokens excluded)."""
        ...


def check_texts(texts: Sequence[str], ids: Sequence[object] | None = None) -> None:
    """Reject empty texts, naming the record, before any model work starts."""
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            which = ids[i] if ids is not None else i
            raise EncoderError(f"record {which} has empty text; nothing to encode")


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def encode_by_length(
    spec: EncoderSpec,
    texts: Sequence[str],
    *,
    instruction: str | None,
    batch_size: int,
    progress: Progress | None,
    count_tokens: Callable[[list[str]], list[int]],
    special_tokens: int,
    batch_vectors: Callable[[list[str]], np.ndarray],
) -> tuple[np.ndarray, int]:
    """The encoders' shared loop: format, count, batch longest first, restore input order, normalise.

    Returns ``(n, spec.dim)`` float32 vectors in input order and how many inputs exceeded the window.
    """
    check_texts(texts)
    if not texts:
        return np.zeros((0, spec.dim), dtype=np.float32), 0
    if batch_size < 1:
        raise EncoderError(f"batch_size must be >= 1, got {batch_size}")
    inputs = [spec.format(t, instruction) for t in texts]
    counts = count_tokens(inputs)
    truncated = sum(c > spec.max_tokens - special_tokens for c in counts)
    order = np.argsort([-c for c in counts], kind="stable")
    out = np.empty((len(inputs), spec.dim), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = batch_vectors([inputs[i] for i in idx])
        if progress is not None:
            progress(len(idx))
    return (l2_normalize(out) if spec.normalize else out), truncated
