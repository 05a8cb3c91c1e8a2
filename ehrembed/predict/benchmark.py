"""The few-shot benchmark: every (task, encoder, head, k, replicate) cell, scored on the held-out split.

For each task the labels are split by patient (the dataset's train / tuning / held_out splits).
Each encoder's features are looked up per label; for every head and replicate the k-shot training
sample (:mod:`ehrembed.predict.fewshot`) fits the head, the k-shot tuning sample picks its
hyperparameters, and the whole held-out split is scored (AUROC, AUPRC, Brier with patient-level
bootstrap CIs). ``k="all"`` runs once (replicate 0): it has no sampling to repeat.

Cells that cannot be run are not errors: they go to the ``missing`` table with the reason (too
few positives for k, one class in a split, no features for the labels), and the benchmark carries
on with the rest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.encoders.embeddings import PREDICTION_TIME
from ehrembed.errors import InputError
from ehrembed.predict.compare import HeldOut, HeldOutPredictions, neighbour_lift
from ehrembed.predict.features import Features
from ehrembed.predict.fewshot import ALL, EHRSHOT_KS, KValue, replicate_orders, take_k
from ehrembed.predict.heads import HEAD_NAMES, HeadError, make_head
from ehrembed.predict.labelers import LabelSet
from ehrembed.predict.metrics import score

RESULT_SCHEMA: dict[str, Any] = {
    "task": pl.String,
    "group": pl.String,
    "encoder": pl.String,
    "head": pl.String,
    "k": pl.String,
    "replicate": pl.Int64,
    "auroc": pl.Float64,
    "auprc": pl.Float64,
    "brier": pl.Float64,
    "auroc_lo": pl.Float64,
    "auroc_hi": pl.Float64,
    "auprc_lo": pl.Float64,
    "auprc_hi": pl.Float64,
    "brier_lo": pl.Float64,
    "brier_hi": pl.Float64,
    "n_train": pl.Int64,
    "n_tuning": pl.Int64,
    "n_held_out": pl.Int64,
    "n_held_out_positive": pl.Int64,
    "params": pl.String,
    "fit_seconds": pl.Float64,
}
MISSING_SCHEMA: dict[str, Any] = {
    "task": pl.String,
    "encoder": pl.String,
    "head": pl.String,
    "k": pl.String,
    "replicate": pl.Int64,
    "reason": pl.String,
}
DENSE_ONLY_HEADS = frozenset({"knn"})
ZERO_SHOT = "zero-shot"
"""Head name of the ``k=0`` cells: a prognostic model's own risk of the task's outcome, no label used."""
NEIGHBOURS = 10
_LABEL = "__label"

Progress = Callable[[int, int], None]

EncoderFeatures = Features | Mapping[str, Features]
"""An encoder's features: one matrix for every task, or one per task name (instruction-tuned encoders)."""


def features_for_task(features: EncoderFeatures, task: str) -> Features | None:
    """The features an encoder offers for ``task`` (None: none were made for it)."""
    return features.get(task) if isinstance(features, Mapping) else features


def _is_dense(features: EncoderFeatures) -> bool:
    if isinstance(features, Mapping):
        return all(f.dense for f in features.values())
    return features.dense


@dataclass(frozen=True)
class BenchmarkConfig:
    """Which cells to run. ``n_bootstrap`` patient resamples give each cell's 95% CIs."""

    ks: tuple[KValue, ...] = EHRSHOT_KS
    replicates: int = 5
    heads: tuple[str, ...] = HEAD_NAMES
    seed: int = 0
    n_bootstrap: int = 200

    def __post_init__(self) -> None:
        if self.replicates < 1:
            raise InputError(f"replicates must be at least 1, got {self.replicates}")
        unknown = [h for h in self.heads if h not in HEAD_NAMES]
        if unknown:
            raise InputError(f"unknown head {unknown[0]!r}; choose from {', '.join(HEAD_NAMES)}")
        if not self.ks:
            raise InputError("no k values given")


NEIGHBOUR_SCHEMA: dict[str, Any] = {
    "task": pl.String,
    "encoder": pl.String,
    "queries": pl.Int64,
    "k": pl.Int64,
    "neighbour_positive_rate": pl.Float64,
    "base_rate": pl.Float64,
    "lift": pl.Float64,
}


@dataclass
class BenchmarkResult:
    """Tidy results (one row per scored cell), the cells that could not run, per-task label counts, the
    held-out predictions (in memory, for paired comparisons) and the neighbour outcome lift per dense encoder."""

    results: pl.DataFrame
    missing: pl.DataFrame
    tasks: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    predictions: HeldOutPredictions = field(default_factory=HeldOutPredictions)
    neighbours: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=NEIGHBOUR_SCHEMA))
    n_bootstrap: int = 0


