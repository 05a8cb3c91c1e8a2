"""``ehrembed pretrain``: fit a prognostic encoder on a dataset's train split (no task, no label).

Steps: sample prediction points from each train subject's timeline (:mod:`.points`); build their
count inputs, columns frozen here (:func:`~ehrembed.predict.features.count_features`, cut at each
point); choose targets by entropy (:mod:`.targets`) and compute each point's time to every target's
next occurrence, censored at the end of the record; then fit by ``method``:

- ``tte`` (default): the network with a piecewise-exponential time-to-event head over time bins
  taken from the quantiles of observed event times (MOTOR's objective);
- ``horizons``: the same network, one logit per target and horizon (30 / 180 / 365 days), censored
  cells masked;
- ``rrr`` / ``svd``: closed-form linear maps (:mod:`.linear`); ``untrained``: the network at its seeded
  initialisation. These are the controls the report puts beside the trained network.

A tenth of the train subjects (by a stable hash) is held back to stop training and choose the RRR
penalty; tuning and held-out subjects are never read. Training checkpoints each epoch (safetensors +
JSON, in ``.{out}.pretrain/`` beside the output); an interrupted run resumes there when its settings
and data are the same, and the folder is removed once the model is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.encoders.embeddings import PREDICTION_TIME
from ehrembed.fsutil import atomic_dir
from ehrembed.predict.features import count_features
from ehrembed.predict.labelers import outcome_codes
from ehrembed.predict.metrics import auroc
from ehrembed.predict.ontology import Ontology
from ehrembed.predict.prognosis.linear import rrr_projection, svd_projection
from ehrembed.predict.prognosis.losses import bin_exposure, event_bin, multi_horizon_bce, piecewise_exponential_nll
from ehrembed.predict.prognosis.model import (
    METHODS,
    NETWORK_METHODS,
    PrognosisError,
    PrognosisModel,
    PrognosisNet,
    build_net,
    input_scale,
    to_tensor,
    transform_inputs,
    unit_variance_scale,
)
from ehrembed.predict.prognosis.points import sample_points, stable_hash
from ehrembed.predict.prognosis.targets import TargetTimes, excluded_codes, select_targets, target_times
from ehrembed.predict.tasks import TaskError

Progress = Callable[[int, int], None]
Say = Callable[[str], None]

MIN_TRAIN_SUBJECTS = 20
"""Fewer train subjects with a prediction point than this: pretraining is refused with the numbers."""


@dataclass(frozen=True)
class PretrainConfig:
    """How a prognostic encoder is fitted; every field is written into the model's ``prognosis.json``."""

    method: str = "tte"
    dim: int = 256
    hidden: int = 512
    dropout: float = 0.1
    max_targets: int = 1000
    min_subjects: int = 10
    points_per_subject: int = 8
    time_bins: int = 8
    horizons_days: tuple[float, ...] = (30.0, 180.0, 365.0)
    epochs: int = 30
    patience: int = 3
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    validation_fraction: float = 0.1
    exclude_codes: tuple[str, ...] = ()
    readout: str = "pca"
    """A network's vector: ``pca`` (principal directions of its predicted log hazards) or ``bottleneck``."""
    standardize_targets: bool = False
    """RRR: each target column scaled to unit variance first, so rare targets weigh as much as common ones."""
    seed: int = 0
    name: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PrognosisError(f"unknown pretraining method {self.method!r}; choose one of {', '.join(METHODS)}")
        for key in ("dim", "hidden", "max_targets", "min_subjects", "points_per_subject", "time_bins", "epochs"):
            if getattr(self, key) < 1:
                raise PrognosisError(f"{key} must be at least 1, got {getattr(self, key)}")
        if not 0.0 < self.validation_fraction < 0.5:
            raise PrognosisError(f"validation_fraction must lie in (0, 0.5), got {self.validation_fraction}")
        if self.readout not in ("pca", "bottleneck"):
            raise PrognosisError(f"readout must be pca or bottleneck, got {self.readout!r}")
        if not self.horizons_days or any(h <= 0 for h in self.horizons_days):
            raise PrognosisError(f"horizons must be positive day counts, got {list(self.horizons_days)}")


