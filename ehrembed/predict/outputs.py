"""What a benchmark run leaves beside its report: the encoding table, ``run.json`` (the run card) and,
when asked, every cell's held-out predictions in meds-evaluation's format."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.fsutil import atomic_write_text, sha256_file
from ehrembed.predict import meds_labels
from ehrembed.predict.benchmark import BenchmarkResult
from ehrembed.predict.labelers import LabelSet
from ehrembed.predict.tasks import TaskSpec
from ehrembed.versions import package_versions

if TYPE_CHECKING:
    from ehrembed.predict.job import BenchmarkJobConfig


def encoding_section(encoding: dict[str, dict[str, Any]]) -> str:
    """The report's encoding-speed table (one row per encoder; ``embedded``: once, per task or a saved set)."""
    rows = []
    for name, info in encoding.items():
        speed = info.get("records_per_second")
        rows.append(
            f"| {name} | {info.get('encoder', info.get('source', '-'))} | {info.get('plan', '-')} | "
            f"{info.get('max_tokens', '-')} | {info.get('encoded', '-')} | {info.get('cached', '-')} | "
            f"{'-' if speed is None else f'{speed:.2f}'} |"
        )
    header = (
        "| encoder | model | embedded | token window | records encoded | from cache | records/s (serialize + encode) |"
    )
    return "\n".join([header, "|---|---|---|---|---|---|---|", *rows])


def write_cell_predictions(result: BenchmarkResult, labelsets: Sequence[LabelSet], root: Path) -> int:
    """Every cell's held-out predictions as meds-evaluation files (:func:`meds_labels.cell_path`); files written."""
    frames = {ls.task.name: ls.frame() for ls in labelsets}
    written = 0
    for (task, encoder, head, k), replicates in result.predictions.probabilities.items():
        held = result.predictions.held_out[(task, encoder)]
        labels = frames[task][held.rows]
        for replicate, p in enumerate(replicates):
            table = meds_labels.predictions_table(labels, p)
            meds_labels.write_predictions(table, meds_labels.cell_path(root, task, encoder, head, k, replicate))
            written += 1
    return written


def write_run_card(
    out: Path,
    dataset: MedsDataset,
    tasks: Sequence[TaskSpec],
    config: BenchmarkJobConfig,
    encoding: dict[str, dict[str, Any]],
    timings: dict[str, float],
) -> Path:
    """``run.json`` beside the report: the resolved config, tasks, inputs' fingerprints, versions, timings."""
    card = {
        "config": dataclasses.asdict(config),
        "dataset": {
            "name": dataset.name,
            "path": str(dataset.root.resolve()),
            "sha256": sha256_file(dataset.root / s.DATA_DIR),
        },
        "tasks": [t.to_dict() for t in tasks],
        "encoders": encoding,
        "versions": package_versions(
            ("ehrembed", "lightgbm", "scikit-learn", "faiss-cpu", "torch", "transformers", "polars")
        ),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    path = Path(out) / "run.json"
    atomic_write_text(path, json.dumps(card, indent=2, default=str) + "\n")
    return path
