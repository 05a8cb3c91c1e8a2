"""Training checkpoints without pickles: safetensors for tensors, JSON for everything else.

Layout under a run's ``.checkpoints/`` folder::

    last/                      the newest checkpoint, replaced atomically (never half written)
        model.safetensors      student (+ soft-label head) weights, as ``safetensors.torch.save_model``
        optimizer.safetensors  AdamW moments, keyed ``{param_index}.{name}``
        rng.safetensors        torch CPU (and CUDA) generator states
        state.json             step, epoch, position in the epoch, history, best so far, config,
                               data fingerprint, optimizer param groups
    best-e{epoch:03d}/         weights of the best epoch so far (``state.json`` names the live one;
        model.safetensors      older ones are pruned after the next ``last/`` is in place)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from ehrembed.fsutil import atomic_dir

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


def save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
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
        payload = {**state, "optimizer": optimizer_meta}
        (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    live = state.get("best_dir")
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


def read_state(folder: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((folder / LAST / STATE_FILE).read_text())
    return state


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from ``folder/last``; returns its state (without optimizer meta)."""
    last = folder / LAST
    state = read_state(folder)
    load_model(model, str(last / MODEL_FILE), device=str(next(model.parameters()).device))
    optimizer_from_safetensors(optimizer, load_file(str(last / OPTIMIZER_FILE)), state.pop("optimizer"))
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
