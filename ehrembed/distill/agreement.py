"""The student's forward pass, and how far its vectors agree with the teacher's (MSE, cosine, overlap@10)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ehrembed.distill.retention import overlap_at_k

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
from ehrembed.distill.config import Agreement, DistillError

# --------------------------------------------------------------------------- helpers


def _features(student: SentenceTransformer, texts: Sequence[str], device: torch.device) -> dict[str, Any]:
    prepare = getattr(student, "preprocess", None) or student.tokenize
    features = prepare(list(texts))
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}


def _forward(student: SentenceTransformer, texts: Sequence[str], device: torch.device) -> torch.Tensor:
    out: torch.Tensor = student(_features(student, texts, device))["sentence_embedding"]
    return out


def _forward_parts(
    student: SentenceTransformer, texts: Sequence[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's output and its body's pooled embedding (the first ``sentence_embedding``, before
    any Dense projection or normalisation)."""
    features = _features(student, texts, device)
    body: torch.Tensor | None = None
    for module in student:
        features = module(features)
        if body is None and "sentence_embedding" in features:
            body = features["sentence_embedding"]
    if body is None:
        raise DistillError("the student produced no sentence_embedding")
    return features["sentence_embedding"], body


def encode_body(student: SentenceTransformer, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """The body's pooled embeddings for ``texts`` (float32, eval mode): the base-retention targets."""
    return _encode_eval(student, texts, batch_size, lambda batch, device: _forward_parts(student, batch, device)[1])


def encode_texts(student: SentenceTransformer, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """Student output (unnormalised ``sentence_embedding``) for ``texts`` as float32, in eval mode."""
    return _encode_eval(student, texts, batch_size, lambda batch, device: _forward(student, batch, device))


@torch.no_grad()
def _encode_eval(
    student: SentenceTransformer,
    texts: Sequence[str],
    batch_size: int,
    forward: Callable[[Sequence[str], torch.device], torch.Tensor],
) -> np.ndarray:
    was_training = student.training
    student.eval()
    device = next(student.parameters()).device
    try:
        chunks = [
            forward(texts[i : i + batch_size], device).float().cpu().numpy() for i in range(0, len(texts), batch_size)
        ]
    finally:
        student.train(was_training)
    return np.concatenate(chunks).astype(np.float32)


def fit_projection(student: SentenceTransformer, body: np.ndarray, teacher: np.ndarray, *, ridge: float) -> bool:
    """Set the student's first Dense module to the ridge regression of ``teacher`` on ``body`` (with bias).

    Returns False (and changes nothing) when the student has no Dense module of the right shape.
    """
    dense = next((m for m in student if type(m).__name__ == "Dense"), None)
    linear = getattr(dense, "linear", None)
    if not isinstance(linear, nn.Linear) or linear.in_features != body.shape[1]:
        return False
    if linear.out_features != teacher.shape[1]:
        return False
    x = body.astype(np.float64)
    y = np.asarray(teacher, dtype=np.float64)
    mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mean_x, y - mean_y
    gram = xc.T @ xc
    penalty = ridge * max(float(np.trace(gram)) / gram.shape[0], 1e-12)
    weights = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), xc.T @ yc)  # (in, out)
    bias = mean_y - mean_x @ weights
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weights.T, dtype=linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))
    return True


def teacher_agreement(student_vectors: np.ndarray, teacher: np.ndarray) -> Agreement:
    """Per-element MSE and mean row cosine between student outputs and teacher vectors."""
    if student_vectors.shape != teacher.shape:
        raise DistillError(
            f"student output has shape {student_vectors.shape} but the teacher vectors {teacher.shape}; "
            "give the student a Dense projection to the teacher's dimension "
            "(ehrembed.encoders.student.build_student_for_distillation does this)"
        )
    s = student_vectors.astype(np.float64)
    t = np.asarray(teacher, dtype=np.float64)
    mse = float(np.mean((s - t) ** 2))
    denom = np.maximum(np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1), 1e-12)
    cosine = float(np.mean(np.sum(s * t, axis=1) / denom))
    k = min(OVERLAP_K, len(t) - 1)
    overlap = float(overlap_at_k(t, s, k).mean()) if k >= 1 else None
    return Agreement(mse=mse, cosine=cosine, overlap=overlap)


OVERLAP_K = 10
"""Neighbours compared by the overlap agreement (fewer when the validation set is smaller)."""


def evaluate_agreement(
    student: SentenceTransformer, texts: Sequence[str], teacher: np.ndarray, *, batch_size: int = 64
) -> Agreement:
    """Encode ``texts`` with the student and compare with ``teacher``."""
    return teacher_agreement(encode_texts(student, texts, batch_size=batch_size), teacher)


def data_fingerprint(texts: Sequence[str], vectors: np.ndarray, *extra: np.ndarray | None) -> str:
    """Short SHA-256 of texts, teacher vectors and any label arrays (order matters)."""
    digest = hashlib.sha256()
    digest.update(f"{len(texts)}\0".encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    for array in (vectors, *extra):
        if array is None:
            digest.update(b"none\0")
            continue
        arr = np.ascontiguousarray(array, dtype=np.float32)
        digest.update(f"{arr.shape}\0".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()[:16]
