"""Distillation losses, one per file: embedding regression, in-batch contrastive, soft labels."""

from ehrembed.distill.losses.contrastive import ContrastiveLoss, info_nce_loss
from ehrembed.distill.losses.embedding import EmbeddingLoss, embedding_loss
from ehrembed.distill.losses.soft_label import LinearHead, SoftLabelLoss, soft_label_loss

__all__ = [
    "ContrastiveLoss",
    "EmbeddingLoss",
    "LinearHead",
    "SoftLabelLoss",
    "embedding_loss",
    "info_nce_loss",
    "soft_label_loss",
]
