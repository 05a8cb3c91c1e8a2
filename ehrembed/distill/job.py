"""Distil a dataset's teacher embeddings into the student, and measure what it kept.

Rows follow the dataset's patient-level splits: train rows teach, tuning rows decide early
stopping, held-out rows are only used afterwards, for the retention report (teacher–student
cosine and overlap@10, beside the undistilled student's overlap@10). The student reads the same
records as the teacher, re-serialized within the student's own (shorter) token window.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.serialize import Serializer, SerializerConfig
from ehrembed.ehr.tokens import HFTokenCounter
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.encoders.base import EncoderError
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.fsutil import atomic_write_text

from .retention import overlap_at_k, retention_report
from .soft_labels import task_labels
from .train import DistillConfig, DistillError, DistillProgress, DistillResult, distill

RETENTION_FILE = "retention.json"


@dataclass(frozen=True)
class DistillJobConfig:
    """The student base (None: the packaged MiniLM), the training recipe, and size limits."""

    base: Path | None = None
    train: DistillConfig = field(default_factory=DistillConfig)
    max_train: int | None = None
    max_eval: int | None = 2000
    k: int = 10
    seed: int = 0


@dataclass(frozen=True)
class DistillJobResult:
    distill: DistillResult
    retention: dict[str, Any]
    rows: dict[str, int]
    labels: dict[str, dict[str, int]] | None = None
    """Per task, the train rows with a hard label, positives, and rows with a teacher probability."""


def _serializer_for_student(teacher: EmbeddingSet, vocabulary: Vocabulary, student: Any) -> Serializer:
    """The teacher's serializer settings, with the budget of the student's window."""
    known = {f.name for f in dataclasses.fields(SerializerConfig)}
    stored = {k: v for k, v in (teacher.extra.get("serializer") or {}).items() if k in known}
    window = int(student.max_seq_length) - 2  # [CLS] and [SEP]
    config = dataclasses.replace(SerializerConfig(**stored), max_tokens=window)
    counter = HFTokenCounter(student.tokenizer, name=f"student:{student.tokenizer.name_or_path}")
    return Serializer(vocabulary, config, counter)


def _texts(dataset: MedsDataset, serializer: Serializer, ids: np.ndarray, times: np.ndarray) -> list[str]:
    wanted = {int(i) for i in ids}
    patients = {p.subject_id: p for p in dataset.iter_patients(sorted(wanted))}
    missing = wanted - patients.keys()
    if missing:
        raise EncoderError(
            f"{len(missing)} subject(s) of the teacher embeddings are not in {dataset.root} (e.g. {min(missing)}); "
            "were they made from another dataset?"
        )
    return [
        serializer.serialize(patients[int(i)], as_of=t.astype("datetime64[us]").astype(dt.datetime))
        for i, t in zip(ids, times, strict=True)
    ]


def _take(rows: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


def distill_dataset(
    dataset: MedsDataset,
    teacher: EmbeddingSet,
    out: Path,
    config: DistillJobConfig | None = None,
    *,
    labels: pl.DataFrame | None = None,
    progress: DistillProgress | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> DistillJobResult:
    """Train a student on ``teacher``'s train rows, early-stop on tuning rows, report on held-out rows.

    With ``labels`` (:mod:`~ehrembed.distill.soft_labels`' frame) and ``config.train.weight_soft_label > 0``
    the student also learns the tasks, CKD-EHR style: hard labels of the train rows mixed with the
    frozen teacher's cross-fitted probabilities.
    """
    from ehrembed.encoders.student import StudentEncoder, build_student_for_distillation

    config = config or DistillJobConfig()
    split_of = dict(dataset.splits().select(s.SUBJECT_ID, s.SPLIT).iter_rows())
    splits = np.array([split_of.get(int(i), "") for i in teacher.subject_ids])
    rows = {name: np.flatnonzero(splits == name) for name in (s.Split.TRAIN, s.Split.TUNING, s.Split.HELD_OUT)}
    train = _take(rows[s.Split.TRAIN], config.max_train, config.seed)
    tuning = _take(rows[s.Split.TUNING], config.max_eval, config.seed)
    held_out = _take(rows[s.Split.HELD_OUT], config.max_eval, config.seed)
    if len(train) == 0 or len(tuning) == 0:
        raise EncoderError(
            f"distillation needs train and tuning rows; the teacher embeddings have {len(train)} train and "
            f"{len(tuning)} tuning rows in {dataset.root}'s splits"
        )
    soft_labels = None
    if (labels is not None) != (config.train.weight_soft_label > 0):
        raise DistillError(
            "soft-label distillation needs both task labels and weight_soft_label > 0"
            if labels is None
            else "task labels were given but weight_soft_label is 0: they would be ignored"
        )
    if labels is not None:
        soft_labels = task_labels(teacher, labels, train, seed=config.seed)
    student = build_student_for_distillation(config.base, teacher.dim)
    serializer = _serializer_for_student(teacher, Vocabulary.from_dataset(dataset), student)
    vectors = np.asarray(teacher.vectors, dtype=np.float32)

    def texts(idx: np.ndarray) -> list[str]:
        return _texts(dataset, serializer, teacher.subject_ids[idx], teacher.as_of[idx])

    result = distill(
        student,
        texts(train),
        vectors[train],
        texts(tuning),
        vectors[tuning],
        out,
        config.train,
        hard_labels=None if soft_labels is None else soft_labels.hard,
        soft_labels=None if soft_labels is None else soft_labels.soft,
        teacher_info={
            "name": teacher.spec.name,
            "spec_fingerprint": teacher.spec.fingerprint(),
            "revision": teacher.spec.revision,
            "dataset": dataset.name,
            "serializer_version": teacher.serializer_version,
            "student_serializer_version": serializer.version,
        },
        progress=progress,
        resume=resume,
        overwrite=overwrite,
    )
    retention: dict[str, Any] = {"held_out_rows": len(held_out)}
    if len(held_out) > config.k:
        held_texts = texts(held_out)
        distilled = StudentEncoder.from_folder(out).encode(held_texts, batch_size=32)
        base = StudentEncoder.from_folder(config.base).encode(held_texts, batch_size=32)
        retention = retention_report(vectors[held_out], distilled, k=config.k)
        base_overlap = float(overlap_at_k(vectors[held_out], base, config.k).mean())
        retention["undistilled"] = {f"overlap@{config.k}": base_overlap}
        atomic_write_text(Path(out) / RETENTION_FILE, json.dumps(retention, indent=2) + "\n")
    counts = {"train": len(train), "tuning": len(tuning), "held_out": len(held_out)}
    return DistillJobResult(result, retention, counts, None if soft_labels is None else soft_labels.summary())


def average_over_instructions(sets: Mapping[str, EmbeddingSet]) -> EmbeddingSet:
    """One teacher vector per (subject, time): the L2-normalised mean of its vectors under each task's
    instruction (a student that does not read the instruction can only learn that mean anyway).

    The sets must come from one encoder and serializer layout (their token budgets may differ: a longer
    instruction leaves less room for the record); the result's ``instruction`` is None and
    ``extra["instructions"]`` maps each task to the instruction it averaged.
    """
    if not sets:
        raise EncoderError("no teacher embedding sets to average")
    first = next(iter(sets.values()))

    def layout(emb: EmbeddingSet) -> dict[str, Any]:
        return {k: v for k, v in (emb.extra.get("serializer") or {}).items() if k != "max_tokens"}

    for name, emb in sets.items():
        if emb.spec.fingerprint() != first.spec.fingerprint() or layout(emb) != layout(first):
            raise EncoderError(f"teacher embeddings for {name} come from another encoder or serializer layout")
    frame = pl.concat(
        [
            pl.DataFrame(
                {
                    s.SUBJECT_ID: emb.subject_ids.astype(np.int64),
                    "as_of": emb.as_of.astype("datetime64[us]"),
                    "part": np.full(len(emb), i, dtype=np.int64),
                    "row": np.arange(len(emb), dtype=np.int64),
                }
            )
            for i, emb in enumerate(sets.values())
        ]
    ).with_row_index("__all")
    vectors = np.concatenate([np.asarray(emb.vectors, dtype=np.float32) for emb in sets.values()])
    groups = frame.group_by(s.SUBJECT_ID, "as_of", maintain_order=True).agg(pl.col("__all")).sort(s.SUBJECT_ID, "as_of")
    means = np.stack([vectors[np.asarray(rows)].mean(axis=0) for rows in groups.get_column("__all").to_list()])
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return EmbeddingSet(
        subject_ids=groups.get_column(s.SUBJECT_ID).to_numpy(),
        as_of=groups.get_column("as_of").to_numpy().astype("datetime64[us]"),
        vectors=means.astype(np.float32),
        spec=first.spec,
        serializer_version=first.serializer_version,
        instruction=None,
        extra={**first.extra, "instructions": {name: emb.instruction for name, emb in sets.items()}},
    )


def load_teacher_embeddings(path: Path) -> EmbeddingSet:
    """An embedding set, or a folder of per-task sets (``TASK/embedding.json``) averaged per record."""
    path = Path(path)
    if (path / "embedding.json").is_file() or path.suffix == ".parquet" or not path.is_dir():
        return EmbeddingSet.load(path)  # its own error names what is missing
    parts = {d.name: EmbeddingSet.load(d) for d in sorted(path.iterdir()) if (d / "embedding.json").is_file()}
    if not parts:
        raise EncoderError(f"{path} is neither an embedding set nor a folder of per-task embedding sets")
    return average_over_instructions(parts)


def retention_table(retention: dict[str, Any]) -> pl.DataFrame:
    """Retention figures as a two-row table (distilled vs undistilled) for printing."""
    k = retention.get("k", 10)
    student = retention.get("student") or {}
    return pl.DataFrame(
        {
            "student": ["distilled", "undistilled"],
            "cosine_to_teacher": [student.get("cosine_mean"), None],
            f"overlap@{k}": [student.get(f"overlap@{k}"), (retention.get("undistilled") or {}).get(f"overlap@{k}")],
        }
    )