@dataclass(frozen=True)
class _SplitRows:
    """One task's labels in one split, for one encoder: feature positions, labels, patients."""

    positions: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    labels: np.ndarray
    """Each row's index in the task's label frame (pairs rows across encoders)."""

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> tuple[int, int]:
        positives = int(self.y.sum())
        return positives, len(self.y) - positives


def _split_rows(frame: pl.DataFrame, feats: Features, split: str) -> _SplitRows:
    part = frame.filter(pl.col(s.SPLIT) == split)
    positions = feats.positions(part.get_column(s.SUBJECT_ID).to_numpy(), part.get_column(PREDICTION_TIME).to_numpy())
    keep = positions >= 0
    return _SplitRows(
        positions[keep],
        part.get_column("value").to_numpy().astype(np.int64)[keep],
        part.get_column(s.SUBJECT_ID).to_numpy()[keep],
        part.get_column(_LABEL).to_numpy()[keep],
    )


def _cells(config: BenchmarkConfig, heads: Sequence[str]) -> int:
    return len(heads) * sum(1 if k == ALL else config.replicates for k in config.ks)


def _heads_for(config: BenchmarkConfig, feats: EncoderFeatures) -> list[str]:
    return [h for h in config.heads if _is_dense(feats) or h not in DENSE_ONLY_HEADS]


def _run_encoder(
    task_name: str,
    group: str,
    encoder: str,
    frame: pl.DataFrame,
    encoder_features: EncoderFeatures,
    config: BenchmarkConfig,
    results: list[dict[str, Any]],
    missing: list[dict[str, Any]],
    tick: Callable[[], None],
    predictions: HeldOutPredictions,
    neighbours: list[dict[str, Any]],
    zero_shot: Features | None = None,
) -> str | None:
    """Every cell of one (task, encoder); returns why none could run, or None."""
    heads = _heads_for(config, encoder_features)
    feats = features_for_task(encoder_features, task_name)
    if feats is None:
        feats = Features(encoder, frame.select(s.SUBJECT_ID, PREDICTION_TIME).clear(), np.zeros((0, 1), np.float32))
    train = _split_rows(frame, feats, s.Split.TRAIN.value)
    tuning = _split_rows(frame, feats, s.Split.TUNING.value)
    held_out = _split_rows(frame, feats, s.Split.HELD_OUT.value)
    held_pos, held_neg = held_out.counts()
    train_pos, train_neg = train.counts()
    reason = None
    if len(train) + len(tuning) + len(held_out) == 0:
        reason = f"no {encoder} features for any of the task's {frame.height} labels"
    elif held_pos == 0 or held_neg == 0:
        reason = f"held_out split has one class only ({held_pos} positives, {held_neg} negatives)"
    elif train_pos == 0 or train_neg == 0:
        reason = f"train split has one class only ({train_pos} positives, {train_neg} negatives)"
    if reason is not None:
        for name in heads:
            missing.append(
                {"task": task_name, "encoder": encoder, "head": name, "k": None, "replicate": None, "reason": reason}
            )
        for _ in range(_cells(config, heads)):
            tick()
        return reason
    X_held = feats.take(held_out.positions)
    predictions.held_out[(task_name, encoder)] = HeldOut(held_out.labels, held_out.y, held_out.groups)
    if feats.dense:
        lift = neighbour_lift(feats.take(train.positions), train.y, X_held, held_out.y, k=NEIGHBOURS)
        neighbours.append({"task": task_name, "encoder": encoder, **lift})
    if zero_shot is not None:
        p = np.asarray(zero_shot.take(held_out.positions), dtype=np.float64)[:, 0]
        _record(results, predictions, config, held_out, p, _cell(task_name, encoder, ZERO_SHOT, "0", 0),
                group, n_train=0, n_tuning=0, params="{}", fit_seconds=0.0)  # fmt: skip
    train_orders = replicate_orders(train.y, train.groups, replicates=config.replicates, seed=config.seed)
    tuning_orders = replicate_orders(tuning.y, tuning.groups, replicates=config.replicates, seed=config.seed + 1)
    for head_name in heads:
        for k in config.ks:
            for replicate in range(1 if k == ALL else config.replicates):
                cell = _cell(task_name, encoder, head_name, str(k), replicate)
                rows = take_k(train_orders[replicate], k)
                if rows is None:
                    few = f"train split has {train_pos} positives and {train_neg} negatives, fewer than k={k}"
                    missing.append({**cell, "reason": few})
                    tick()
                    continue
                tune_rows = take_k(tuning_orders[replicate], k)
                if tune_rows is None:
                    tune_rows = np.arange(len(tuning))
                X_val = feats.take(tuning.positions[tune_rows]) if len(tune_rows) else None
                y_val = tuning.y[tune_rows] if len(tune_rows) else None
                fit_started = time.perf_counter()
                try:
                    model = make_head(head_name)
                    model.fit(feats.take(train.positions[rows]), train.y[rows], X_val, y_val)
                    p = model.predict_proba(X_held)[:, 1]
                except HeadError as exc:
                    missing.append({**cell, "reason": str(exc)})
                    tick()
                    continue
                fit_seconds = time.perf_counter() - fit_started
                _record(
                    results, predictions, config, held_out, p, cell, group,
                    n_train=len(rows), n_tuning=len(tune_rows),
                    params=json.dumps(model.params_, sort_keys=True, default=str), fit_seconds=fit_seconds,
                )  # fmt: skip
                tick()
    return None


