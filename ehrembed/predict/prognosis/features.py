"""A prognostic model's features for the benchmark: its vectors, and its zero-shot risks (the ``k=0`` cells)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.encoders.embeddings import PREDICTION_TIME
from ehrembed.predict.features import Features
from ehrembed.predict.labelers import LabelSet
from ehrembed.predict.ontology import Ontology


def prognosis_features(
    dataset: MedsDataset,
    name: str,
    source: str | Path,
    keys: pl.DataFrame,
    *,
    labelsets: Sequence[LabelSet] = (),
    ontology: Ontology | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> tuple[Features, dict[str, Any], dict[str, Features]]:
    """The vectors of the model in ``source`` for ``keys`` (from the count inputs cut at each time), its info
    (input coverage of this dataset — a warning below half, an error at none —, rows, seconds), and its
    zero-shot risk per task of ``labelsets`` whose outcome codes are among its targets."""
    from ehrembed.predict.prognosis.model import PrognosisModel  # torch: only when a model is used

    started = time.perf_counter()
    model = PrognosisModel.load(source)
    coverage, warning = model.check_coverage(dataset, ontology=ontology)
    if warning:
        say(f"warning: {warning}")
    rows = keys.select(s.SUBJECT_ID, PREDICTION_TIME)
    inputs = model.inputs(dataset, keys, ontology=ontology)
    vectors = model.vectors_from_inputs(inputs)
    zero_shot: dict[str, Features] = {}
    for labelset in labelsets:
        task = labelset.task
        if task.outcome.rule != "codes" or not labelset.outcome_codes:
            continue
        risk = model.window_risk(inputs, labelset.outcome_codes, task.horizon.start_days, task.horizon.end_days)
        if risk is not None:
            zero_shot[task.name] = Features(name, rows, risk[:, None])
    seconds = time.perf_counter() - started
    info: dict[str, Any] = {
        "encoder": f"prognosis:{model.method}",
        "plan": "once",
        "rows": keys.height,
        "encoded": keys.height,
        "seconds": round(seconds, 3),
        "records_per_second": round(keys.height / seconds, 1) if seconds > 0 else None,
        "coverage": round(coverage, 4),
        "dim": model.dim,
    }
    if zero_shot:
        info["zero_shot_tasks"] = sorted(zero_shot)
    return Features(name, rows, vectors), info, zero_shot
