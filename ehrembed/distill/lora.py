"""Task-tune the teacher with LoRA (peft) before distilling, then merge it back into a plain folder.

The teacher's backbone (``AutoModel``) gets LoRA adapters on its attention projections; a linear
head on the pooled (L2-normalised, like the teacher's vectors) embedding learns the task with BCE.
After training the adapters are merged (``merge_and_unload``) and the result is saved as an
ordinary Hugging Face folder (config, safetensors weights, tokenizer), atomically, so that
``TeacherEncoder.from_folder(out_dir)`` or ``AutoModel.from_pretrained(out_dir)`` loads it with no
peft involved. Beside the weights: ``task_head.json`` (the head as JSON coefficients; applied to
the tuned teacher's vectors it gives the soft labels for CKD-EHR distillation, see
:func:`ehrembed.distill.losses.soft_label.head_probabilities`) and ``lora_tune.json`` (run card).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrembed.distill.loop import epoch_batches, optimizer_step
from ehrembed.distill.losses.soft_label import LinearHead, soft_label_loss
from ehrembed.encoders.base import Pooling
from ehrembed.encoders.pooling import pool
from ehrembed.errors import InputError
from ehrembed.fsutil import atomic_dir
from ehrembed.versions import package_versions

HEAD_FILE = "task_head.json"
CARD_FILE = "lora_tune.json"

# Attention projections by architecture family, most specific first.
TARGET_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("q_proj", "v_proj"),  # Llama, Qwen2, Mistral, SmolLM
    ("query", "value"),  # BERT
    ("qkv_proj",),  # Phi-3
    ("c_attn",),  # GPT-2
    ("query_key_value",),  # GPT-NeoX, Falcon
)
# sentence-transformers files a teacher folder may carry; copied over so the tuned folder keeps them.
_CARRY_OVER = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")

LoraProgress = Callable[[int, int, float], None]
"""Called with (epoch, step, batch loss) after every optimizer step."""


class LoraError(InputError):
    """LoRA tuning cannot run as asked."""


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters + linear task head, trained with BCE on the pooled teacher embedding."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    """``None``: the first family of :data:`TARGET_CANDIDATES` present in the model."""
    epochs: int = 3
    batch_size: int = 8
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_tokens: int = 512
    normalize: bool = True
    """Head input L2-normalised, as the teacher's vectors are."""
    gradient_checkpointing: bool = False
    dtype: str | None = None
    """``None``: float32 on CPU, bfloat16 (else float16) on CUDA, as the teacher encoder picks."""
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.r < 1 or self.epochs < 1 or self.batch_size < 1 or self.max_tokens < 1:
            raise LoraError("r, epochs, batch_size and max_tokens must be at least 1")
        if self.lr <= 0 or self.head_lr <= 0:
            raise LoraError("learning rates must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def find_target_modules(model: nn.Module) -> tuple[str, ...]:
    """The attention projection names to adapt, from :data:`TARGET_CANDIDATES`."""
    leaves = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    for family in TARGET_CANDIDATES:
        if all(name in leaves for name in family):
            return family
    raise LoraError(
        f"no known attention projections among the model's linear layers ({', '.join(sorted(leaves)[:12])}...); "
        "set LoraConfig.target_modules"
    )


def _label_matrix(labels: np.ndarray | Sequence[float], n: int) -> np.ndarray:
    arr = np.asarray(labels, dtype=np.float32)
    arr = arr.reshape(-1, 1) if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[0] != n:
        raise LoraError(f"{n} texts but labels of shape {np.asarray(labels).shape}")
    finite = arr[~np.isnan(arr)]
    if finite.size == 0 or finite.min() < 0 or finite.max() > 1:
        raise LoraError("labels must be 0/1 (or probabilities in [0, 1]); NaN marks a missing label")
    return arr


def lora_tune_teacher(
    teacher_folder: Path | str,
    texts: Sequence[str],
    labels: np.ndarray | Sequence[float],
    out_dir: Path | str,
    config: LoraConfig = LoraConfig(),
    *,
    pooling: Pooling = "last",
    instruction: str | None = None,
    progress: LoraProgress | None = None,
    overwrite: bool = False,
) -> Path:
    """LoRA-tune the teacher in ``teacher_folder`` on ``(texts, labels)`` and save the merged model to ``out_dir``.

    ``texts`` are serialized records. Inputs are built by :class:`~ehrembed.encoders.teacher.TeacherEncoder`
    exactly as when encoding: with ``instruction`` the GTE-Qwen2 style ``Instruct: {instruction}\\nQuery:\\n{record}``,
    only the record cut at ``max_tokens``, and with ``mean`` pooling the instruction left out of the
    average (LLM2Vec style). ``labels`` is ``(n,)`` or ``(n, tasks)``. Returns ``out_dir``.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from ehrembed.encoders.base import EncoderError
    from ehrembed.encoders.teacher import TeacherEncoder

    teacher_folder = Path(teacher_folder)
    out_dir = Path(out_dir)
    if not (teacher_folder / "config.json").is_file():
        raise LoraError(f"{teacher_folder} is not a Hugging Face model folder (no config.json)")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
    texts = list(texts)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise LoraError("texts must be non-empty strings")
    y = _label_matrix(labels, len(texts))

    started = time.monotonic()
    torch.manual_seed(config.seed)
    # The teacher encoder loads the model and prepares inputs exactly as at encoding time: instruction
    # template, record-only truncation, record mask for mean pooling, position ids from the mask.
    try:
        teacher = TeacherEncoder.from_folder(
            teacher_folder, pooling=pooling, max_tokens=config.max_tokens, device=config.device, dtype=config.dtype
        )
        items = teacher.prepare(texts, teacher.prefix(instruction))
    except EncoderError as exc:
        raise LoraError(str(exc)) from exc
    base, device = teacher.model, teacher.device
    if config.gradient_checkpointing:
        base.gradient_checkpointing_enable()
    targets = config.target_modules or find_target_modules(base)
    peft_config = PeftLoraConfig(
        r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=list(targets), bias="none"
    )
    with warnings.catch_warnings():  # peft still asks transformers 5 the deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        model = get_peft_model(base, peft_config)
    head = LinearHead(teacher.spec.dim, y.shape[1]).to(device)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in model.parameters() if p.requires_grad], "lr": config.lr},
            {"params": list(head.parameters()), "lr": config.head_lr},
        ],
        weight_decay=config.weight_decay,
    )

    def logits_for(idx: Sequence[int]) -> Tensor:
        batch = teacher.batch([items[i] for i in idx])
        record_mask = batch.pop("record_mask").to(device)
        inputs = {k: v.to(device) for k, v in batch.items()}
        states = model(**inputs).last_hidden_state.float()
        pooled = pool(states, inputs["attention_mask"], pooling, record_mask=record_mask if pooling == "mean" else None)
        if config.normalize:
            pooled = F.normalize(pooled, dim=-1)
        out: Tensor = head(pooled)
        return out

    @torch.no_grad()
    def full_loss() -> float:
        model.eval()
        total = 0.0
        for i in range(0, len(texts), config.batch_size):
            target = torch.as_tensor(y[i : i + config.batch_size], device=device)
            idx = range(i, min(i + config.batch_size, len(texts)))
            total += float(soft_label_loss(logits_for(idx), target)) * len(target)
        model.train()
        return total / len(texts)

    initial_loss = full_loss()
    history: list[dict[str, float]] = []
    step = 0
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for epoch in range(config.epochs):
        running, seen = 0.0, 0
        for _b, idx in epoch_batches(len(texts), config.batch_size, seed=config.seed, epoch=epoch):
            loss = soft_label_loss(logits_for(idx.tolist()), torch.as_tensor(y[idx], device=device))
            optimizer_step(optimizer, loss, params, config.max_grad_norm)
            step += 1
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            if progress:
                progress(epoch + 1, step, float(loss.detach()))
        history.append({"epoch": epoch + 1, "step": step, "train_loss": running / max(seen, 1)})
    final_loss = full_loss()

    model.eval()
    merged: Any = model.merge_and_unload()
    card = {
        "format": "ehrembed.lora_tune/1",
        "teacher_folder": str(teacher_folder),
        "pooling": pooling,
        "instruction": instruction,
        "target_modules": list(targets),
        "config": config.to_dict(),
        "records": len(texts),
        "tasks": int(y.shape[1]),
        "positives": [int(np.nansum(y[:, j] >= 0.5)) for j in range(y.shape[1])],
        "initial_loss": initial_loss,
        "final_loss": final_loss,
        "history": history,
        "steps": step,
        "seconds": time.monotonic() - started,
        "versions": package_versions(),
        "head": HEAD_FILE,
    }
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        merged.save_pretrained(tmp)
        teacher.tokenizer.save_pretrained(tmp)
        for name in _CARRY_OVER:
            if (teacher_folder / name).is_file() and not (tmp / name).exists():
                shutil.copy2(teacher_folder / name, tmp / name)
        for folder in teacher_folder.glob("[0-9]*_*"):
            if folder.is_dir() and not (tmp / folder.name).exists():
                shutil.copytree(folder, tmp / folder.name)
        head.save_json(tmp / HEAD_FILE, input="teacher vector" if config.normalize else "pooled hidden state")
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return out_dir
