"""FAISS behind the index: loading it, making an index of a kind, per-search parameters, its errors.

Kept apart from :class:`~ehrembed.retrieval.index.vector_index.VectorIndex` so the row table and the
search rules read without FAISS's factory strings and parameter classes in the way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ehrembed.retrieval.index.params import (
    IndexParams,
    VectorIndexError,
    default_nlist,
    default_nprobe,
    default_pq_m,
)


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


def new_faiss_index(kind: str, dim: int, n: int, params: IndexParams) -> tuple[Any, IndexParams]:
    """An empty FAISS index of ``kind`` for ``dim``-d vectors (IVF-PQ sized for ``n``), and the resolved params."""
    faiss = _faiss()
    if kind == "flat":
        return faiss.IndexFlatIP(dim), params
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
        return index, params
    nlist = params.nlist or default_nlist(n)
    pq_m = params.pq_m or default_pq_m(dim)
    if dim % pq_m:
        raise VectorIndexError(f"pq_m={pq_m} must divide the dim {dim}")
    refine = "" if params.refine == "none" else f",Refine({params.refine})"
    description = f"IVF{nlist},PQ{pq_m}x4fs{refine}"
    try:
        index = faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise VectorIndexError(f"cannot make FAISS index {description!r}: {_faiss_message(exc)}") from exc
    resolved = dataclasses.replace(
        params, nlist=nlist, pq_m=pq_m, nprobe=min(nlist, params.nprobe or default_nprobe(nlist))
    )
    return index, resolved


def exhaustive(kind: str, params: IndexParams, ntotal: int, widen: int) -> bool:
    """Whether a search with this widening visits every row (so a short result is final)."""
    if kind == "flat":
        return True
    if kind == "hnsw":
        return params.ef_search * widen >= ntotal
    nlist, nprobe = params.nlist or 1, params.nprobe or 1
    return nprobe * widen >= nlist


def search_parameters(kind: str, params: IndexParams, ntotal: int, fetch: int, widen: int, selector: Any) -> Any:
    """FAISS search parameters for one round: the beam / cells widened ``widen`` times, the tombstone selector."""
    faiss = _faiss()
    if kind == "flat":
        return None if selector is None else faiss.SearchParameters(sel=selector)
    if kind == "hnsw":
        ef = max(fetch, params.ef_search * widen)
        hnsw = faiss.SearchParametersHNSW(efSearch=int(min(ef, max(ntotal, fetch))))
        if selector is not None:
            hnsw.sel = selector
        return hnsw
    nlist = params.nlist or 1
    ivf = faiss.SearchParametersIVF(nprobe=int(min(nlist, (params.nprobe or 1) * widen)))
    if selector is not None:
        ivf.sel = selector
    if params.refine != "none":
        return faiss.IndexRefineSearchParameters(k_factor=float(params.k_factor), base_index_params=ivf)
    return ivf


def _faiss_message(exc: BaseException) -> str:
    """FAISS errors carry a C++ trace; keep the first meaningful line."""
    text = str(exc).strip()
    for line in text.splitlines():
        if "Error" in line or "error" in line or "failed" in line:
            return line.strip()
    return text.splitlines()[0] if text else type(exc).__name__
