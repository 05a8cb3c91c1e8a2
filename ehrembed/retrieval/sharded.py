"""Large indexes built shard by shard: IVF-PQ trained once on a sample, filled per shard, merged.

For collections too large to index in one process (or one pass), :func:`build_sharded_index` takes
several embedding sets (e.g. one per MEDS shard, or the parts of a Ray job), trains one IVF-PQ
index (fast-scan codes with a scalar-quantized refine store, as ``kind="ivfpq"``) on a seeded
sample drawn across all parts, fills a copy of the trained empty index with each part — in
parallel as Ray tasks when ``ray_address`` is given, else one after another — and merges the
copies: inverted lists are appended (row ids shifted by the rows before them) and the refine
codes concatenated, which gives exactly the index a single pass would. The result is an ordinary
:class:`~ehrembed.retrieval.index.VectorIndex` folder, saved atomically; the search API is the same.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.retrieval.index import (
    IndexBuildReport,
    IndexParams,
    VectorIndex,
    VectorIndexError,
    _faiss,
    default_nlist,
)

Progress = Callable[[int, int], None]


def _fill(empty: bytes, part: str, normalize: bool) -> bytes:
    """A copy of the trained empty index holding one part's vectors (runs in a Ray task or here)."""
    faiss = _faiss()
    index = faiss.deserialize_index(np.frombuffer(empty, dtype=np.uint8))
    vectors = np.ascontiguousarray(EmbeddingSet.load(part).vectors, dtype=np.float32)
    if normalize:
        vectors = vectors.copy()
        faiss.normalize_L2(vectors)
    index.add(vectors)
    return bytes(faiss.serialize_index(index))


def _merge(into: Any, other: Any, offset: int) -> None:
    """Append ``other``'s rows to ``into`` (both copies of one trained index); ids shift by ``offset``."""
    faiss = _faiss()
    a, b = faiss.downcast_index(into), faiss.downcast_index(other)
    if isinstance(a, faiss.IndexRefine):
        faiss.downcast_index(a.base_index).merge_from(faiss.downcast_index(b.base_index), offset)
        faiss.downcast_index(a.refine_index).merge_from(faiss.downcast_index(b.refine_index), 0)
        a.ntotal = a.base_index.ntotal
    else:
        a.merge_from(b, offset)


def build_sharded_index(
    parts: Sequence[Path | str],
    out: Path | str,
    *,
    params: IndexParams | None = None,
    ray_address: str | None = None,
    progress: Progress | None = None,
) -> IndexBuildReport:
    """An IVF-PQ index over several embedding sets (rows in the order of ``parts``), saved at ``out``."""
    started = time.perf_counter()
    if not parts:
        raise VectorIndexError("no embedding sets to index")
    sets = [EmbeddingSet.load(p) for p in parts]
    spec = sets[0].spec
    for path, emb in zip(parts, sets, strict=True):
        if emb.spec.fingerprint() != spec.fingerprint():
            raise VectorIndexError(
                f"{path} was made by encoder {emb.spec.name}, not {spec.name}: one index, one encoder"
            )
    sizes = np.asarray([len(e) for e in sets])
    total = int(sizes.sum())
    params = params or IndexParams()
    if params.nlist is None:  # size the inverted file for the whole collection, not for the sample
        params = dataclasses.replace(params, nlist=default_nlist(total))
    index = VectorIndex(spec.dim, "ivfpq", spec=spec, params=params, use_gpu=False)
    rng = np.random.default_rng(params.seed)
    quota = np.minimum(sizes, np.ceil(sizes / total * min(total, params.max_train)).astype(int))
    sample = np.concatenate(
        [
            np.asarray(e.vectors[np.sort(rng.choice(len(e), size=q, replace=False))], dtype=np.float32)
            for e, q in zip(sets, quota, strict=True)
        ]
    )
    index.train(sample)
    faiss = _faiss()
    empty = bytes(faiss.serialize_index(index.faiss_index()))
    paths = [str(Path(p)) for p in parts]
    if ray_address is not None:
        import ray

        from ehrembed.encoders.distributed import init_ray

        init_ray(None if ray_address == "local" else ray_address)
        fill = ray.remote(_fill)
        empty_ref = ray.put(empty)
        pending = [fill.remote(empty_ref, p, index.normalize) for p in paths]
        filled = []
        for i, ref in enumerate(pending):
            filled.append(ray.get(ref))
            if progress is not None:
                progress(i + 1, len(paths))
    else:
        filled = []
        for i, p in enumerate(paths):
            filled.append(_fill(empty, p, index.normalize))
            if progress is not None:
                progress(i + 1, len(paths))
    merged = faiss.deserialize_index(np.frombuffer(filled[0], dtype=np.uint8))
    offset = int(sizes[0])
    for blob, size in zip(filled[1:], sizes[1:], strict=True):
        _merge(merged, faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8)), offset)
        offset += int(size)
    result = VectorIndex.assemble(
        merged,
        "ivfpq",
        subject_ids=np.concatenate([e.subject_ids for e in sets]),
        prediction_times=np.concatenate([e.as_of for e in sets]),
        spec=spec,
        params=index.params,
        extra={"serializer_version": sets[0].serializer_version, "parts": len(sets)},
    )
    saved = result.save(out)
    return IndexBuildReport(
        out=Path(saved),
        kind="ivfpq",
        rows=len(result),
        dim=result.dim,
        seconds=time.perf_counter() - started,
        index_bytes=(Path(saved) / "index.faiss").stat().st_size,
        params=result.params.to_dict(),
    )
