"""Embedding distillation: regress the student's projected output onto the teacher vectors.

``weight_mse * MSE + weight_cosine * (1 - cosine)``. The MSE is the mean over every element (as in
sentence-transformers' ``MSELoss``), so with L2-normalised teacher vectors its scale is about
``1 / dim``; the cosine term is the mean over rows and is scale-free.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def mse_and_cosine(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Mean squared error over all elements, and mean row-wise cosine similarity."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student output {tuple(student.shape)} and teacher vectors {tuple(teacher.shape)} differ; "
            "the student needs a Dense projection to the teacher's dimension"
        )
    mse = F.mse_loss(student, teacher)
    cosine = F.cosine_similarity(student, teacher, dim=-1).mean()
    return mse, cosine


def embedding_loss(student: Tensor, teacher: Tensor, *, weight_mse: float = 1.0, weight_cosine: float = 1.0) -> Tensor:
    """``weight_mse * MSE(student, teacher) + weight_cosine * (1 - mean cosine)``."""
    mse, cosine = mse_and_cosine(student, teacher)
    return weight_mse * mse + weight_cosine * (1.0 - cosine)


class EmbeddingLoss(nn.Module):
    """Module form of :func:`embedding_loss`."""

    def __init__(self, weight_mse: float = 1.0, weight_cosine: float = 1.0) -> None:
        super().__init__()
        self.weight_mse = weight_mse
        self.weight_cosine = weight_cosine

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return embedding_loss(student, teacher, weight_mse=self.weight_mse, weight_cosine=self.weight_cosine)


__all__ = ["EmbeddingLoss", "embedding_loss", "mse_and_cosine"]
