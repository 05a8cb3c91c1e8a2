"""Heads fitted for serving: labelled examples → embedded records → a head with validation metrics.

:func:`fit_head` embeds each example's record as of its prediction time with the given encoder,
holds out the examples of patients in the tuning split for validation (hyperparameters and the
reported metrics), fits the head on the rest, and saves it in a folder: the head's own files,
``examples.parquet`` and ``vectors.npy`` (the training examples, for "most similar labelled
examples" evidence) and ``card.json`` (task, dataset, encoder spec, metrics). :func:`load_fitted`
reads it back; :meth:`FittedHead.predict` gives probabilities and the nearest labelled examples.

A ``count+NAME`` head (``fusion=True``) scores the count features beside the encoder's vectors
(:class:`~ehrembed.predict.features.DenseBlock`, fitted on the training examples): its folder also
holds ``count_columns.json`` (the count layout it was fitted on) and ``fusion_*.npy``; it scores
stored subjects only, since counts need the patient's events.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.encoders.base import Encoder, EncoderSpec
from ehrembed.encoders.cache import EmbeddingCache
from ehrembed.encoders.embeddings import PREDICTION_TIME
from ehrembed.encoders.job import AsOf, EmbedConfig, embed_records
from ehrembed.fsutil import atomic_dir, atomic_write_text, restore_interrupted
from ehrembed.predict.features import DEFAULT_FUSION_COMPONENTS as FUSION_COMPONENTS
from ehrembed.predict.features import FUSION_PREFIX, DenseBlock, count_features
from ehrembed.predict.heads import HeadError, load_head, make_head
from ehrembed.predict.heads.base import Head, Matrix
from ehrembed.predict.metrics import score
from ehrembed.predict.ontology import Ontology

CARD_FILE = "card.json"
COUNT_COLUMNS_FILE = "count_columns.json"
FUSION_FILE_PREFIX = "fusion_"
EXAMPLES_FILE = "examples.parquet"
BOOLEAN_VALUE = "boolean_value"
"""The label column of stored examples (the MEDS label schema's; heads saved before it used ``label``)."""
VECTORS_FILE = "vectors.npy"
HEAD_DIR = "head"


@dataclass
class FittedHead:
    """A served head: the model, its training examples and vectors, and its card."""

    head_id: str
    head: Head
    spec: EncoderSpec
    examples: pl.DataFrame  # subject_id, prediction_time, boolean_value (the MEDS label schema's names)
    vectors: np.ndarray
    card: dict[str, Any] = field(default_factory=dict)
    fusion: DenseBlock | None = None
    count_columns: tuple[str, ...] | None = None

    @property
    def encoder_name(self) -> str:
        """The encoder as clients name it: the spec's name, ``count+`` in front for a fused head."""
        return (FUSION_PREFIX if self.fusion is not None else "") + self.spec.name

    def features(
        self,
        vectors: np.ndarray,
        dataset: MedsDataset | None = None,
        subject_ids: list[int | None] | None = None,
        times: list[dt.datetime | None] | None = None,
        ontology: Ontology | None = None,
    ) -> Matrix:
        """What the head scores for these rows: the vectors, or for a ``count+`` head the counts (in the
        head's layout, as of each row's time) beside them."""
        if self.fusion is None:
            return vectors
        if dataset is None or subject_ids is None or times is None or None in subject_ids or None in times:
            raise HeadError(
                f"head {self.head_id} ({self.encoder_name}) scores stored subjects only: count features need "
                "the patient's events, not a record text"
            )
        keys = pl.DataFrame(
            {s.SUBJECT_ID: subject_ids, PREDICTION_TIME: times},
            schema={s.SUBJECT_ID: pl.Int64, PREDICTION_TIME: pl.Datetime("us")},
        )
        counts = count_features(dataset, keys, ontology=ontology, columns=self.count_columns)
        return self.fusion.fuse(sp.csr_matrix(counts.matrix), vectors)

    def predict(
        self, vectors: np.ndarray, *, evidence: int = 3, features: Matrix | None = None
    ) -> tuple[np.ndarray, list[list[dict[str, Any]]]]:
        """Positive-class probabilities (of ``features`` when given, e.g. :meth:`features`, else of the
        vectors) and, per row, the ``evidence`` most similar labelled examples by vector."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.spec.dim:
            raise HeadError(f"vectors must have {self.spec.dim} columns (encoder {self.spec.name})")
        if self.fusion is not None and features is None:
            raise HeadError(f"head {self.head_id} ({self.encoder_name}) needs its count features beside the vectors")
        p = self.head.predict_proba(vectors if features is None else features)[:, 1]
        out: list[list[dict[str, Any]]] = []
        if evidence > 0 and len(self.vectors):
            sims = vectors @ self.vectors.T
            top = np.argsort(-sims, axis=1)[:, :evidence]
            rows = self.examples.to_dicts()
            for i, picks in enumerate(top):
                out.append([{**rows[j], "similarity": round(float(sims[i, j]), 4)} for j in picks])
        else:
            out = [[] for _ in range(len(vectors))]
        return p, out


def _examples_frame(examples: list[s.Label]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            s.SUBJECT_ID: [e.subject_id for e in examples],
            PREDICTION_TIME: [e.prediction_time for e in examples],
            BOOLEAN_VALUE: [bool(e.value) for e in examples],
        },
        schema={s.SUBJECT_ID: pl.Int64, PREDICTION_TIME: pl.Datetime("us"), BOOLEAN_VALUE: pl.Boolean},
    )


def fit_head(
    dataset: MedsDataset,
    encoder: Encoder,
    examples: list[s.Label],
    head_kind: str,
    out_root: Path,
    *,
    task: str | None = None,
    question: str | None = None,
    dataset_name: str | None = None,
    config: EmbedConfig | None = None,
    fusion: bool = False,
) -> FittedHead:
    """Embed the examples, fit the head (validated on tuning-split patients) and save it under ``out_root/ID``.

    ``question`` is the task's question: instruction-tuned encoders embed the examples with it (the
    instruction rule, :mod:`ehrembed.encoders.instructions`), and predictions reuse the same instruction.
    ``fusion`` fits a ``count+`` head: the examples' count features beside their vectors.
    """
    if not examples:
        raise HeadError("no labelled examples to fit on")
    frame = _examples_frame(examples).unique(subset=[s.SUBJECT_ID, PREDICTION_TIME], keep="last")
    times: dict[int, list[dt.datetime]] = {}
    for sid, when in frame.select(s.SUBJECT_ID, PREDICTION_TIME).iter_rows():
        times.setdefault(int(sid), []).append(when)
    embeddings, _report = embed_records(dataset, encoder, config or EmbedConfig(question=question), as_of=times)
    found = pl.DataFrame(
        {s.SUBJECT_ID: embeddings.subject_ids, PREDICTION_TIME: embeddings.as_of.astype("datetime64[us]")}
    ).with_row_index("__row")
    joined = frame.join(found, on=[s.SUBJECT_ID, PREDICTION_TIME], how="inner")
    if joined.height < frame.height:
        raise HeadError(
            f"{frame.height - joined.height} example(s) could not be embedded (prediction time before birth or "
            "no record by then)"
        )
    vectors = np.asarray(embeddings.vectors, dtype=np.float32)[joined.get_column("__row").to_numpy()]
    y = joined.get_column(BOOLEAN_VALUE).to_numpy().astype(np.int64)
    split_of = dict(dataset.splits().select(s.SUBJECT_ID, s.SPLIT).iter_rows())
    is_val = np.array([split_of.get(int(i)) == s.Split.TUNING.value for i in joined.get_column(s.SUBJECT_ID)])
    if len(np.unique(y[~is_val])) < 2 or len(np.unique(y[is_val])) < 2:
        is_val[:] = False  # too few to hold out: fit on everything, report no validation metrics
    X: Matrix = vectors
    block: DenseBlock | None = None
    count_columns: tuple[str, ...] | None = None
    if fusion:
        counts = count_features(dataset, joined.select(s.SUBJECT_ID, PREDICTION_TIME))
        count_columns = counts.columns
        block = DenseBlock.fit(
            sp.csr_matrix(counts.matrix)[np.flatnonzero(~is_val)], vectors[~is_val], FUSION_COMPONENTS
        )
        X = block.fuse(sp.csr_matrix(counts.matrix), vectors)
    train_rows, val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    head = make_head(head_kind)
    head.fit(X[train_rows], y[~is_val], X[val_rows] if is_val.any() else None, y[is_val] if is_val.any() else None)
    metrics: dict[str, Any] = {"validation_examples": int(is_val.sum())}
    if is_val.any():
        scores = score(
            y[is_val], head.predict_proba(X[val_rows])[:, 1], joined.get_column(s.SUBJECT_ID).to_numpy()[is_val]
        )
        metrics.update({k: v for k, v in scores.as_dict().items() if v is not None})
    else:
        metrics["note"] = "no validation metrics: the tuning-split examples do not hold both classes"
    head_id = uuid.uuid4().hex[:12]
    examples_out = joined.select(s.SUBJECT_ID, PREDICTION_TIME, BOOLEAN_VALUE)
    card = {
        "head_id": head_id,
        "kind": head_kind,
        "task": task,
        "dataset": dataset_name or dataset.name,
        "encoder": encoder.spec.to_dict(),
        "fusion": None
        if block is None
        else {"count_columns": len(count_columns or ()), "components": FUSION_COMPONENTS},
        "encoder_fingerprint": encoder.spec.fingerprint(),
        "serializer_version": embeddings.serializer_version,
        "instruction": embeddings.instruction,
        "serializer": embeddings.extra.get("serializer"),
        "n_examples": len(y),
        "n_positive": int(y.sum()),
        "n_train": int((~is_val).sum()),
        "params": head.params_,
        "metrics": metrics,
        "created_at": dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(),
    }
    with atomic_dir(Path(out_root) / head_id) as tmp:
        head.save(tmp / HEAD_DIR)
        examples_out.write_parquet(tmp / EXAMPLES_FILE)
        np.save(tmp / VECTORS_FILE, vectors)
        if block is not None:
            (tmp / COUNT_COLUMNS_FILE).write_text(json.dumps(list(count_columns or ())))
            for part, array in block.to_arrays().items():
                np.save(tmp / f"{FUSION_FILE_PREFIX}{part}.npy", array)
        atomic_write_text(tmp / CARD_FILE, json.dumps(card, indent=2, default=str) + "\n")
    return FittedHead(head_id, head, encoder.spec, examples_out, vectors, card, block, count_columns)


def load_fitted(folder: Path) -> FittedHead:
    """A head saved by :func:`fit_head`."""
    folder = Path(folder)
    restore_interrupted(folder)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise HeadError(f"{folder} is not a fitted head (no {CARD_FILE})")
    card = json.loads(card_path.read_text())
    block = columns = None
    if card.get("fusion"):
        block = DenseBlock.from_arrays(
            {p.stem.removeprefix(FUSION_FILE_PREFIX): np.load(p) for p in folder.glob(f"{FUSION_FILE_PREFIX}*.npy")}
        )
        columns = tuple(json.loads((folder / COUNT_COLUMNS_FILE).read_text()))
    return FittedHead(
        head_id=card["head_id"],
        head=load_head(folder / HEAD_DIR),
        spec=EncoderSpec.from_dict(card["encoder"]),
        examples=pl.read_parquet(folder / EXAMPLES_FILE).rename({"label": BOOLEAN_VALUE}, strict=False),
        vectors=np.load(folder / VECTORS_FILE),
        card=card,
        fusion=block,
        count_columns=columns,
    )


def embed_for_head(
    fitted: FittedHead,
    encoder: Encoder,
    dataset: MedsDataset | None = None,
    *,
    subject_ids: list[int] | None = None,
    as_of: AsOf = None,
    records: list[str] | None = None,
    vocabulary: Vocabulary | None = None,
    cache: EmbeddingCache | None = None,
) -> tuple[np.ndarray, list[int | None], list[dt.datetime | None]]:
    """Vectors the head can score, made the way its training examples were (same encoder and instruction):
    stored subjects' records as of ``as_of`` (default each one's latest), or inline record texts.

    A long-lived caller passes the dataset's ``vocabulary`` and the encoder's embedding ``cache`` it already
    holds, so neither is rebuilt per call."""
    if encoder.spec.fingerprint() != fitted.spec.fingerprint():
        raise HeadError(f"head {fitted.head_id} was fitted on encoder {fitted.spec.name}, not {encoder.spec.name}")
    config = EmbedConfig.replaying(fitted.card)
    if cache is not None:
        config = dataclasses.replace(config, cache_dir=cache.root)
    if records is not None:
        vectors = encoder.encode(records, instruction=config.instruction_for(encoder))
        return vectors, [None] * len(records), [None] * len(records)
    if dataset is None or subject_ids is None:
        raise HeadError("give subject ids with their dataset, or inline records")
    embeddings, report = embed_records(
        dataset, encoder, config, subject_ids=subject_ids, as_of=as_of, vocabulary=vocabulary, cache=cache
    )
    if report.skipped:
        reasons = ", ".join(f"{k}: {v}" for k, v in report.skipped.items())
        raise HeadError(f"some subjects have no record to score ({reasons})")
    times: list[dt.datetime | None] = [t.astype("datetime64[us]").item() for t in embeddings.as_of]
    return np.asarray(embeddings.vectors, dtype=np.float32), [int(i) for i in embeddings.subject_ids], times
