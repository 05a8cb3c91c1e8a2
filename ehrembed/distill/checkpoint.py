"""Training checkpoints without pickles: safetensors for tensors, JSON for everything else.

Layout under a run's ``.checkpoints/`` folder::

    last/                      the newest checkpoint, replaced atomically (never half written)
        model.safetensors      student (+ soft-label head) weights, as ``safetensors.torch.save_model``
        optimizer.safetensors  AdamW moments, keyed ``{param_index}.{name}``
        rng.safetensors        torch CPU (and CUDA) generator states
        state.json             the run's TrainState (versioned: step, epoch, position in the epoch,
                               history, best so far, config, data fingerprint) and the optimizer's
                               param groups
    best-e{epoch:03d}/         weights of the best epoch so far (``state.json`` names the live one;
        model.safetensors      older ones are pruned after the next ``last/`` is in place)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from ehrembed.errors import InputError
from ehrembed.fsutil import atomic_dir

STATE_VERSION = 1
"""Version of ``state.json``'s layout (:class:`TrainState`); checkpoints written before it was recorded are 1."""


@dataclass
class TrainState:
    """Where a distillation run stands: written into every checkpoint (``state.json``), read back on resume.

    ``running`` holds the epoch's summed losses so far (``n`` rows, ``loss``, one key per loss term);
    ``history`` one :class:`~ehrembed.distill.train.EpochRecord` dict per finished epoch; ``initial`` /
    ``best_agreement`` :class:`~ehrembed.distill.train.Agreement` dicts; ``best_dir`` the folder of the
    best weights so far. A state of another ``version`` is refused rather than misread.
    """

    config: dict[str, Any]
    data_fingerprint: str
    n_train: int
    n_val: int
    initial: dict[str, float]
    best_score: float
    best_agreement: dict[str, float]
    best_dir: str
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    running: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    lr: float | None = None
    version: int = STATE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        version = int(data.get("version", 1))
        if version != STATE_VERSION:
            raise InputError(f"a checkpoint state of version {version}; this ehrembed reads version {STATE_VERSION}")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]  # fmt: skip
        if missing:
            raise InputError(f"the checkpoint state lacks {', '.join(missing)}; start the run again")
        return cls(**{k: v for k, v in data.items() if k in known})


LAST = "last"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"


def best_dir_name(epoch: int) -> str:
    return f"best-e{epoch:03d}"


def optimizer_to_safetensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into flat tensors and a JSON-able remainder."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_safetensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_to_safetensors`, loaded into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = tensor
    for pid, entry in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> Path:
    """Write ``folder/last`` atomically, then prune best-weight folders that ``state`` no longer names."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors, optimizer_meta = optimizer_to_safetensors(optimizer)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = cuda_state
    with atomic_dir(folder / LAST, overwrite=True) as tmp:
        save_model(model, str(tmp / MODEL_FILE))
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        save_file(rng, str(tmp / RNG_FILE))
        payload = {**state.to_dict(), "optimizer": optimizer_meta}
        (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    live = state.best_dir
    for old in folder.glob("best-e*"):
        if old.name != live:
            shutil.rmtree(old, ignore_errors=True)
    return folder / LAST


def save_best(folder: Path, model: nn.Module, epoch: int) -> str:
    """Write the best-so-far weights to ``folder/best-e{epoch}``; returns the folder name."""
    name = best_dir_name(epoch)
    with atomic_dir(folder / name, overwrite=True) as tmp:
        save_model(model, str(tmp / MODEL_FILE))
    return name


def has_checkpoint(folder: Path) -> bool:
    return (folder / LAST / STATE_FILE).is_file()


def _read_payload(folder: Path) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((folder / LAST / STATE_FILE).read_text())
    return payload


def read_state(folder: Path) -> TrainState:
    """The run state of ``folder/last`` (weights and optimizer untouched)."""
    return TrainState.from_dict(_read_payload(folder))


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore weights, optimizer and RNG from ``folder/last``; returns its run state."""
    last = folder / LAST
    payload = _read_payload(folder)
    state = TrainState.from_dict(payload)
    load_model(model, str(last / MODEL_FILE), device=str(next(model.parameters()).device))
    optimizer_from_safetensors(optimizer, load_file(str(last / OPTIMIZER_FILE)), payload["optimizer"])
    rng = load_file(str(last / RNG_FILE))
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        cuda = [rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    return state


def load_weights(model: nn.Module, folder: Path) -> None:
    """Load ``folder/model.safetensors`` (a best-weights folder) into ``model``."""
    load_model(model, str(folder / MODEL_FILE), device=str(next(model.parameters()).device))
