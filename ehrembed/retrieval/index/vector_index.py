"""The index itself: a FAISS index plus the row table (ids, subjects, times, tombstones) and the search rules.

See :mod:`ehrembed.retrieval.index` for the kinds, removal, exclusions and the on-disk layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ehrembed.encoders.base import EncoderSpec
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.retrieval.index.backend import (
    _faiss,
    _faiss_message,
    _normalize,
    exhaustive,
    gpu_available,
    new_faiss_index,
    search_parameters,
)
from ehrembed.retrieval.index.params import (
    IVFPQ_MIN_VECTORS,
    KINDS,
    IndexKind,
    IndexParams,
    VectorIndexError,
    check_vectors,
    resolve_kind,
)
from ehrembed.retrieval.index.rows import RowTable
from ehrembed.retrieval.index.storage import (
    index_arguments,
    index_metadata,
    read_index,
    row_arrays,
    save_index,
)

_ADD_CHUNK = 65_536
_MAX_WIDEN_ROUNDS = 8

Progress = Callable[[int, int], None]
"""Called with (vectors added so far, total)."""


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
        self._rows = RowTable()
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
        normalize: bool | None = None,
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
            normalize=normalize,
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
        index._rows = RowTable(np.arange(n, dtype=np.int64), subject_ids, prediction_times)
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
        index, self.params = new_faiss_index(kind, self.dim, n, self.params)
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
        return len(self._rows)

    @property
    def removed(self) -> int:
        return self._rows.n_removed

    def __len__(self) -> int:
        """Rows that searches can return."""
        return self.ntotal - self.removed

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self.kind!r}, dim={self.dim}, rows={len(self)}, removed={self.removed})"

    @property
    def ids(self) -> np.ndarray:
        """Ids of the live rows, in insertion order."""
        return self._rows.live_ids

    def rows(self, *, include_removed: bool = False) -> pl.DataFrame:
        """id, subject_id, prediction_time (and removed) per row, in insertion order."""
        return self._rows.frame(include_removed=include_removed)

    def lookup(self, ids: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(subject_ids, prediction_times) of live ids; KeyError naming the first unknown id."""
        return self._rows.lookup(ids)

    def ids_for_subject(self, subject_id: int) -> np.ndarray:
        """Live ids of one subject's rows, latest prediction time last (NaT first)."""
        return self._rows.ids_for_subject(subject_id)

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
        return check_vectors(vectors, self.dim, what)

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(vectors, dtype=np.float32)
        if not np.isfinite(out).all():
            raise VectorIndexError("vectors contain NaN or infinite values")
        return _normalize(out) if self.normalize else out

    # --- id bookkeeping -------------------------------------------------------------------------

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Position of each live id, -1 where the id is unknown or removed."""
        return self._rows.positions(ids)

    def _invalidate(self) -> None:
        self._rows.invalidate()
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
        self._rows.append(row_ids, subjects, times)
        self._invalidate()

    def add_embeddings(self, embeddings: EmbeddingSet, ids: np.ndarray | Sequence[int] | None = None) -> None:
        """Add an embedding set's rows (ids default to continuing after the largest id so far)."""
        self.check_spec(embeddings.spec)
        if ids is None:
            first = self._rows.next_id()
            ids = np.arange(first, first + len(embeddings), dtype=np.int64)
        self.add(ids, embeddings.vectors, subject_ids=embeddings.subject_ids, prediction_times=embeddings.as_of)

    def remove(self, ids: np.ndarray | Sequence[int] | int) -> int:
        """Tombstone live ids (unknown ones are ignored); returns how many were removed."""
        count = self._rows.tombstone(ids)
        self._invalidate()
        return count

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
        exclusions = self._rows.exclusions(exclude_ids, nq)
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
                    keep &= ~self._rows.removed[np.maximum(found, 0)]
                if len(exclusions[qi]):
                    keep &= ~np.isin(found, exclusions[qi])
                chosen = found[keep][:k]
                need = min(k, live - len(exclusions[qi]))
                if len(chosen) >= need or exhausted:
                    out_ids[qi, : len(chosen)] = self._rows.ids[chosen]
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
                    keep &= ~self._rows.removed[np.maximum(labels[0], 0)]
                keep &= ~np.isin(labels[0], exclusions[qi])
                chosen = labels[0][keep][:k]
                out_ids[qi, : len(chosen)] = self._rows.ids[chosen]
                out_scores[qi, : len(chosen)] = scores[0][keep][: len(chosen)]
        return out_ids, out_scores

    def _exhaustive(self, widen: int) -> bool:
        """Whether a search with this widening visits every row (so a short result is final)."""
        return exhaustive(self.kind, self.params, self.ntotal, widen)

    def _search_params(self, fetch: int, widen: int, selector: Any) -> Any:
        return search_parameters(self.kind, self.params, self.ntotal, fetch, widen, selector)

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
            batch = faiss.IDSelectorBatch(np.flatnonzero(self._rows.removed).astype(np.int64))
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
        """The ``index.json`` sidecar (see :mod:`~ehrembed.retrieval.index.storage`)."""
        return index_metadata(self, index_sha256=index_sha256, index_bytes=index_bytes)

    def save(self, path: Path | str, *, overwrite: bool = True) -> Path:
        """Write the index folder atomically; a failure leaves any previous index at ``path`` intact."""
        return save_index(self, path, overwrite=overwrite)

    @classmethod
    def load(
        cls, path: Path | str, *, spec: EncoderSpec | None = None, use_gpu: bool | None = None, verify: bool = True
    ) -> VectorIndex:
        """Read an index folder, verifying its checksum (and, with ``spec``, that it matches that encoder)."""
        meta, raw, rows = read_index(path, verify=verify)
        kind = str(meta.get("requested_kind") or meta["kind"])
        index = cls(int(meta["dim"]), kind, use_gpu=use_gpu, **index_arguments(meta))
        index._kind, index._index = meta["kind"], raw
        index._rows = RowTable(*row_arrays(rows))
        index._invalidate()
        index.check_spec(spec)
        return index
