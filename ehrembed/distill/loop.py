"""The training-loop skeleton distillation and LoRA tuning share: the batches of an epoch, and one step.

An epoch visits the rows in a permutation seeded by ``seed + epoch``, so a run (and a resumed run, which
starts at ``start_batch``) sees the same batches in the same order. A step clears the gradients, back-
propagates, clips the gradient norm when asked, and steps the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def epoch_batches(
    n: int, batch_size: int, *, seed: int, epoch: int, start_batch: int = 0
) -> Iterator[tuple[int, np.ndarray]]:
    """``(batch number, row indices)`` of one epoch, from ``start_batch`` on."""
    order = np.random.default_rng(seed + epoch).permutation(n)
    for b in range(start_batch, steps_per_epoch(n, batch_size)):
        yield b, order[b * batch_size : (b + 1) * batch_size]


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: Tensor, parameters: Iterable[nn.Parameter], max_grad_norm: float | None
) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(list(parameters), max_grad_norm)
    optimizer.step()
