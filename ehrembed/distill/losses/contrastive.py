"""In-batch contrastive alignment (InfoNCE): student_i should be closer to teacher_i than to any
other teacher vector in the batch.

Logits are cosine similarities divided by ``temperature``; the loss is the cross-entropy of each
student row against the teacher rows, the matching row being the positive. This is the
feature-level "contrastive alignment" term: it teaches the student the teacher's neighbourhood
structure, not just its coordinates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def info_nce_loss(student: Tensor, teacher: Tensor, *, temperature: float = 0.05) -> Tensor:
    """Cross-entropy of ``cos(student_i, teacher_j) / temperature`` with ``j == i`` as the target."""
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} shapes differ")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = F.normalize(student, dim=-1) @ F.normalize(teacher, dim=-1).T / temperature
    targets = torch.arange(student.shape[0], device=student.device)
    return F.cross_entropy(logits, targets)


class ContrastiveLoss(nn.Module):
    """Module form of :func:`info_nce_loss`."""

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return info_nce_loss(student, teacher, temperature=self.temperature)
