"""The finished run: its card (``distill.json``, the README model card) and its folder, swapped in atomically."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ehrembed.distill import checkpoint as ckpt
from ehrembed.distill.card import render_model_card
from ehrembed.distill.config import (
    CARD_FILE,
    HEAD_FILE,
    README_FILE,
    DistillConfig,
)
from ehrembed.distill.losses.soft_label import SoftLabelLoss
from ehrembed.fsutil import atomic_dir
from ehrembed.versions import package_versions

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def _output_dim(student: SentenceTransformer) -> int | None:
    getter = getattr(student, "get_embedding_dimension", None) or student.get_sentence_embedding_dimension
    dim = getter()
    return None if dim is None else int(dim)


def _card(
    student: SentenceTransformer,
    config: DistillConfig,
    state: ckpt.TrainState,
    teacher_info: dict[str, Any],
    fingerprint: str,
    *,
    n_train: int,
    n_val: int,
    labels: tuple[np.ndarray | None, np.ndarray | None],
    resumed_from: int | None,
) -> dict[str, Any]:
    hard, soft = labels
    losses: dict[str, Any] = {"mse": config.weight_mse, "1 - cosine": config.weight_cosine}
    if config.weight_contrastive > 0:
        losses["in-batch InfoNCE"] = config.weight_contrastive
        losses["temperature"] = config.temperature
    if config.weight_soft_label > 0:
        losses["soft label (alpha·BCE(hard) + (1-alpha)·BCE(teacher))"] = config.weight_soft_label
        losses["soft_alpha"] = config.soft_alpha
        labels_used = hard if hard is not None else soft
        losses["soft-label tasks"] = None if labels_used is None else int(labels_used.shape[1])
    teacher = {k: v for k, v in teacher_info.items() if v is not None}
    teacher.setdefault("name", None)
    return {
        "format": "ehrembed.distill/1",
        "teacher": teacher,
        "student": {
            "output_dim": _output_dim(student),
            "max_seq_length": student.max_seq_length,
            "modules": ", ".join(type(m).__name__ for m in student.children()),
            "parameters": sum(p.numel() for p in student.parameters()),
        },
        "data": {
            "train_records": n_train,
            "val_records": n_val,
            "data_fingerprint": fingerprint,
            "teacher_data_fingerprint": teacher_info.get("data_fingerprint"),
            "hard_labels": hard is not None,
            "soft_labels": soft is not None,
        },
        "losses": losses,
        "metrics": {
            "initial": state.initial,
            "final": state.best_agreement,
            "best_epoch": state.best_epoch,
            "monitor": config.monitor,
            "steps": state.step,
            "epochs_run": state.epoch,
            "stopped_early": state.stopped_early,
            "resumed_from_step": resumed_from,
        },
        "history": [{k: v for k, v in row.items() if k != "train_terms"} | row["train_terms"] for row in state.history],
        "config": config.to_dict(),
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write_final(
    out_dir: Path,
    checkpoints: Path,
    student: SentenceTransformer,
    soft_module: SoftLabelLoss | None,
    card: dict[str, Any],
    *,
    keep_checkpoints: bool,
) -> None:
    """Swap the finished model in atomically; checkpoints wait beside it and are then kept or dropped."""
    aside = out_dir.with_name(f".{out_dir.name}.checkpoints-{uuid.uuid4().hex[:8]}")
    os.replace(checkpoints, aside)
    try:
        with atomic_dir(out_dir, overwrite=True) as tmp:
            student.save(str(tmp), create_model_card=False)
            if soft_module is not None:
                soft_module.head.save_json(
                    tmp / HEAD_FILE,
                    input="sentence_embedding",
                    alpha=soft_module.alpha,
                    note="logits = x @ weight.T + bias over the student's output; probability = sigmoid(logits)",
                )
                card["soft_label_head"] = HEAD_FILE
            (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, default=str) + "\n")
            (tmp / README_FILE).write_text(render_model_card(card))
    except BaseException:
        out_dir.mkdir(parents=True, exist_ok=True)
        os.replace(aside, checkpoints)
        raise
    if keep_checkpoints:
        os.replace(aside, checkpoints)
    else:
        shutil.rmtree(aside, ignore_errors=True)
