"""Distil a teacher's vectors into a sentence-transformers student: a small, resumable torch loop.

The student (any ``SentenceTransformer`` whose output already has the teacher's dimension, e.g. a
BERT + pooling + Dense projection) regresses its ``sentence_embedding`` on teacher vectors of
serialized records with ``weight_mse * MSE + weight_cosine * (1 - cosine)``, plus optionally an
in-batch InfoNCE term (``weight_contrastive``), a CKD-EHR soft-label term (``weight_soft_label``:
a linear head on the student embedding learns ``soft_alpha * BCE(hard) + (1 - soft_alpha) *
BCE(teacher probabilities)``) and a base-retention term (``weight_base``: the body's pooled
embedding stays close to the frozen base's, :mod:`ehrembed.distill.losses.retention`).

Teacher agreement on held-out records (MSE, mean cosine, and overlap@10 of nearest-neighbour lists)
is measured before training and after every epoch; the best epoch by ``monitor`` is kept and
training stops after ``patience`` epochs without improvement. Pass held-out *patients* as
``val_texts`` / ``val_teacher``; the ``val_fraction`` fallback splits records at random.

Output layout (``out_dir``)::

    out_dir/                  a standard sentence-transformers folder (best epoch's weights):
        modules.json, config_sentence_transformers.json, model.safetensors, tokenizer..., 1_Pooling/, 2_Dense/
        README.md             model card: teacher, data fingerprint, losses, metrics, versions
        distill.json          the same as JSON
        soft_label_head.json  the soft-label head's coefficients, when that term was used
        .checkpoints/         only while training runs, after an interruption, or with keep_checkpoints

Checkpoints (see :mod:`ehrembed.distill.checkpoint`) go to ``out_dir/.checkpoints/`` every
``checkpoint_every_steps`` steps and at each epoch end. While a run is unfinished ``out_dir`` holds
nothing but ``.checkpoints/`` (no ``modules.json``, so it can't be mistaken for a model);
``distill(..., resume=True)`` continues from the last one. The final folder is built atomically;
after it is in place the checkpoints are deleted unless ``keep_checkpoints`` is set, in which case
they stay in the hidden ``.checkpoints/`` (sentence-transformers ignores it) so that a later
``resume=True`` with more ``epochs`` can extend the run (the linear schedule is then recomputed
over the new total, so the learning rate rises again from where the new schedule puts it).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ehrembed.distill import checkpoint as ckpt
from ehrembed.distill.agreement import (
    OVERLAP_K,
    _forward_parts,
    data_fingerprint,
    encode_body,
    encode_texts,
    evaluate_agreement,
    fit_projection,
    teacher_agreement,
)
from ehrembed.distill.config import (
    CARD_FILE,
    CHECKPOINTS,
    HEAD_FILE,
    README_FILE,
    RESUMABLE_FIELDS,
    Agreement,
    DistillConfig,
    DistillError,
    DistillEvent,
    DistillProgress,
    DistillResult,
    EpochRecord,
    rich_progress,
)
from ehrembed.distill.inputs import checked_inputs
from ehrembed.distill.loop import epoch_batches, optimizer_step, steps_per_epoch
from ehrembed.distill.losses.contrastive import info_nce_loss
from ehrembed.distill.losses.embedding import mse_and_cosine
from ehrembed.distill.losses.retention import base_retention_loss
from ehrembed.distill.losses.soft_label import SoftLabelLoss
from ehrembed.distill.output import _card, _write_final

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to zero at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _resolve_device(config: DistillConfig) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_portable(student: SentenceTransformer) -> None:
    for module in student.children():
        if type(module).__module__.startswith("ehrembed"):
            raise DistillError(
                f"student module {type(module).__name__} comes from ehrembed; the distilled folder must load "
                "with plain sentence-transformers, so use its standard modules"
            )


def _is_better(value: Agreement, best: float, config: DistillConfig) -> bool:
    if config.monitor == "mse":
        return value.mse < best - config.min_delta
    return _score(value, config) > best + config.min_delta


def _score(value: Agreement, config: DistillConfig) -> float:
    if config.monitor == "overlap":
        if value.overlap is None:
            raise DistillError("monitor='overlap' needs at least 2 validation records")
        return value.overlap
    return value.mse if config.monitor == "mse" else value.cosine


__all__ = [
    "CARD_FILE",
    "CHECKPOINTS",
    "HEAD_FILE",
    "OVERLAP_K",
    "README_FILE",
    "Agreement",
    "DistillConfig",
    "DistillError",
    "DistillEvent",
    "DistillProgress",
    "DistillResult",
    "EpochRecord",
    "data_fingerprint",
    "distill",
    "encode_body",
    "encode_texts",
    "evaluate_agreement",
    "fit_projection",
    "rich_progress",
    "teacher_agreement",
]


# --------------------------------------------------------------------------- main entry


def distill(
    student: SentenceTransformer,
    train_texts: Sequence[str],
    train_teacher: np.ndarray,
    val_texts: Sequence[str] | None,
    val_teacher: np.ndarray | None,
    out_dir: Path | str,
    config: DistillConfig = DistillConfig(),
    *,
    hard_labels: np.ndarray | None = None,
    soft_labels: np.ndarray | None = None,
    teacher_info: dict[str, Any] | None = None,
    progress: DistillProgress | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> DistillResult:
    """Train ``student`` (in place) towards the teacher vectors and save the best epoch to ``out_dir``.

    ``hard_labels`` / ``soft_labels`` (``(n_train,)`` or ``(n_train, tasks)``, NaN = missing) feed
    the soft-label term and are needed when ``config.weight_soft_label > 0``. ``teacher_info`` (name,
    spec_fingerprint, data_fingerprint, ...) goes into the model card. ``resume`` continues from
    ``out_dir/.checkpoints``; ``overwrite`` replaces an existing model or abandons old checkpoints.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    train_texts, train_teacher, val_texts, val_teacher, hard, soft = checked_inputs(
        train_texts, train_teacher, val_texts, val_teacher, hard_labels, soft_labels, config
    )
    _check_portable(student)

    fingerprint = data_fingerprint(train_texts, train_teacher, hard, soft, val_teacher)
    checkpoints = out_dir / CHECKPOINTS
    resuming = _prepare_out_dir(out_dir, checkpoints, resume=resume, overwrite=overwrite)

    device = _resolve_device(config)
    if config.max_tokens is not None:
        student.max_seq_length = config.max_tokens
    student.to(device)
    torch.manual_seed(config.seed)
    # Base-retention targets and the projection's initial fit come from the untrained student (the base),
    # before any resumed weights load.
    needs_base = config.weight_base > 0 or (config.init_projection and not resuming)
    base_body = encode_body(student, train_texts, batch_size=config.eval_batch_size) if needs_base else None
    if config.init_projection and not resuming and base_body is not None:
        fit_projection(student, base_body, train_teacher, ridge=config.ridge)
    base = base_body if config.weight_base > 0 else None

    labels = hard if hard is not None else soft
    tasks = 0 if labels is None else int(labels.shape[1])
    soft_module = (
        SoftLabelLoss(train_teacher.shape[1], tasks, alpha=config.soft_alpha).to(device)
        if config.weight_soft_label > 0
        else None
    )
    trainable = nn.ModuleDict({"student": student})
    if soft_module is not None:
        trainable["soft_label"] = soft_module
    optimizer = torch.optim.AdamW(
        [p for p in trainable.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )

    n_train = len(train_texts)
    per_epoch = steps_per_epoch(n_train, config.batch_size)
    total_steps = per_epoch * config.epochs
    warmup = int(config.warmup_ratio * total_steps)

    if resuming:
        state = _resume_state(checkpoints, trainable, optimizer, config, fingerprint)
        resumed_from: int | None = state.step
    else:
        initial = evaluate_agreement(student, val_texts, val_teacher, batch_size=config.eval_batch_size)
        best_dir = ckpt.save_best(checkpoints, trainable, 0)
        state = ckpt.TrainState(
            config=config.to_dict(),
            data_fingerprint=fingerprint,
            n_train=n_train,
            n_val=len(val_texts),
            initial=dataclasses.asdict(initial),
            best_score=_score(initial, config),
            best_agreement=dataclasses.asdict(initial),
            best_dir=best_dir,
        )
        resumed_from = None
        if progress:
            progress(DistillEvent("eval", 0, 0, total_steps, metrics=dict(state.initial)))
    if progress:
        progress(DistillEvent("start", state.epoch + 1, state.step, total_steps))

    def save_checkpoint() -> None:
        ckpt.save_checkpoint(checkpoints, trainable, optimizer, state)
        if progress:
            progress(DistillEvent("checkpoint", state.epoch + 1, state.step, total_steps))

    student.train()
    epoch_started = time.monotonic()
    while state.epoch < config.epochs:
        if config.patience is not None and state.bad_epochs >= config.patience:
            state.stopped_early = True
            break
        epoch = state.epoch
        running: dict[str, float] = state.running
        batches = epoch_batches(
            n_train, config.batch_size, seed=config.seed, epoch=epoch, start_batch=state.batch_in_epoch
        )
        for b, idx in batches:
            lr = config.lr * _lr_factor(state.step, total_steps, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, terms = _loss(student, soft_module, train_texts, train_teacher, hard, soft, base, idx, config, device)
            optimizer_step(optimizer, loss, trainable.parameters(), config.max_grad_norm)
            state.step += 1
            state.batch_in_epoch = b + 1
            running["n"] = running.get("n", 0.0) + len(idx)
            running["loss"] = running.get("loss", 0.0) + float(loss.detach()) * len(idx)
            for name, value in terms.items():
                running[name] = running.get(name, 0.0) + value * len(idx)
            state.running = running
            state.lr = lr
            every = config.checkpoint_every_steps
            if every and state.step % every == 0 and b + 1 < per_epoch:
                save_checkpoint()
            if progress:
                progress(DistillEvent("step", epoch + 1, state.step, total_steps, loss=float(loss.detach())))

        agreement = evaluate_agreement(student, val_texts, val_teacher, batch_size=config.eval_batch_size)
        _close_epoch(state, agreement, config, time.monotonic() - epoch_started, checkpoints, trainable)
        epoch_started = time.monotonic()
        if progress:
            progress(DistillEvent("eval", epoch + 1, state.step, total_steps, metrics=dataclasses.asdict(agreement)))
        save_checkpoint()

    # The best weights go into the student, then into the final folder.
    ckpt.load_weights(trainable, checkpoints / str(state.best_dir))
    student.eval()
    card = _card(
        student,
        config,
        state,
        teacher_info or {},
        fingerprint,
        n_train=n_train,
        n_val=len(val_texts),
        labels=(hard, soft),
        resumed_from=resumed_from,
    )
    _write_final(out_dir, checkpoints, student, soft_module, card, keep_checkpoints=config.keep_checkpoints)
    if progress:
        progress(DistillEvent("done", state.epoch, state.step, total_steps, metrics=card["metrics"]))
    return DistillResult(
        out_dir=out_dir,
        history=tuple(EpochRecord(**row) for row in state.history),
        best_epoch=state.best_epoch,
        initial=Agreement(**state.initial),
        final=Agreement(**state.best_agreement),
        steps=state.step,
        resumed_from_step=resumed_from,
        stopped_early=state.stopped_early,
        n_train=n_train,
        n_val=len(val_texts),
        seconds=time.monotonic() - started,
        card=card,
    )


def _close_epoch(
    state: ckpt.TrainState,
    agreement: Agreement,
    config: DistillConfig,
    seconds: float,
    checkpoints: Path,
    trainable: nn.Module,
) -> None:
    """Record the finished epoch in ``state`` (history, best epoch and its weights, epochs without gain)."""
    epoch, running = state.epoch, state.running
    count = max(running.get("n", 0.0), 1.0)
    record = EpochRecord(
        epoch=epoch + 1,
        step=state.step,
        train_loss=running.get("loss", 0.0) / count,
        train_terms={k: v / count for k, v in running.items() if k not in ("n", "loss")},
        val_mse=agreement.mse,
        val_cosine=agreement.cosine,
        val_overlap=agreement.overlap,
        lr=float(state.lr if state.lr is not None else config.lr),
        seconds=seconds,
    )
    state.history.append(dataclasses.asdict(record))
    if _is_better(agreement, state.best_score, config):
        state.best_epoch = epoch + 1
        state.best_score = _score(agreement, config)
        state.best_agreement = dataclasses.asdict(agreement)
        state.best_dir = ckpt.save_best(checkpoints, trainable, epoch + 1)
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1
    state.epoch, state.batch_in_epoch, state.running = epoch + 1, 0, {}


def _prepare_out_dir(out_dir: Path, checkpoints: Path, *, resume: bool, overwrite: bool) -> bool:
    """Decide between a fresh run and a resumed one; returns True when resuming."""
    if ckpt.has_checkpoint(checkpoints):
        if resume:
            return True
        if not overwrite:
            raise DistillError(
                f"{out_dir} holds checkpoints of an earlier run; pass resume=True to continue it "
                "or overwrite=True to start over"
            )
        shutil.rmtree(checkpoints)
    elif resume and (out_dir / "modules.json").exists() and not overwrite:
        raise DistillError(
            f"nothing to resume in {out_dir}: the run finished and its checkpoints were removed "
            "(set keep_checkpoints=True to extend runs later); pass overwrite=True to train afresh"
        )
    others = [p for p in out_dir.iterdir() if p.name != CHECKPOINTS] if out_dir.is_dir() else []
    if others and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
    if checkpoints.exists():
        shutil.rmtree(checkpoints)
    return False


def _resume_state(
    checkpoints: Path,
    trainable: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: DistillConfig,
    fingerprint: str,
) -> ckpt.TrainState:
    saved = ckpt.read_state(checkpoints)
    if saved.data_fingerprint != fingerprint:
        raise DistillError("the checkpoint was trained on other data (fingerprint differs); cannot resume")
    old = saved.config
    changed = sorted(k for k, v in config.to_dict().items() if k not in RESUMABLE_FIELDS and old.get(k) != v)
    if changed:
        raise DistillError(f"cannot resume with a changed recipe: {', '.join(changed)} differ from the checkpoint")
    try:
        state = ckpt.load_checkpoint(checkpoints, trainable, optimizer)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise DistillError(f"checkpoint in {checkpoints} does not fit this student: {exc}") from exc
    state.config = config.to_dict()
    return state


def _loss(
    student: SentenceTransformer,
    soft_module: SoftLabelLoss | None,
    texts: list[str],
    teacher: np.ndarray,
    hard: np.ndarray | None,
    soft: np.ndarray | None,
    base: np.ndarray | None,
    idx: np.ndarray,
    config: DistillConfig,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    emb, body = _forward_parts(student, [texts[i] for i in idx], device)
    target = torch.as_tensor(np.asarray(teacher[idx], dtype=np.float32), device=device)
    if emb.shape != target.shape:
        raise DistillError(
            f"student output {tuple(emb.shape)[1:]} vs teacher {tuple(target.shape)[1:]}: give the student a Dense "
            "projection to the teacher's dimension"
        )
    emb = emb.float()
    mse, cosine = mse_and_cosine(emb, target)
    loss = config.weight_mse * mse + config.weight_cosine * (1.0 - cosine)
    terms = {"mse": float(mse.detach()), "cosine": float(cosine.detach())}
    if config.weight_contrastive > 0:
        contrastive = info_nce_loss(emb, target, temperature=config.temperature)
        loss = loss + config.weight_contrastive * contrastive
        terms["contrastive"] = float(contrastive.detach())
    if soft_module is not None:

        def rows(arr: np.ndarray | None) -> torch.Tensor | None:
            return None if arr is None else torch.as_tensor(arr[idx], device=device)

        soft_term = soft_module(emb, rows(hard), rows(soft))
        loss = loss + config.weight_soft_label * soft_term
        terms["soft_label"] = float(soft_term.detach())
    if base is not None:
        retention, retention_terms = base_retention_loss(
            body.float(), torch.as_tensor(base[idx], dtype=torch.float32, device=device)
        )
        loss = loss + config.weight_base * retention
        terms.update(retention_terms)
    return loss, terms
