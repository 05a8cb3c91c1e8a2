"""Few-shot heads as recorded artifacts: the examples a task gives, and a head fitted on examples and recorded.

A task's examples are a stable case-cohort sample of its labels: up to half of them positives (one time
per patient), the rest one random labelled time of other patients (which may be positive too), so
refitting on the same data gives the same head. A head is saved under ``heads_dir``
(:mod:`ehrembed.predict.fitted`) and recorded in the store (the caller's session) with its card as the spec.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.encoders.base import Encoder
from ehrembed.predict.fitted import FittedHead, fit_head
from ehrembed.predict.job import case_cohort_keys, restrict
from ehrembed.predict.labelers import label_dataset
from ehrembed.predict.tasks import TaskSpec
from ehrembed.store.catalog import record_artifact


def task_examples(dataset: MedsDataset, task: TaskSpec, max_examples: int) -> list[s.Label]:
    """At most ``max_examples`` of the task's labels: a stable sample, at least half of it positives where the
    task has that many."""
    labels = label_dataset(task, dataset)
    half = max(1, max_examples // 2)
    return restrict(labels, case_cohort_keys([labels], positives=half, background=half)).labels


def fit_recorded_head(
    dataset: MedsDataset,
    encoder: Encoder,
    examples: list[s.Label],
    head_kind: str,
    heads_dir: Path,
    *,
    dataset_name: str,
    task: TaskSpec | None = None,
    task_name: str | None = None,
    fusion: bool = False,
    session: Session,
) -> FittedHead:
    """Fit a head on the examples (with the task's question for instruction-tuned encoders), save and record it."""
    fitted = fit_head(
        dataset,
        encoder,
        examples,
        head_kind,
        heads_dir,
        task=task_name or (task.name if task is not None else None),
        question=task.question if task is not None else None,
        dataset_name=dataset_name,
        fusion=fusion,
    )
    record_artifact(session, "head", fitted.head_id, heads_dir / fitted.head_id, fitted.card, dataset_name)
    return fitted
