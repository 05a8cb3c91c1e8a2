"""Soft-label distillation (CKD-EHR style): a linear head on the student embedding learns from a
mix of hard labels and the teacher head's probabilities.

``alpha * BCE(logits, hard) + (1 - alpha) * BCE(logits, teacher_probabilities)``, default
``alpha = 0.9``. Labels are ``(n,)`` for one task or ``(n, tasks)``; NaN marks a missing label and
is left out of its term. With only hard or only soft labels the loss is that term alone.

The head is saved as JSON coefficients (``weight``, ``bias``), never as a pickle, so any tool can
apply it: ``sigmoid(x @ weight.T + bias)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrembed.fsutil import atomic_write_text

DEFAULT_ALPHA = 0.9


def _masked_bce(logits: Tensor, targets: Tensor) -> Tensor:
    mask = ~torch.isnan(targets)
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[mask], targets[mask])


def soft_label_loss(
    logits: Tensor, hard: Tensor | None = None, soft: Tensor | None = None, *, alpha: float = DEFAULT_ALPHA
) -> Tensor:
    """``alpha * BCE(hard) + (1 - alpha) * BCE(soft)`` on head logits; NaN targets are skipped."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if hard is None and soft is None:
        raise ValueError("soft-label loss needs hard labels, teacher probabilities, or both")
    terms: list[Tensor] = []
    for target, weight in ((hard, alpha), (soft, 1.0 - alpha)):
        if target is None:
            continue
        target = target.reshape(logits.shape).to(logits.dtype)
        term = _masked_bce(logits, target)
        terms.append(term if hard is None or soft is None else weight * term)
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


class LinearHead(nn.Module):
    """``tasks`` logistic outputs over a ``dim``-wide embedding; JSON round trip."""

    def __init__(self, dim: int, tasks: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, tasks)

    @property
    def dim(self) -> int:
        return int(self.linear.in_features)

    @property
    def tasks(self) -> int:
        return int(self.linear.out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(n, tasks)``."""
        return self.linear(x)

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        return {
            "kind": "linear_logistic",
            "dim": self.dim,
            "tasks": self.tasks,
            "weight": self.linear.weight.detach().cpu().double().tolist(),
            "bias": self.linear.bias.detach().cpu().double().tolist(),
            **extra,
        }

    def save_json(self, path: Path, **extra: Any) -> Path:
        atomic_write_text(Path(path), json.dumps(self.to_dict(**extra), indent=2) + "\n")
        return Path(path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearHead:
        weight = torch.tensor(data["weight"], dtype=torch.float32)
        head = cls(int(weight.shape[1]), int(weight.shape[0]))
        with torch.no_grad():
            head.linear.weight.copy_(weight)
            head.linear.bias.copy_(torch.tensor(data["bias"], dtype=torch.float32))
        return head

    @classmethod
    def load_json(cls, path: Path) -> LinearHead:
        return cls.from_dict(json.loads(Path(path).read_text()))


def head_probabilities(vectors: np.ndarray, head: dict[str, Any] | Path) -> np.ndarray:
    """``sigmoid(vectors @ weight.T + bias)`` from a saved JSON head, ``(n, tasks)`` float32, in numpy."""
    data = json.loads(Path(head).read_text()) if isinstance(head, Path) else head
    weight = np.asarray(data["weight"], dtype=np.float64)
    bias = np.asarray(data["bias"], dtype=np.float64)
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"vectors {x.shape} do not fit a head over {weight.shape[1]} dimensions")
    return (1.0 / (1.0 + np.exp(-(x @ weight.T + bias)))).astype(np.float32)


class SoftLabelLoss(nn.Module):
    """A :class:`LinearHead` and the hard/soft BCE mix, as one module (the head's parameters train)."""

    def __init__(self, dim: int, tasks: int = 1, alpha: float = DEFAULT_ALPHA) -> None:
        super().__init__()
        self.head = LinearHead(dim, tasks)
        self.alpha = alpha

    def forward(self, embeddings: Tensor, hard: Tensor | None = None, soft: Tensor | None = None) -> Tensor:
        return soft_label_loss(self.head(embeddings), hard, soft, alpha=self.alpha)