@dataclass
class PretrainResult:
    folder: Path
    model: PrognosisModel
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Data:
    """What every method is fitted on: points, their inputs, targets and target times."""

    points: pl.DataFrame
    inputs: sp.csr_matrix
    columns: tuple[str, ...]
    scale: np.ndarray
    targets: list[dict[str, Any]]
    times: TargetTimes
    validation: np.ndarray  # bool per point
    fingerprint: str


def train_subjects(dataset: MedsDataset) -> list[int]:
    splits = dataset.splits()
    return splits.filter(pl.col(s.SPLIT) == s.Split.TRAIN.value).get_column(s.SUBJECT_ID).sort().to_list()


def _prepare(dataset: MedsDataset, config: PretrainConfig, ontology: Ontology, say: Say) -> _Data:
    subjects = train_subjects(dataset)
    points = sample_points(dataset, subjects, per_subject=config.points_per_subject, seed=config.seed)
    with_points = points.get_column(s.SUBJECT_ID).n_unique()
    if with_points < MIN_TRAIN_SUBJECTS:
        raise PrognosisError(
            f"pretraining needs at least {MIN_TRAIN_SUBJECTS} train subjects with a day of events before their "
            f"last one; dataset {dataset.name} has {len(subjects)} train subjects, {with_points} of them with one"
        )
    exclude = excluded_codes(config.exclude_codes, ontology) if config.exclude_codes else frozenset()
    chosen = select_targets(
        dataset,
        subjects,
        ontology=ontology,
        max_targets=config.max_targets,
        min_subjects=config.min_subjects,
        exclude=exclude,
    )
    if not chosen:
        raise PrognosisError(
            f"no code occurs in at least {config.min_subjects} of the {len(subjects)} train subjects of dataset "
            f"{dataset.name} (after exclusions): nothing to pretrain on; lower --min-subjects"
        )
    say(f"pretrain: {points.height:,} points from {with_points:,} train subjects, {len(chosen):,} targets")
    keys = points.select(s.SUBJECT_ID, PREDICTION_TIME)
    counts = count_features(dataset, keys, ontology=ontology, name="prognosis")
    assert counts.columns is not None
    held = stable_hash(
        points.get_column(s.SUBJECT_ID).to_numpy().astype(np.uint64), np.zeros(points.height, np.uint64), config.seed
    )
    validation = (held % np.uint64(10_000)).astype(np.float64) / 10_000 < config.validation_fraction
    matrix = sp.csr_matrix(counts.matrix)
    scale = input_scale(matrix[np.flatnonzero(~validation)])
    times = target_times(dataset, points, [t.code for t in chosen], ontology=ontology, exclude=exclude)
    digest = hashlib.sha256()
    digest.update(points.select(s.SUBJECT_ID, PREDICTION_TIME).hash_rows(seed=0).to_numpy().tobytes())
    digest.update(json.dumps([counts.columns, [t.code for t in chosen]]).encode())
    digest.update(np.ascontiguousarray(times.days).tobytes())
    return _Data(
        points=points,
        inputs=transform_inputs(matrix, scale),
        columns=counts.columns,
        scale=scale,
        targets=[t.to_dict() for t in chosen],
        times=times,
        validation=validation,
        fingerprint=digest.hexdigest()[:16],
    )


def time_bin_edges(times: TargetTimes, rows: np.ndarray, n_bins: int) -> list[float]:
    """Lower edges of the time bins (first 0): quantiles of the observed event times of ``rows``."""
    observed = times.days[rows][times.event[rows]]
    if observed.size == 0:
        return [0.0]
    qs = np.quantile(observed, np.linspace(0, 1, n_bins + 1)[1:-1])
    edges = [0.0]
    for q in qs:
        if q > edges[-1] + 1e-6:
            edges.append(float(q))
    return edges