def _cell(task: str, encoder: str, head: str, k: str, replicate: int) -> dict[str, Any]:
    return {"task": task, "encoder": encoder, "head": head, "k": k, "replicate": replicate}


def _record(
    results: list[dict[str, Any]],
    predictions: HeldOutPredictions,
    config: BenchmarkConfig,
    held_out: _SplitRows,
    p: np.ndarray,
    cell: dict[str, Any],
    group: str,
    *,
    n_train: int,
    n_tuning: int,
    params: str,
    fit_seconds: float,
) -> None:
    """Score one cell's held-out probabilities (patient-bootstrap CIs) and keep them for the comparisons."""
    predictions.add(cell["task"], cell["encoder"], cell["head"], cell["k"], p)
    scores = score(held_out.y, p, held_out.groups, n_bootstrap=config.n_bootstrap, seed=config.seed + cell["replicate"])
    metrics = {name: v for name, v in scores.as_dict().items() if name not in ("n", "n_positive")}
    results.append(
        {
            **cell,
            "group": group,
            **metrics,
            "n_train": n_train,
            "n_tuning": n_tuning,
            "n_held_out": scores.n,
            "n_held_out_positive": scores.n_positive,
            "params": params,
            "fit_seconds": fit_seconds,
        }
    )


def split_counts(frame: pl.DataFrame) -> dict[str, int]:
    """Labels and positives per split of a task's labels joined with their splits."""
    out: dict[str, int] = {}
    for split in (s.Split.TRAIN, s.Split.TUNING, s.Split.HELD_OUT):
        part = frame.filter(pl.col(s.SPLIT) == split.value)
        out[f"{split.value}_labels"] = part.height
        out[f"{split.value}_positives"] = int(part.get_column("value").sum())
    return out


def run_benchmark(
    labelsets: Sequence[LabelSet],
    features: Mapping[str, EncoderFeatures],
    splits: pl.DataFrame,
    config: BenchmarkConfig | None = None,
    *,
    zero_shot: Mapping[str, Mapping[str, Features]] | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> BenchmarkResult:
    """Run every cell; ``splits`` maps subject_id → split (``metadata/subject_splits.parquet``).

    ``zero_shot`` gives, per encoder and task, one risk per row of that encoder's features made without any
    label (a prognostic model's probability of the outcome codes in the horizon): scored on the same held-out
    rows as a cell of head ``zero-shot`` at ``k=0``."""
    config = config or BenchmarkConfig()
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    task_rows: list[dict[str, Any]] = []
    predictions = HeldOutPredictions()
    neighbours: list[dict[str, Any]] = []
    split_map = splits.select(pl.col(s.SUBJECT_ID).cast(pl.Int64), pl.col(s.SPLIT).cast(pl.String))
    total = len(labelsets) * sum(_cells(config, _heads_for(config, f)) for f in features.values())
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    for labelset in labelsets:
        task = labelset.task
        frame = labelset.frame().with_row_index(_LABEL).join(split_map, on=s.SUBJECT_ID, how="inner")
        task_rows.append({"group": task.group, **labelset.summary(), **split_counts(frame)})
        for encoder, feats in features.items():
            reason = _run_encoder(
                task.name, task.group, encoder, frame, feats, config, results, missing, tick, predictions, neighbours,
                (zero_shot or {}).get(encoder, {}).get(task.name),
            )  # fmt: skip
            if reason is not None:
                say(f"{task.name} / {encoder}: {reason}")
    return BenchmarkResult(
        results=pl.DataFrame(results, schema=RESULT_SCHEMA) if results else pl.DataFrame(schema=RESULT_SCHEMA),
        missing=pl.DataFrame(missing, schema=MISSING_SCHEMA) if missing else pl.DataFrame(schema=MISSING_SCHEMA),
        tasks=task_rows,
        seconds=time.perf_counter() - started,
        predictions=predictions,
        neighbours=pl.DataFrame(neighbours, schema=NEIGHBOUR_SCHEMA),
        n_bootstrap=config.n_bootstrap,
    )
