"""Pooling: one vector per sequence from a model's hidden states, correct under left or right padding.

- ``last``: the hidden state of the last real (non-padding) token, as GTE-Qwen2 pools a causal LM,
  whose last token is the only one that has attended to the whole input.
- ``mean``: the average over real tokens, or over ``record_mask`` only (LLM2Vec style: the record's
  tokens, not the instruction's).
- ``cls``: the first real token (BERT's ``[CLS]``); found from the mask, so left padding works too.

Positions come from the attention mask, never from the padding side, so one function serves
tokenizers that pad left (common for decoder LLMs) and right.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ehrembed.encoders.base import Pooling


def pool(hidden: Tensor, attention_mask: Tensor, how: Pooling, *, record_mask: Tensor | None = None) -> Tensor:
    """``(b, t, h)`` hidden states and a ``(b, t)`` 0/1 mask to ``(b, h)`` vectors, by ``how``.

    ``record_mask`` (``mean`` only) limits the average to the positions where it is 1 (and the
    attention mask is 1). Padding positions are never read, even if they hold NaN. A row with no
    position to pool raises ``ValueError``. The result has ``hidden``'s dtype; means are summed in
    float32.
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and attention_mask {tuple(attention_mask.shape)} do not match")
    batch, steps = attention_mask.shape
    mask = attention_mask.to(device=hidden.device).bool()
    if how in ("last", "cls"):
        positions = torch.arange(steps, device=hidden.device).expand(batch, steps)
        if how == "last":
            index = torch.where(mask, positions, -1).amax(dim=1)
        else:
            index = torch.where(mask, positions, steps).amin(dim=1)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("a sequence has no non-padding token to pool")
        return hidden[torch.arange(batch, device=hidden.device), index]
    if how == "mean":
        keep = mask
        if record_mask is not None:
            if record_mask.shape != mask.shape:
                raise ValueError(f"record_mask {tuple(record_mask.shape)} does not match {tuple(mask.shape)}")
            keep = mask & record_mask.to(device=hidden.device).bool()
        counts = keep.sum(dim=1, keepdim=True)
        if bool((counts == 0).any()):
            raise ValueError("a sequence has no token to average (empty record after masking)")
        summed = torch.where(keep.unsqueeze(-1), hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
        return (summed.sum(dim=1, dtype=torch.float32) / counts.to(torch.float32)).to(hidden.dtype)
    raise ValueError(f"unknown pooling {how!r}; use last, mean or cls")
