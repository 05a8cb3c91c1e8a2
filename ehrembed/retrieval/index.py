"""VectorIndex: nearest-neighbour search over FAISS, with ids that name (subject, prediction time) rows.

Vectors are compared by inner product. Encoders that L2-normalise (``EncoderSpec.normalize``)
make that the cosine similarity; the index normalises again on add and search when the spec (or
``normalize=True``) says so, so a stray un-normalised query cannot skew scores.

Three kinds, chosen by collection size unless asked for (``kind=``):

- ``flat`` (``IndexFlatIP``): exact search, the default up to :data:`FLAT_MAX_AUTO` vectors.
- ``hnsw`` (``IndexHNSWFlat``, inner product): a graph index, up to :data:`HNSW_MAX_AUTO` vectors.
  Memory is the raw vectors plus ``~2·M`` int32 links per vector (M=16: about 1.09× the raw vectors
  at 384-d; M=32: 1.18×). ``efSearch`` trades latency for recall.
- ``ivfpq``: an inverted file over ``nlist`` k-means cells whose vectors are kept as 4-bit
  product-quantizer codes (``IVF{nlist},PQ{m}x4fs``, SIMD "fast scan"), re-ranked by a 6-bit
  scalar-quantized copy (``Refine(SQ6)``): about 0.23× the raw vectors at 384-d. ``nprobe`` cells
  are visited per query and ``k_factor·k`` candidates re-ranked. The default beyond HNSW's range.

Every row has an int64 id chosen by the caller (``from_embeddings`` numbers the rows of an
:class:`~ehrembed.encoders.embeddings.EmbeddingSet` 0..n-1) mapped to ``(subject_id,
prediction_time)`` in a rows table kept beside the FAISS index. FAISS itself labels rows by
position.

**Removal** uses tombstones for every kind (HNSW graphs cannot drop nodes, and one rule for all
kinds keeps positions stable): a removed row stays in the FAISS index but is never returned. On
CPU the search skips tombstones inside FAISS (an ``IDSelector``); on GPU it over-fetches and drops
them. Removed rows still take memory until the index is rebuilt from its embeddings
(``ehrembed index`` again); :attr:`VectorIndex.removed` says how many there are.

**Exclusions** (``search(..., exclude_ids=...)``) are filtered after the search with over-fetch:
the index asks FAISS for ``k`` plus the number of excluded rows, widening (more candidates, a
larger ``efSearch`` / ``nprobe``) until ``k`` results survive or the collection is exhausted, so
an excluded row is never returned and ``k`` results still come back whenever ``k`` rows remain.

**On disk** an index is a folder written atomically (built beside the target, renamed into place,
so a failed build or save leaves any previous index untouched): ``index.faiss``
(``faiss.write_index``), ``rows.parquet`` (id, subject_id, prediction_time, removed) and
``index.json`` (dim, metric, kind, parameters, encoder spec and fingerprint, counts, and the
SHA-256 of ``index.faiss``, verified on load).

With ``faiss-gpu`` and a visible GPU (``faiss.get_num_gpus() > 0``), exact (``flat``) searches
run on the GPU; HNSW and the fast-scan IVF-PQ index have no GPU implementation and stay on CPU.
CPU always works.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.encoders.base import EncoderSpec
from ehrembed.encoders.embeddings import PREDICTION_TIME, EmbeddingSet
from ehrembed.errors import InputError
from ehrembed.fsutil import atomic_dir, restore_interrupted, sha256_file

IndexKind = Literal["auto", "flat", "hnsw", "ivfpq"]
KINDS: tuple[str, ...] = ("auto", "flat", "hnsw", "ivfpq")

FLAT_MAX_AUTO = 50_000
"""``kind="auto"`` builds an exact index up to this many vectors."""
HNSW_MAX_AUTO = 2_000_000
"""``kind="auto"`` builds HNSW up to this many vectors and IVF-PQ beyond."""
IVFPQ_MIN_VECTORS = 256
"""IVF-PQ must be trained; fewer vectors than this make no useful codebooks."""

INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.parquet"
META_FILE = "index.json"
FORMAT = "ehrembed-vector-index/1"
METRIC = "inner_product"

ID = "id"
REMOVED = "removed"
_ADD_CHUNK = 65_536
_MAX_WIDEN_ROUNDS = 8

Progress = Callable[[int, int], None]
"""Called with (vectors added so far, total)."""


class VectorIndexError(InputError):
    """An index cannot be built, read or searched as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class IndexParams:
    """Build and search parameters. ``None`` fields are derived from the collection size and dim.

    HNSW: ``hnsw_m`` links per node, ``ef_construction`` build beam, ``ef_search`` query beam.
    IVF-PQ: ``nlist`` cells (default a power of two near ``2·sqrt(n)``), ``nprobe`` cells visited
    per query (default ``max(128, nlist/16)``, at most ``nlist``), ``pq_m`` 4-bit sub-quantizers
    (default ``dim/4``: 2 bytes per 8 dims), ``refine`` the re-ranking store (``SQ6``, ``SQ8``,
    ``SQ4``, ``Flat`` or ``none``), ``k_factor`` candidates re-ranked per result, ``max_train``
    vectors sampled for training.
    """

    hnsw_m: int = 16
    ef_construction: int = 64
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None
    refine: str = "SQ6"
    k_factor: int = 16
    max_train: int = 131_072
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hnsw_m", "ef_construction", "ef_search", "k_factor", "max_train"):
            if getattr(self, name) < 1:
                raise VectorIndexError(f"index parameter {name} must be at least 1, got {getattr(self, name)}")
        for name in ("nlist", "nprobe", "pq_m"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise VectorIndexError(f"index parameter {name} must be at least 1, got {value}")
        if self.refine not in ("none", "SQ4", "SQ6", "SQ8", "Flat"):
            raise VectorIndexError(f"refine must be one of none, SQ4, SQ6, SQ8, Flat; got {self.refine!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexParams:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def resolve_kind(kind: str, n: int) -> str:
    """The concrete kind ``auto`` means for ``n`` vectors (other kinds are returned as given)."""
    if kind not in KINDS:
        raise VectorIndexError(f"index kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if kind != "auto":
        return kind
    if n <= FLAT_MAX_AUTO:
        return "flat"
    return "hnsw" if n <= HNSW_MAX_AUTO else "ivfpq"


def default_nlist(n: int) -> int:
    """A power of two near ``2·sqrt(n)``, with at least 39 training vectors per cell."""
    target = max(1.0, 2.0 * np.sqrt(n))
    nlist = 1 << int(np.round(np.log2(target)))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return nlist


def default_nprobe(nlist: int) -> int:
    """Cells visited per query: ``max(128, nlist/16)``, at most ``nlist``.

    On clustered 384-d vectors (bench/index.py) 128 probes gave recall@10 ≈ 0.96 both at 100k
    vectors (512 cells) and at 1M (2,048 cells), at 0.4 and 1.7 ms per query on one thread.
    """
    return min(nlist, max(128, nlist // 16))


def default_pq_m(dim: int) -> int:
    """The largest divisor of ``dim`` not above ``dim/4`` (four dims per 4-bit sub-quantizer)."""
    target = max(1, dim // 4)
    for m in range(target, 0, -1):
        if dim % m == 0:
            return m
    return 1  # pragma: no cover - 1 always divides


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - a declared dependency of the ml extra
        raise VectorIndexError("faiss is not installed; install ehrembed[ml] (faiss-cpu) or faiss-gpu") from exc
    return faiss


def gpu_available() -> bool:
    """Whether this FAISS build has GPU support and sees a GPU."""
    faiss = _faiss()
    try:
        return bool(hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)
    except Exception:  # pragma: no cover - a broken CUDA runtime means CPU
        return False


def _normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


class VectorIndex:
    """int64 ids → vectors, searched by inner product; each id names a (subject_id, prediction_time) row.

    Build one with :meth:`from_embeddings` or :meth:`build`, or start empty and :meth:`add`. With
    ``kind="auto"`` (or ``ivfpq``, which must be trained) the FAISS index is made on the first
    :meth:`add`, sized for that batch.
    """

    def __init__(
        self,
        dim: int,
        kind: IndexKind | str = "auto",
        *,
        spec: EncoderSpec | None = None,
        normalize: bool | None = None,
        params: IndexParams | None = None,
        use_gpu: bool | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if dim < 1:
            raise VectorIndexError(f"index dim must be at least 1, got {dim}")
        if kind not in KINDS:
            raise VectorIndexError(f"index kind must be one of {', '.join(KINDS)}; got {kind!r}")
        if spec is not None and spec.dim != dim:
            raise VectorIndexError(f"index dim {dim} differs from the encoder's dim {spec.dim}")
        self.dim = dim
        self.requested_kind = kind
        self.spec = spec
        if normalize is None:
            normalize = spec.normalize if spec is not None else True
        self.normalize = normalize
        self.params = params or IndexParams()
        self.extra: dict[str, Any] = dict(extra or {})
        self.use_gpu = gpu_available() if use_gpu is None else (use_gpu and gpu_available())
        self.skip_removed_in_faiss = True
        """On CPU, skip removed rows inside FAISS (an ``IDSelector``); False drops them after an over-fetch."""
        self._kind: str | None = None if kind in ("auto", "ivfpq") else kind
        self._index: Any = None
        self._gpu_index: Any = None
        self._ids = np.empty(0, dtype=np.int64)
        self._subjects = np.empty(0, dtype=np.int64)
        self._times = np.empty(0, dtype="datetime64[us]")
        self._removed = np.empty(0, dtype=bool)
        self._lookup_cache: tuple[np.ndarray, np.ndarray] | None = None
        self._subject_cache: tuple[np.ndarray, np.ndarray] | None = None
        if self._kind is not None:
            self._index = self._new_index(self._kind, 0)

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        ids: np.ndarray | Sequence[int] | None = None,
        subject_ids: np.ndarray | Sequence[int] | None = None,
        prediction_times: np.ndarray | Sequence[Any] | None = None,
        kind: IndexKind | str = "auto",
        spec: EncoderSpec | None = None,
        normalize: bool | None = None,
        params: IndexParams | None = None,
        use_gpu: bool | None = None,
        extra: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> VectorIndex:
        """An index over ``vectors`` (ids default to 0..n-1, subject ids to the ids)."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise VectorIndexError(f"vectors must be a 2-D array, got shape {vectors.shape}")
        index = cls(vectors.shape[1], kind, spec=spec, normalize=normalize, params=params, use_gpu=use_gpu, extra=extra)
        n = vectors.shape[0]
        row_ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        index.add(row_ids, vectors, subject_ids=subject_ids, prediction_times=prediction_times, progress=progress)
        return index

    @classmethod
    def from_embeddings(
        cls,
        embeddings: EmbeddingSet,
        *,
        kind: IndexKind | str = "auto",
        params: IndexParams | None = None,
        use_gpu: bool | None = None,
        progress: Progress | None = None,
    ) -> VectorIndex:
        """Row ``i`` of the embedding set becomes id ``i`` (its subject_id and as-of time kept)."""
        extra = {
            "serializer_version": embeddings.serializer_version,
            "instruction": embeddings.instruction,
            "serializer": embeddings.extra.get("serializer"),
            "dataset": embeddings.extra.get("dataset"),
        }
        return cls.build(
            embeddings.vectors,
            subject_ids=embeddings.subject_ids,
            prediction_times=embeddings.as_of,
            kind=kind,
            spec=embeddings.spec,
            params=params,
            use_gpu=use_gpu,
            extra=extra,
            progress=progress,
        )

    @classmethod
    def assemble(
        cls,
        faiss_index: Any,
        kind: str,
        *,
        subject_ids: np.ndarray,
        prediction_times: np.ndarray,
        spec: EncoderSpec | None = None,
        params: IndexParams | None = None,
        extra: dict[str, Any] | None = None,
    ) -> VectorIndex:
        """Wrap a filled FAISS index (e.g. merged from shards) whose row ``i`` has id ``i``."""
        n = int(faiss_index.ntotal)
        if len(subject_ids) != n or len(prediction_times) != n:
            raise VectorIndexError(f"{len(subject_ids)} subject ids and {len(prediction_times)} times for {n} vectors")
        index = cls(int(faiss_index.d), kind, spec=spec, params=params, use_gpu=False, extra=extra)
        index._kind, index._index = kind, faiss_index
        index._ids = np.arange(n, dtype=np.int64)
        index._subjects = np.asarray(subject_ids, dtype=np.int64)
        index._times = np.asarray(prediction_times, dtype="datetime64[us]")
        index._removed = np.zeros(n, dtype=bool)
        index._invalidate()
        return index

    def train(self, sample: np.ndarray) -> None:
        """Train an empty ``ivfpq`` index on a sample (sized for ``params.nlist`` or the sample) before adding."""
        if self._index is not None and self.ntotal:
            raise VectorIndexError("the index already holds vectors; train an empty one")
        self._train(self._check_vectors(sample, "sample"))

    def faiss_index(self) -> Any:
        """The underlying FAISS index (for tools that build or merge indexes)."""
        return self._index

    def _new_index(self, kind: str, n: int) -> Any:
        faiss = _faiss()
        if kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.params.ef_construction
            index.hnsw.efSearch = self.params.ef_search
            return index
        nlist = self.params.nlist or default_nlist(n)
        pq_m = self.params.pq_m or default_pq_m(self.dim)
        if self.dim % pq_m:
            raise VectorIndexError(f"pq_m={pq_m} must divide the dim {self.dim}")
        refine = "" if self.params.refine == "none" else f",Refine({self.params.refine})"
        description = f"IVF{nlist},PQ{pq_m}x4fs{refine}"
        try:
            index = faiss.index_factory(self.dim, description, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise VectorIndexError(f"cannot make FAISS index {description!r}: {_faiss_message(exc)}") from exc
        self.params = dataclasses.replace(
            self.params, nlist=nlist, pq_m=pq_m, nprobe=min(nlist, self.params.nprobe or default_nprobe(nlist))
        )
        return index

    def _train(self, vectors: np.ndarray) -> None:
        n = vectors.shape[0]
        if n < IVFPQ_MIN_VECTORS:
            raise VectorIndexError(
                f"an ivfpq index is trained on its first batch, which needs at least {IVFPQ_MIN_VECTORS} vectors "
                f"(got {n}); use kind='flat' or 'hnsw' for small collections"
            )
        self._index = self._new_index("ivfpq", n)
        rng = np.random.default_rng(self.params.seed)
        take = np.sort(rng.choice(n, size=min(n, self.params.max_train), replace=False))
        sample = np.asarray(vectors[take], dtype=np.float32)
        sample = _normalize(sample) if self.normalize else np.ascontiguousarray(sample)
        try:
            self._index.train(sample)
        except RuntimeError as exc:
            raise VectorIndexError(f"training the ivfpq index failed: {_faiss_message(exc)}") from exc
        self._kind = "ivfpq"

    # --- facts ----------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """The concrete kind (``auto`` until the first add decides)."""
        return self._kind or self.requested_kind

    @property
    def ntotal(self) -> int:
        """Rows in the FAISS index, removed ones included."""
        return len(self._ids)

    @property
    def removed(self) -> int:
        return int(self._removed.sum())

    def __len__(self) -> int:
        """Rows that searches can return."""
        return self.ntotal - self.removed

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self.kind!r}, dim={self.dim}, rows={len(self)}, removed={self.removed})"

    @property
    def ids(self) -> np.ndarray:
        """Ids of the live rows, in insertion order."""
        return self._ids[~self._removed]

    def rows(self, *, include_removed: bool = False) -> pl.DataFrame:
        """id, subject_id, prediction_time (and removed) per row, in insertion order."""
        frame = pl.DataFrame(
            {
                ID: self._ids,
                s.SUBJECT_ID: self._subjects,
                PREDICTION_TIME: pl.Series(self._times, dtype=pl.Datetime("us")),
                REMOVED: self._removed,
            }
        )
        return frame if include_removed else frame.filter(~pl.col(REMOVED)).drop(REMOVED)

    def lookup(self, ids: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(subject_ids, prediction_times) of live ids; KeyError naming the first unknown id."""
        positions = self._positions(np.asarray(ids, dtype=np.int64))
        if (positions < 0).any():
            missing = int(np.asarray(ids, dtype=np.int64)[np.argmax(positions < 0)])
            raise KeyError(f"id {missing} is not in the index")
        return self._subjects[positions], self._times[positions]

    def ids_for_subject(self, subject_id: int) -> np.ndarray:
        """Live ids of one subject's rows, latest prediction time last (NaT first)."""
        if self._subject_cache is None:
            live = np.flatnonzero(~self._removed)
            order = np.lexsort((self._times[live].astype(np.int64), self._subjects[live]))
            self._subject_cache = (self._subjects[live][order], live[order])
        subjects, positions = self._subject_cache
        lo, hi = np.searchsorted(subjects, subject_id, "left"), np.searchsorted(subjects, subject_id, "right")
        return self._ids[positions[lo:hi]]

    def reconstruct(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Stored vectors of live ids (exact for flat and hnsw, the SQ re-ranking copy for ivfpq)."""
        positions = self._positions(np.asarray(ids, dtype=np.int64))
        if (positions < 0).any():
            raise KeyError(f"id {int(np.asarray(ids)[np.argmax(positions < 0)])} is not in the index")
        try:
            return np.stack([self._index.reconstruct(int(p)) for p in positions]).astype(np.float32)
        except RuntimeError as exc:
            raise VectorIndexError(
                f"this {self.kind} index cannot return stored vectors: {_faiss_message(exc)}"
            ) from exc

    # --- compatibility --------------------------------------------------------------------------

    def check_spec(self, spec: EncoderSpec | None) -> None:
        """Raise unless vectors from ``spec``'s encoder may be searched in (or added to) this index."""
        if spec is None:
            return
        if spec.dim != self.dim:
            raise VectorIndexError(
                f"encoder {spec.name} makes {spec.dim}-d vectors but the index holds {self.dim}-d vectors"
            )
        if self.spec is not None and spec.fingerprint() != self.spec.fingerprint():
            raise VectorIndexError(
                f"the index was built with encoder {self.spec.name} (fingerprint {self.spec.fingerprint()}) but "
                f"these vectors come from {spec.name} (fingerprint {spec.fingerprint()}); rebuild the index from "
                "embeddings of the same encoder (`ehrembed index`)"
            )

    def _check_vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        vectors = np.asarray(vectors)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2:
            raise VectorIndexError(f"{what} must be a 2-D array (n, dim), got shape {vectors.shape}")
        if vectors.shape[1] != self.dim:
            raise VectorIndexError(f"{what} have dim {vectors.shape[1]} but the index holds {self.dim}-d vectors")
        if not np.issubdtype(vectors.dtype, np.number):
            raise VectorIndexError(f"{what} must be numeric, got dtype {vectors.dtype}")
        return vectors

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(vectors, dtype=np.float32)
        if not np.isfinite(out).all():
            raise VectorIndexError("vectors contain NaN or infinite values")
        return _normalize(out) if self.normalize else out

    # --- id bookkeeping -------------------------------------------------------------------------

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Position of each live id, -1 where the id is unknown or removed."""
        if self._lookup_cache is None:
            live = np.flatnonzero(~self._removed)
            order = np.argsort(self._ids[live], kind="stable")
            self._lookup_cache = (self._ids[live][order], live[order])
        sorted_ids, positions = self._lookup_cache
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        if not len(sorted_ids):
            return np.full(ids.shape, -1, dtype=np.int64)
        where = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        return np.where(sorted_ids[where] == ids, positions[where], -1).astype(np.int64)

    def _invalidate(self) -> None:
        self._lookup_cache = None
        self._subject_cache = None
        self._gpu_index = None

    # --- mutation -------------------------------------------------------------------------------

    def add(
        self,
        ids: np.ndarray | Sequence[int],
        vectors: np.ndarray,
        *,
        subject_ids: np.ndarray | Sequence[int] | None = None,
        prediction_times: np.ndarray | Sequence[Any] | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Add rows. Ids must be new (a removed id may be added again); subject ids default to the ids."""
        vectors = self._check_vectors(vectors, "vectors")
        row_ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        n = vectors.shape[0]
        if len(row_ids) != n:
            raise VectorIndexError(f"{len(row_ids)} ids for {n} vectors")
        if n == 0:
            return
        if len(np.unique(row_ids)) != n:
            raise VectorIndexError("ids must be unique within one add")
        clash = self._positions(row_ids) >= 0
        if clash.any():
            raise VectorIndexError(f"id {int(row_ids[np.argmax(clash)])} is already in the index; remove it first")
        subjects = row_ids if subject_ids is None else np.asarray(subject_ids, dtype=np.int64)
        times = (
            np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
            if prediction_times is None
            else np.asarray(prediction_times, dtype="datetime64[us]")
        )
        if len(subjects) != n or len(times) != n:
            raise VectorIndexError(f"{len(subjects)} subject ids and {len(times)} times for {n} vectors")
        if self._index is None:
            self._kind = resolve_kind(self.requested_kind, n)
            if self._kind == "ivfpq":
                self._train(vectors)
            else:
                self._index = self._new_index(self._kind, n)
        faiss_index: Any = self._index
        for start in range(0, n, _ADD_CHUNK):
            chunk = self._prepare(vectors[start : start + _ADD_CHUNK])
            faiss_index.add(chunk)
            if progress is not None:
                progress(min(n, start + _ADD_CHUNK), n)
        self._ids = np.concatenate([self._ids, row_ids])
        self._subjects = np.concatenate([self._subjects, subjects])
        self._times = np.concatenate([self._times, times])
        self._removed = np.concatenate([self._removed, np.zeros(n, dtype=bool)])
        self._invalidate()

    def add_embeddings(self, embeddings: EmbeddingSet, ids: np.ndarray | Sequence[int] | None = None) -> None:
        """Add an embedding set's rows (ids default to continuing after the largest id so far)."""
        self.check_spec(embeddings.spec)
        if ids is None:
            first = int(self._ids.max()) + 1 if len(self._ids) else 0
            ids = np.arange(first, first + len(embeddings), dtype=np.int64)
        self.add(ids, embeddings.vectors, subject_ids=embeddings.subject_ids, prediction_times=embeddings.as_of)

    def remove(self, ids: np.ndarray | Sequence[int] | int) -> int:
        """Tombstone live ids (unknown ones are ignored); returns how many were removed."""
        positions = self._positions(np.atleast_1d(np.asarray(ids, dtype=np.int64)))
        positions = np.unique(positions[positions >= 0])
        self._removed[positions] = True
        self._invalidate()
        return len(positions)

    # --- search ---------------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude_ids: Iterable[int] | Sequence[Iterable[int]] | None = None,
        *,
        spec: EncoderSpec | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best live rows per query: ``(ids int64 (nq, k), scores float32 (nq, k))``, best first.

        ``exclude_ids`` is one collection of ids excluded for every query, or one collection per
        query (a sequence of ``nq`` iterables). Excluded and removed rows are never returned; where
        fewer than ``k`` rows remain after exclusions, the rest of the row is id -1, score -inf.
        ``spec`` (the queries' encoder) is checked against the index's encoder first.
        """
        self.check_spec(spec)
        queries = self._check_vectors(queries, "queries")
        live = len(self)
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise VectorIndexError(f"k must be an integer, got {k!r}")
        if k <= 0:
            raise VectorIndexError(f"k must be at least 1, got {k}")
        if live == 0:
            raise VectorIndexError("the index is empty")
        if k > live:
            raise VectorIndexError(f"k={k} is larger than the {live} rows in the index")
        q = self._prepare(queries)
        nq = q.shape[0]
        exclusions = self._exclusions(exclude_ids, nq)
        out_ids = np.full((nq, k), -1, dtype=np.int64)
        out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
        gpu = self._gpu()
        use_selector = self.removed > 0 and gpu is None and self.skip_removed_in_faiss
        tombstones = 0 if use_selector else self.removed
        pending = np.arange(nq)
        max_excl = max((len(e) for e in exclusions), default=0)
        fetch = min(self.ntotal, k + tombstones + max_excl)
        widen = 1
        for _ in range(_MAX_WIDEN_ROUNDS + 1):
            scores, labels = self._raw_search(q[pending], fetch, widen, gpu, use_selector)
            exhausted = fetch >= self.ntotal and self._exhaustive(widen)
            still: list[int] = []
            for row, qi in enumerate(pending.tolist()):
                found = labels[row]
                keep = found >= 0
                if not use_selector and tombstones:
                    keep &= ~self._removed[np.maximum(found, 0)]
                if len(exclusions[qi]):
                    keep &= ~np.isin(found, exclusions[qi])
                chosen = found[keep][:k]
                need = min(k, live - len(exclusions[qi]))
                if len(chosen) >= need or exhausted:
                    out_ids[qi, : len(chosen)] = self._ids[chosen]
                    out_scores[qi, : len(chosen)] = scores[row][keep][: len(chosen)]
                else:
                    still.append(qi)
            if not still:
                break
            pending = np.asarray(still)
            fetch = min(self.ntotal, fetch * 2)
            widen *= 2
        else:  # pragma: no cover - only reachable if FAISS keeps returning too few rows
            for qi in pending.tolist():
                scores, labels = self._raw_search(q[qi : qi + 1], self.ntotal, widen, gpu, use_selector)
                keep = labels[0] >= 0
                if not use_selector and tombstones:
                    keep &= ~self._removed[np.maximum(labels[0], 0)]
                keep &= ~np.isin(labels[0], exclusions[qi])
                chosen = labels[0][keep][:k]
                out_ids[qi, : len(chosen)] = self._ids[chosen]
                out_scores[qi, : len(chosen)] = scores[0][keep][: len(chosen)]
        return out_ids, out_scores

    def _exclusions(self, exclude_ids: Iterable[int] | Sequence[Iterable[int]] | None, nq: int) -> list[np.ndarray]:
        """Live positions to drop, per query (sorted, unique)."""
        none = np.empty(0, dtype=np.int64)
        if exclude_ids is None:
            return [none] * nq
        items = list(exclude_ids)
        if items and all(not np.isscalar(item) and not isinstance(item, str) for item in items):
            if len(items) != nq:
                raise VectorIndexError(f"exclude_ids has {len(items)} collections for {nq} queries")
            per_query = [self._live_positions(item) for item in cast(list[Iterable[int]], items)]
            return per_query
        shared = self._live_positions(cast(list[int], items))
        return [shared] * nq

    def _live_positions(self, ids: Iterable[int]) -> np.ndarray:
        array = np.fromiter((int(i) for i in ids), dtype=np.int64)
        if not len(array):
            return np.empty(0, dtype=np.int64)
        positions = self._positions(array)
        return np.unique(positions[positions >= 0])

    def _exhaustive(self, widen: int) -> bool:
        """Whether a search with this widening visits every row (so a short result is final)."""
        if self.kind == "flat":
            return True
        if self.kind == "hnsw":
            return self.params.ef_search * widen >= self.ntotal
        nlist, nprobe = self.params.nlist or 1, self.params.nprobe or 1
        return nprobe * widen >= nlist

    def _search_params(self, fetch: int, widen: int, selector: Any) -> Any:
        faiss = _faiss()
        if self.kind == "flat":
            return None if selector is None else faiss.SearchParameters(sel=selector)
        if self.kind == "hnsw":
            ef = max(fetch, self.params.ef_search * widen)
            params = faiss.SearchParametersHNSW(efSearch=int(min(ef, max(self.ntotal, fetch))))
        else:
            nlist = self.params.nlist or 1
            nprobe = int(min(nlist, (self.params.nprobe or 1) * widen))
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            if selector is not None:
                params.sel = selector
            if self.params.refine != "none":
                return faiss.IndexRefineSearchParameters(k_factor=float(self.params.k_factor), base_index_params=params)
            return params
        if selector is not None:
            params.sel = selector
        return params

    def _raw_search(
        self, q: np.ndarray, fetch: int, widen: int, gpu: Any, use_selector: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search for ``fetch`` rows; labels are positions (-1 where FAISS found nothing)."""
        if gpu is not None:
            scores, labels = gpu.search(q, fetch)
            return scores, labels
        faiss = _faiss()
        selector = None
        keep_alive: list[Any] = []
        if use_selector:
            batch = faiss.IDSelectorBatch(np.flatnonzero(self._removed).astype(np.int64))
            selector = faiss.IDSelectorNot(batch)
            keep_alive = [batch, selector]
        params = self._search_params(fetch, widen, selector)
        try:
            scores, labels = self._index.search(q, fetch, params=params)
        except RuntimeError as exc:
            raise VectorIndexError(f"FAISS search failed: {_faiss_message(exc)}") from exc
        del keep_alive
        return scores, labels

    def _gpu(self) -> Any:
        """A GPU copy of an exact index when a GPU is in use (None otherwise)."""
        if not self.use_gpu or self.kind != "flat" or self._index is None:
            return None
        if self._gpu_index is None:
            faiss = _faiss()
            try:
                self._gpu_index = faiss.index_cpu_to_all_gpus(self._index)
            except (RuntimeError, AttributeError):  # pragma: no cover - GPU hosts only
                self.use_gpu = False
                return None
        return self._gpu_index  # pragma: no cover - GPU hosts only

    # --- persistence ----------------------------------------------------------------------------

    def metadata(self, *, index_sha256: str | None = None, index_bytes: int | None = None) -> dict[str, Any]:
        faiss = _faiss()
        return {
            "format": FORMAT,
            "dim": self.dim,
            "metric": METRIC,
            "kind": self.kind,
            "requested_kind": self.requested_kind,
            "normalize": self.normalize,
            "params": self.params.to_dict(),
            "spec": self.spec.to_dict() if self.spec is not None else None,
            "spec_fingerprint": self.spec.fingerprint() if self.spec is not None else None,
            "count": self.ntotal,
            "live": len(self),
            "removed": self.removed,
            "index_file": INDEX_FILE,
            "index_sha256": index_sha256,
            "index_bytes": index_bytes,
            "faiss_version": getattr(faiss, "__version__", None),
            "created_at": dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
            "extra": self.extra,
        }

    def save(self, path: Path | str, *, overwrite: bool = True) -> Path:
        """Write the index folder atomically; a failure leaves any previous index at ``path`` intact."""
        if self._index is None:
            raise VectorIndexError("the index is empty; add vectors before saving")
        faiss = _faiss()
        path = Path(path)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            partial = tmp / f"{INDEX_FILE}.partial"
            faiss.write_index(self._index, str(partial))
            os.replace(partial, tmp / INDEX_FILE)
            self.rows(include_removed=True).write_parquet(tmp / ROWS_FILE)
            digest = sha256_file(tmp / INDEX_FILE)
            size = (tmp / INDEX_FILE).stat().st_size
            meta = self.metadata(index_sha256=digest, index_bytes=size)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        return path

    @classmethod
    def load(
        cls, path: Path | str, *, spec: EncoderSpec | None = None, use_gpu: bool | None = None, verify: bool = True
    ) -> VectorIndex:
        """Read an index folder, verifying its checksum (and, with ``spec``, that it matches that encoder)."""
        faiss = _faiss()
        path = Path(path)
        restore_interrupted(path)
        if not path.exists():
            raise VectorIndexError(f"index {path} not found")
        meta_path, index_path, rows_path = path / META_FILE, path / INDEX_FILE, path / ROWS_FILE
        if not path.is_dir() or not meta_path.is_file():
            raise VectorIndexError(f"{path} is not an index folder (no {META_FILE}); build one with `ehrembed index`")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise VectorIndexError(f"{meta_path} is not valid JSON ({exc}); rebuild the index") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "dim" not in meta or "kind" not in meta:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise VectorIndexError(
                f"{path}: not an index sidecar of format {FORMAT} (found {found!r}); rebuild the index"
            )
        if not index_path.is_file() or index_path.stat().st_size == 0:
            raise VectorIndexError(f"{index_path} is missing or empty; rebuild the index")
        if verify and sha256_file(index_path) != meta.get("index_sha256"):
            raise VectorIndexError(
                f"{index_path} is corrupt (its checksum differs from {META_FILE}); rebuild the index"
            )
        try:
            raw = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            raise VectorIndexError(f"{index_path} is not a readable FAISS index: {_faiss_message(exc)}") from exc
        dim = int(meta["dim"])
        if raw.d != dim:
            raise VectorIndexError(f"{index_path} holds {raw.d}-d vectors but {META_FILE} says {dim}")
        try:
            rows = pl.read_parquet(rows_path)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise VectorIndexError(f"{rows_path} is missing or unreadable ({exc}); rebuild the index") from exc
        if rows.height != raw.ntotal:
            raise VectorIndexError(
                f"{path}: {rows.height} rows in {ROWS_FILE} but {raw.ntotal} vectors in {INDEX_FILE}"
            )
        stored_spec = EncoderSpec.from_dict(meta["spec"]) if meta.get("spec") else None
        index = cls(
            dim,
            str(meta.get("requested_kind") or meta["kind"]),
            spec=stored_spec,
            normalize=bool(meta.get("normalize", True)),
            params=IndexParams.from_dict(meta.get("params") or {}),
            use_gpu=use_gpu,
            extra=meta.get("extra") or {},
        )
        index._kind = meta["kind"]
        index._index = raw
        index._ids = rows.get_column(ID).to_numpy().astype(np.int64)
        index._subjects = rows.get_column(s.SUBJECT_ID).to_numpy().astype(np.int64)
        index._times = rows.get_column(PREDICTION_TIME).cast(pl.Datetime("us")).to_numpy().astype("datetime64[us]")
        index._removed = rows.get_column(REMOVED).to_numpy().astype(bool)
        index._invalidate()
        index.check_spec(spec)
        return index


@dataclass(frozen=True)
class IndexBuildReport:
    """What :func:`build_index` did."""

    out: Path
    kind: str
    rows: int
    dim: int
    seconds: float
    index_bytes: int
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out"] = str(self.out)
        data["seconds"] = round(self.seconds, 3)
        return data


def build_index(
    embeddings: EmbeddingSet,
    out: Path | str,
    *,
    kind: IndexKind | str = "auto",
    params: IndexParams | None = None,
    progress: Progress | None = None,
) -> IndexBuildReport:
    """Index an embedding set and save it at ``out`` (atomically: a failed build keeps any old index)."""
    import time

    started = time.perf_counter()
    index = VectorIndex.from_embeddings(embeddings, kind=kind, params=params, progress=progress)
    out = index.save(out)
    meta = json.loads((Path(out) / META_FILE).read_text())
    return IndexBuildReport(
        out=Path(out),
        kind=index.kind,
        rows=len(index),
        dim=index.dim,
        seconds=time.perf_counter() - started,
        index_bytes=int(meta["index_bytes"]),
        params=index.params.to_dict(),
    )


def _faiss_message(exc: BaseException) -> str:
    """FAISS errors carry a C++ trace; keep the first meaningful line."""
    text = str(exc).strip()
    for line in text.splitlines():
        if "Error" in line or "error" in line or "failed" in line:
            return line.strip()
    return text.splitlines()[0] if text else type(exc).__name__
