"""Base retention: keep the student's own similarity structure while it learns the teacher's.

The student body's pooled embedding (before the Dense projection to the teacher's dimension) is
pulled towards what the frozen base model gave for the same record:
``weight_base * (MSE + (1 - cosine))`` with the base vectors computed once, before training. Without
it, a small student regressed on a weak teacher forgets what its pre-training knew (on Eunomia the
distilled MiniLM scored below the undistilled one); with it, the projection learns the teacher's
space on top of a body that stays close to the base.
"""

from __future__ import annotations

from torch import Tensor

from ehrembed.distill.losses.embedding import mse_and_cosine


def base_retention_loss(body: Tensor, base: Tensor) -> tuple[Tensor, dict[str, float]]:
    """``MSE + (1 - mean cosine)`` between the student body's embeddings and the frozen base's."""
    mse, cosine = mse_and_cosine(body, base)
    return mse + (1.0 - cosine), {"base_mse": float(mse.detach()), "base_cosine": float(cosine.detach())}


__all__ = ["base_retention_loss"]