def _initial_bias(method: str, times: TargetTimes, rows: np.ndarray, config: dict[str, Any]) -> torch.Tensor:
    """The head's bias at the targets' average hazard per bin (or log-odds per horizon): training starts
    from the base rates rather than from noise."""
    days, event = torch.from_numpy(times.days[rows]), torch.from_numpy(times.event[rows])
    if method == "horizons":
        h = torch.tensor(config["horizons_days"], dtype=days.dtype)
        label = (event.unsqueeze(-1) & (days.unsqueeze(-1) <= h)).float()
        known = (label > 0) | (days.unsqueeze(-1) >= h)
        rate = (label * known).sum(0) / known.sum(0).clamp(min=1)
        rate = rate.clamp(1e-4, 1 - 1e-4)
        return torch.log(rate / (1 - rate)).reshape(-1)
    edges = config["time_bins_days"]
    exposure = bin_exposure(days, edges).sum(0)
    hits = torch.zeros_like(exposure)
    bins = event_bin(days, edges)
    for b in range(len(edges)):
        hits[:, b] = ((bins == b) & event).sum(0).float()
    return torch.log((hits + 0.1) / (exposure + 1.0)).reshape(-1)


def _loss(
    method: str, out: torch.Tensor, days: torch.Tensor, event: torch.Tensor, config: dict[str, Any]
) -> torch.Tensor:
    if method == "horizons":
        return multi_horizon_bce(out, days, event, config["horizons_days"])
    return piecewise_exponential_nll(out, days, event, config["time_bins_days"])


def _evaluate(net: PrognosisNet, data: _Data, rows: np.ndarray, method: str, config: dict[str, Any]) -> float:
    net.eval()
    total, n = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(rows), 1024):
            part = rows[start : start + 1024]
            _z, out = net(to_tensor(data.inputs[part]))
            days = torch.from_numpy(data.times.days[part])
            event = torch.from_numpy(data.times.event[part])
            total += float(_loss(method, out, days, event, config)) * len(part)
            n += len(part)
    return total / max(n, 1)


def _save_checkpoint(
    folder: Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    with atomic_dir(folder / "last", overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / "model.safetensors"))
        moments: dict[str, torch.Tensor] = {}
        for i, values in optimizer.state_dict()["state"].items():
            for key, value in values.items():
                moments[f"{i}.{key}"] = torch.as_tensor(value).reshape(-1).clone() if key == "step" else value
        save_file(moments, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state) + "\n")


def _load_checkpoint(
    folder: Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer, fingerprint: str
) -> dict[str, Any] | None:
    state_file = folder / "last" / "state.json"
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    if state.get("fingerprint") != fingerprint:
        return None
    net.load_state_dict(load_file(str(folder / "last" / "model.safetensors")))
    flat = load_file(str(folder / "last" / "optimizer.safetensors"))
    groups = optimizer.state_dict()["param_groups"]
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        moments.setdefault(int(index), {})[name] = value.reshape(()) if name == "step" else value
    optimizer.load_state_dict({"state": moments, "param_groups": groups})
    return state


