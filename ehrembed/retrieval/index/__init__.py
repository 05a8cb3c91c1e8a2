"""VectorIndex: nearest-neighbour search over FAISS, with ids that name (subject, prediction time) rows.

One concept a module: ``params`` (kinds, sizes, parameters), ``backend`` (FAISS: loading, index
factory, search parameters), ``storage`` (the folder on disk), ``vector_index`` (the row table,
tombstones and search rules), ``build`` (embedding set → saved index).

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

from ehrembed.retrieval.index.backend import _faiss, gpu_available
from ehrembed.retrieval.index.build import IndexBuildReport, build_index
from ehrembed.retrieval.index.params import (
    FLAT_MAX_AUTO,
    HNSW_MAX_AUTO,
    IVFPQ_MIN_VECTORS,
    KINDS,
    IndexKind,
    IndexParams,
    VectorIndexError,
    default_nlist,
    default_nprobe,
    default_pq_m,
    resolve_kind,
)
from ehrembed.retrieval.index.storage import FORMAT, ID, INDEX_FILE, META_FILE, METRIC, REMOVED, ROWS_FILE
from ehrembed.retrieval.index.vector_index import Progress, VectorIndex

__all__ = [
    "FLAT_MAX_AUTO",
    "FORMAT",
    "HNSW_MAX_AUTO",
    "ID",
    "INDEX_FILE",
    "IVFPQ_MIN_VECTORS",
    "KINDS",
    "META_FILE",
    "METRIC",
    "REMOVED",
    "ROWS_FILE",
    "IndexBuildReport",
    "IndexKind",
    "IndexParams",
    "Progress",
    "VectorIndex",
    "VectorIndexError",
    "_faiss",
    "build_index",
    "default_nlist",
    "default_nprobe",
    "default_pq_m",
    "gpu_available",
    "resolve_kind",
]
