"""The main job (``ehrembed run`` / ``make run``): each stage reuses its finished output.

Today: ingest Eunomia → register it in the store → summarise → serialize one held-out patient.
Later stages (embed, distill, index, benchmark) join here as they land.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.omop import ingest_omop
from ehrembed.ehr.serialize import Serializer, SerializerConfig
from ehrembed.ehr.stats import dataset_stats
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.fsutil import atomic_write_text
from ehrembed.store.catalog import register_meds
from ehrembed.store.db import create_all, make_engine, session_scope


@dataclass(frozen=True)
class MainJobConfig:
    out: Path = Path("out")
    fresh: bool = False
    serializer: SerializerConfig = field(default_factory=SerializerConfig)


@dataclass(frozen=True)
class MainJobResult:
    stats: dict[str, Any]
    subject_id: int
    as_of: dt.datetime
    record: str
    timings: dict[str, float]


def _typical_held_out_subject(dataset: MedsDataset) -> int:
    """The held-out subject whose event count is closest to the median: a representative record."""
    counts = dataset.scan().group_by(s.SUBJECT_ID).agg(pl.len().alias("n"))
    held_out = dataset.splits().filter(pl.col(s.SPLIT) == s.Split.HELD_OUT.value).select(s.SUBJECT_ID).lazy()
    frame = counts.join(held_out, on=s.SUBJECT_ID).collect()
    if frame.is_empty():
        frame = counts.collect()
    median = frame.get_column("n").median()
    return int(
        frame.with_columns((pl.col("n") - median).abs().alias("d")).sort("d", s.SUBJECT_ID).item(0, s.SUBJECT_ID)
    )


def run_main_job(config: MainJobConfig, say: Callable[[str], None] = lambda _m: None) -> MainJobResult:
    """Run every stage into ``config.out`` and return what to show the user."""
    timings: dict[str, float] = {}
    out = Path(config.out)
    data_dir = out / "eunomia"

    started = time.perf_counter()
    if config.fresh or not (data_dir / s.DATASET_FILE).exists():
        say("ingest: Eunomia OMOP CDM → MEDS")
        ingest_omop(out=data_dir, overwrite=True)
    else:
        say(f"ingest: reusing {data_dir}")
    dataset = MedsDataset.open(data_dir)
    timings["ingest"] = time.perf_counter() - started

    started = time.perf_counter()
    engine = make_engine()
    create_all(engine)
    with session_scope(engine) as session:
        register_meds(session, dataset, "omop")
    engine.dispose()
    timings["register"] = time.perf_counter() - started

    started = time.perf_counter()
    vocabulary = Vocabulary.from_dataset(dataset)
    stats = dataset_stats(dataset, vocabulary)
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2, default=str) + "\n")
    timings["describe"] = time.perf_counter() - started

    started = time.perf_counter()
    subject_id = _typical_held_out_subject(dataset)
    patient = dataset.patient(subject_id)
    as_of = max(e.time for e in patient.events if e.time is not None)
    record = Serializer(vocabulary, config.serializer).serialize(patient, as_of=as_of)
    atomic_write_text(out / f"record_{subject_id}.md", record)
    timings["serialize"] = time.perf_counter() - started
    return MainJobResult(stats, subject_id, as_of, record, timings)