def _train_network(
    data: _Data,
    config: PretrainConfig,
    model_config: dict[str, Any],
    checkpoints: Path,
    say: Say,
    progress: Progress | None,
) -> tuple[PrognosisNet, dict[str, Any]]:
    torch.manual_seed(config.seed)
    fit_rows = np.flatnonzero(~data.validation)
    val_rows = np.flatnonzero(data.validation)
    net = build_net(model_config, len(data.columns), len(data.targets))
    with torch.no_grad():
        net.head.bias.copy_(_initial_bias(config.method, data.times, fit_rows, model_config))
    if config.method == "untrained":
        return net, {"trained": False}
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    fingerprint = hashlib.sha256(json.dumps([data.fingerprint, model_config], default=str).encode()).hexdigest()[:16]
    state = _load_checkpoint(checkpoints, net, optimizer, fingerprint)
    if state is not None:
        say(f"pretrain: resuming after epoch {state['epoch']} ({checkpoints})")
    else:
        state = {"fingerprint": fingerprint, "epoch": 0, "best": math.inf, "best_epoch": 0, "bad": 0, "history": []}
        state["initial_validation_loss"] = _evaluate(net, data, val_rows, config.method, model_config)
    best_file = checkpoints / "best.safetensors"
    steps_per_epoch = math.ceil(len(fit_rows) / config.batch_size)
    total = steps_per_epoch * config.epochs
    generator = np.random.default_rng(config.seed)
    orders = [generator.permutation(fit_rows) for _ in range(config.epochs)]
    while state["epoch"] < config.epochs and state["bad"] < config.patience:
        epoch = state["epoch"]
        net.train()
        order = orders[epoch]
        running = 0.0
        for step, start in enumerate(range(0, len(order), config.batch_size)):
            part = np.sort(order[start : start + config.batch_size])
            _z, out = net(to_tensor(data.inputs[part]))
            loss = _loss(
                config.method, out, torch.from_numpy(data.times.days[part]), torch.from_numpy(data.times.event[part]),
                model_config,
            )  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += float(loss.detach()) * len(part)
            if progress is not None:
                progress(epoch * steps_per_epoch + step + 1, total)
        val = _evaluate(net, data, val_rows, config.method, model_config)
        state["history"].append({"epoch": epoch + 1, "train_loss": running / len(order), "validation_loss": val})
        state["epoch"] = epoch + 1
        if val < state["best"] - 1e-5:
            state.update(best=val, best_epoch=epoch + 1, bad=0)
            checkpoints.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(best_file) + ".tmp")
            Path(str(best_file) + ".tmp").replace(best_file)
        else:
            state["bad"] += 1
        _save_checkpoint(checkpoints, net, optimizer, state)
        say(f"pretrain: epoch {epoch + 1}: train loss {running / len(order):.4f}, validation loss {val:.4f}")
    if best_file.is_file():
        net.load_state_dict(load_file(str(best_file)))
    if progress is not None:
        progress(total, total)
    figures = {
        "trained": True,
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "initial_validation_loss": state["initial_validation_loss"],
        "validation_loss": state["best"],
        "history": state["history"],
    }
    return net, figures


