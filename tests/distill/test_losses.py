from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ehrembed.distill.losses import (
    ContrastiveLoss,
    EmbeddingLoss,
    LinearHead,
    SoftLabelLoss,
    embedding_loss,
    info_nce_loss,
    soft_label_loss,
)
from ehrembed.distill.losses.soft_label import head_probabilities


def test_embedding_loss_zero_on_match_and_weighted() -> None:
    t = torch.randn(5, 8)
    assert float(embedding_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(5, 8)
    mse = float(torch.mean((s - t) ** 2))
    cos = float(torch.nn.functional.cosine_similarity(s, t).mean())
    assert float(EmbeddingLoss(2.0, 0.5)(s, t)) == pytest.approx(2.0 * mse + 0.5 * (1 - cos), rel=1e-5)
    with pytest.raises(ValueError, match="Dense projection"):
        embedding_loss(torch.randn(5, 4), t)


def test_info_nce_prefers_aligned_pairs() -> None:
    t = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    aligned = float(info_nce_loss(t, t, temperature=0.05))
    shuffled = float(ContrastiveLoss(0.05)(t.roll(1, dims=0), t))
    assert aligned < shuffled
    assert aligned < math.log(8)


def test_soft_label_mix_and_missing_labels() -> None:
    logits = torch.tensor([[2.0], [-1.0], [0.5]])
    hard = torch.tensor([1.0, 0.0, float("nan")])
    soft = torch.tensor([0.8, 0.3, 0.6])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = 0.9 * bce(logits[:2, 0], hard[:2]) + 0.1 * bce(logits[:, 0], soft)
    assert float(soft_label_loss(logits, hard, soft)) == pytest.approx(float(expected), rel=1e-6)
    assert float(soft_label_loss(logits, None, soft)) == pytest.approx(float(bce(logits[:, 0], soft)), rel=1e-6)
    with pytest.raises(ValueError):
        soft_label_loss(logits)
    module = SoftLabelLoss(4, 1)
    loss = module(torch.randn(3, 4), hard, soft)
    loss.backward()
    assert module.head.linear.weight.grad is not None


def test_linear_head_json_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    head = LinearHead(6, 2)
    path = head.save_json(tmp_path / "head.json", input="x")
    again = LinearHead.load_json(path)
    x = torch.randn(4, 6)
    assert torch.allclose(head(x), again(x), atol=1e-6)
    np.testing.assert_allclose(head_probabilities(x.numpy(), path), torch.sigmoid(head(x)).detach().numpy(), atol=1e-5)
