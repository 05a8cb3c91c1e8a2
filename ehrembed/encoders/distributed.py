"""Embedding jobs on Ray: MEDS shards serialized and encoded by an actor pool, one encoder per actor.

:func:`embed_dataset_ray` writes the same :class:`~ehrembed.encoders.embeddings.EmbeddingSet` as
:func:`~ehrembed.encoders.job.embed_dataset` (same rows in the same order; vectors equal up to
float rounding of different batch compositions). Each shard of the MEDS folder is one Ray Data
item; an actor (``ActorPoolStrategy``; one GPU each when the cluster has GPUs, else ``cpus_per_actor``
CPUs) loads the encoder once and runs the single-process job on that shard's subjects, so the
content-addressed cache, resumability and skip rules are the same. Vectors come back to the driver
and are written atomically at ``out``.

On a cluster (``address="ray://head:10001"`` or ``"auto"``), the MEDS folder, the model folder and the
cache folder must be on storage every node sees (the paths are passed as they are).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.encoders.base import EncoderError
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.encoders.job import AsOf, EmbedConfig, EmbedReport


class _ShardEmbedder:
    """A Ray actor body: holds one encoder; per call, embeds one shard's subjects into ``parts/{position}``."""

    def __init__(
        self,
        root: str,
        parts: str,
        encoder_name: str,
        encoder_kwargs: dict[str, Any],
        config: EmbedConfig,
        as_of: AsOf,
        subject_ids: list[int] | None,
    ) -> None:
        from ehrembed.encoders import load_encoder

        self.dataset = MedsDataset.open(root)
        self.parts = Path(parts)
        self.encoder = load_encoder(encoder_name, **encoder_kwargs)
        self.config = config
        self.as_of = as_of
        self.wanted = None if subject_ids is None else set(subject_ids)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        from ehrembed.encoders.job import embed_records

        out: dict[str, list[Any]] = {"position": [], "rows": [], "n_subjects": [], "report": []}
        for shard, position in zip(batch["shard"], batch["position"], strict=True):
            held = (
                pl.read_parquet(str(shard), columns=[s.SUBJECT_ID]).get_column(s.SUBJECT_ID).unique(maintain_order=True)
            )
            ids = [int(i) for i in held if self.wanted is None or int(i) in self.wanted]
            report = EmbedReport(out=self.parts)
            rows = 0
            if ids:
                try:
                    emb, report = embed_records(
                        self.dataset, self.encoder, self.config, subject_ids=ids, as_of=self.as_of
                    )
                    emb.save(self.parts / f"{int(position):06d}")
                    rows = len(emb)
                except EncoderError:  # nothing to embed in this shard: every subject skipped
                    report.skipped = {"no record to embed": len(ids)}
            summary = {
                "encoded": report.encoded,
                "cached": report.cached,
                "truncated": report.truncated_records,
                "tokens": report.tokens_encoded,
                "skipped": dict(report.skipped),
            }
            out["position"].append(int(position))
            out["rows"].append(rows)
            out["n_subjects"].append(len(ids))
            out["report"].append(json.dumps(summary))
        return out


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> dict[str, float]:
    """Connect to a Ray cluster at ``address`` (``auto``, ``ray://host:10001``), or start a local one."""
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    return dict(ray.cluster_resources())


def embed_dataset_ray(
    dataset: MedsDataset,
    encoder_name: str,
    out: Path,
    config: EmbedConfig | None = None,
    *,
    encoder_kwargs: Mapping[str, Any] | None = None,
    address: str | None = None,
    num_actors: int | None = None,
    cpus_per_actor: float = 1.0,
    subject_ids: Sequence[int] | None = None,
    as_of: AsOf = None,
    progress: Callable[[int, int], None] | None = None,
) -> EmbedReport:
    """Embed a dataset on Ray (see the module docstring); the report sums the actors' reports."""
    import ray

    started = time.perf_counter()
    config = config or EmbedConfig()
    resources = init_ray(address)
    gpus = int(resources.get("GPU", 0))
    actors = num_actors or max(1, gpus or int(resources.get("CPU", 1) // cpus_per_actor))
    shards = dataset.shards
    wanted = sorted({int(i) for i in subject_ids}) if subject_ids is not None else None
    items = [{"shard": str(p), "position": i} for i, p in enumerate(shards)]
    parts_dir = Path(out).parent / f".{Path(out).name}.ray-parts-{os.getpid()}"
    parts_dir.mkdir(parents=True, exist_ok=True)
    try:
        frame = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _ShardEmbedder,
            fn_constructor_kwargs={
                "root": str(dataset.root),
                "parts": str(parts_dir),
                "encoder_name": encoder_name,
                "encoder_kwargs": dict(encoder_kwargs or {}),
                "config": config,
                "as_of": as_of,
                "subject_ids": wanted,
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(actors, len(items))),
            num_gpus=1 if gpus else 0,
            num_cpus=0 if gpus else cpus_per_actor,
            # Actors resolve the data home (the embedding cache) as the driver does.
            runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("EHREMBED_")}},
        )
        results: list[dict[str, Any]] = []
        for row in frame.iter_rows():
            results.append(row)
            if progress is not None:
                progress(len(results), len(items))
        results.sort(key=lambda r: int(r["position"]))
        report = EmbedReport(out=Path(out))
        skipped: Counter[str] = Counter()
        for row in results:
            part = json.loads(row["report"])
            report.encoded += int(part["encoded"])
            report.cached += int(part["cached"])
            report.truncated_records += int(part["truncated"])
            report.tokens_encoded += int(part["tokens"])
            skipped.update(part["skipped"])
        if wanted is not None:
            unknown = len(wanted) - sum(int(r["n_subjects"]) for r in results)
            if unknown > 0:
                skipped["unknown subject"] += unknown
        pieces = [EmbeddingSet.load(parts_dir / f"{int(r['position']):06d}", mmap=False) for r in results if r["rows"]]
        if not pieces:
            raise EncoderError(f"no records to embed in {dataset.root} (skipped: {dict(skipped) or 'none'})")
        first = pieces[0]
        embeddings = EmbeddingSet(
            subject_ids=np.concatenate([p.subject_ids for p in pieces]).astype(np.int64),
            as_of=np.concatenate([p.as_of for p in pieces]).astype("datetime64[us]"),
            vectors=np.concatenate([np.asarray(p.vectors, dtype=np.float32) for p in pieces]),
            spec=first.spec,
            serializer_version=first.serializer_version,
            instruction=first.instruction,
            extra={
                **first.extra,
                "truncated_records": report.truncated_records,
                "ray": {"actors": actors, "gpus": gpus, "shards": len(items)},
            },
        )
        embeddings.save(out)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    report.skipped = dict(skipped)
    report.rows = len(embeddings)
    report.seconds = time.perf_counter() - started
    return report