def readout_pca(model: PrognosisModel, inputs: sp.csr_matrix, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, basis ``(dim, n_targets)``): principal directions of the network's predicted log hazards on
    the fit rows (see :meth:`PrognosisModel.vectors_from_inputs`)."""
    hazards = np.concatenate(
        [model.log_cumulative_hazard(inputs[start : start + 1024]) for start in range(0, inputs.shape[0], 1024)]
    ).astype(np.float64)
    mean = hazards.mean(axis=0)
    rank = max(1, min(dim, min(hazards.shape) - 1))
    basis = np.linalg.svd(hazards - mean, full_matrices=False)[2][:rank]
    return mean.astype(np.float32), basis.astype(np.float32)


def validation_auroc(model: PrognosisModel, data: _Data, horizon_days: float = 365.0) -> float | None:
    """Mean AUROC over targets of the risk head's "occurs within the horizon" on the validation points
    (known cells only; targets with one class there are left out)."""
    if not model.has_risk_head:
        return None
    rows = np.flatnonzero(data.validation)
    if not len(rows):
        return None
    risk = model.risk_from_inputs(data.inputs[rows], horizon_days)
    label, known = TargetTimes(data.times.days[rows], data.times.event[rows]).occurred_within(horizon_days)
    values: list[float] = []
    for j in range(risk.shape[1]):
        mask = known[:, j]
        value = auroc(label[mask, j].astype(int), risk[mask, j])
        if value is not None:
            values.append(value)
    return float(np.mean(values)) if values else None


def model_card(model: PrognosisModel, dataset: MedsDataset) -> str:
    c = model.config
    figures = c.get("figures", {})
    lines = [
        f"# Prognostic encoder `{model.name}`",
        "",
        f"Pretrained by ehrembed on the train split of dataset `{dataset.name}` ({c['data']['train_subjects']:,} "
        f"subjects, {c['data']['points']:,} prediction points). No task or label was used.",
        "",
        f"- method: `{c['method']}`; vector: {c['dim']} dimensions; inputs: {len(model.columns):,} count columns",
        f"- targets: {len(model.targets):,} codes ranked by the entropy of their patient-level frequency",
        f"- excluded codes (and descendants): {', '.join(c['exclude_codes']) or 'none'}",
        f"- data fingerprint: `{c['data']['fingerprint']}`",
    ]
    if figures.get("validation_auroc_365d") is not None:
        lines.append(
            f"- validation mean AUROC over targets, occurrence within 365 days: {figures['validation_auroc_365d']:.3f}"
        )
    if figures.get("validation_loss") is not None:
        lines.append(
            f"- validation loss {figures['initial_validation_loss']:.4f} → {figures['validation_loss']:.4f} "
            f"(best epoch {figures['best_epoch']} of {figures['epochs_run']})"
        )
    lines += [
        "",
        "Use it with `ehrembed benchmark DATASET --encoders prognosis=THIS_FOLDER` or "
        "`ehrembed embed DATASET --encoder THIS_FOLDER`.",
        "",
    ]
    return "\n".join(lines)


def pretrain(
    dataset: MedsDataset,
    out: Path,
    config: PretrainConfig | None = None,
    *,
    ontology: Ontology | None = None,
    progress: Progress | None = None,
    say: Say = lambda _m: None,
    overwrite: bool = False,
) -> PretrainResult:
    """Fit a prognostic encoder on ``dataset``'s train split and write it to ``out`` (atomically; an existing
    ``out`` is refused before any work unless ``overwrite``)."""
    config = config or PretrainConfig()
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    ontology = ontology or Ontology.from_dataset(dataset)
    data = _prepare(dataset, config, ontology, say)
    fit_rows = np.flatnonzero(~data.validation)
    model_config: dict[str, Any] = {
        **dataclasses.asdict(config),
        "horizons_days": list(config.horizons_days),
        "exclude_codes": list(config.exclude_codes),
        "name": config.name or out.name,
    }
    model_config["bottleneck"] = config.dim  # the network's; "dim" becomes the vector's (a readout may be smaller)
    model_config["time_bins_days"] = time_bin_edges(data.times, fit_rows, config.time_bins)
    model_config["data"] = {
        "dataset": dataset.name,
        "train_subjects": int(data.points.get_column(s.SUBJECT_ID).n_unique()),
        "points": data.points.height,
        "validation_points": int(data.validation.sum()),
        "fingerprint": data.fingerprint,
    }
    figures: dict[str, Any] = {}
    model = PrognosisModel(config=model_config, columns=data.columns, targets=data.targets, scale=data.scale)
    if config.method in NETWORK_METHODS:
        checkpoints = out.with_name(f".{out.name}.pretrain")
        net, net_figures = _train_network(data, config, model_config, checkpoints, say, progress)
        figures |= net_figures
        model.net = net
        model_config["trained"] = bool(net_figures.get("trained"))
    elif config.method == "svd":
        model.projection = svd_projection(data.inputs[fit_rows], config.dim, config.seed)
    else:
        model.projection, rrr = rrr_projection(
            data.inputs,
            data.times,
            config.horizons_days,
            config.dim,
            validation=data.validation,
            standardize=config.standardize_targets,
            seed=config.seed,
        )
        figures["rrr"] = rrr
    if model.net is not None and config.readout == "pca":
        model.readout = readout_pca(model, data.inputs[fit_rows], config.dim)
        model_config["dim"] = int(model.readout[1].shape[0])
    if model.projection is not None:
        model_config["dim"] = int(model.projection.shape[1])
    model.output_scale = 1.0
    model.output_scale = unit_variance_scale(model.vectors_from_inputs(data.inputs[fit_rows]))
    figures["validation_auroc_365d"] = validation_auroc(model, data)
    figures["seconds"] = round(time.perf_counter() - started, 2)
    model_config["figures"] = figures
    model.save(out, card=model_card(model, dataset), overwrite=True)
    if config.method in NETWORK_METHODS:
        shutil.rmtree(out.with_name(f".{out.name}.pretrain"), ignore_errors=True)
    return PretrainResult(out, model, figures)


def exclusion_codes_for(tasks: Sequence[Any], ontology: Ontology) -> tuple[str, ...]:
    """The outcome codes of ``tasks`` (TaskSpecs) as recorded in the dataset, for ``--exclude-tasks``."""
    codes: set[str] = set()
    for task in tasks:
        try:
            codes |= set(outcome_codes(task, ontology))
        except TaskError:
            codes |= set(task.outcome_codes)
    return tuple(sorted(codes))
