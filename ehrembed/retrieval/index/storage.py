"""An index on disk: ``index.faiss``, ``rows.parquet`` and ``index.json``, written atomically, verified on load.

``rows.parquet`` holds one row per FAISS position: ``id``, ``subject_id``, ``prediction_time`` and
``removed`` (the tombstone). ``index.json`` holds the dim, metric, kind, parameters, the encoder spec
and its fingerprint, the counts and the SHA-256 of ``index.faiss`` (checked on load).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.encoders.base import EncoderSpec
from ehrembed.encoders.embeddings import PREDICTION_TIME
from ehrembed.fsutil import atomic_dir, restore_interrupted, sha256_file
from ehrembed.retrieval.index.backend import _faiss, _faiss_message
from ehrembed.retrieval.index.params import IndexParams, VectorIndexError

if TYPE_CHECKING:
    from ehrembed.retrieval.index.vector_index import VectorIndex

INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.parquet"
META_FILE = "index.json"
FORMAT = "ehrembed-vector-index/1"
METRIC = "inner_product"
ID = "id"
REMOVED = "removed"


def index_metadata(
    index: VectorIndex, *, index_sha256: str | None = None, index_bytes: int | None = None
) -> dict[str, Any]:
    """The ``index.json`` sidecar of ``index``."""
    faiss = _faiss()
    return {
        "format": FORMAT,
        "dim": index.dim,
        "metric": METRIC,
        "kind": index.kind,
        "requested_kind": index.requested_kind,
        "normalize": index.normalize,
        "params": index.params.to_dict(),
        "spec": index.spec.to_dict() if index.spec is not None else None,
        "spec_fingerprint": index.spec.fingerprint() if index.spec is not None else None,
        "count": index.ntotal,
        "live": len(index),
        "removed": index.removed,
        "index_file": INDEX_FILE,
        "index_sha256": index_sha256,
        "index_bytes": index_bytes,
        "faiss_version": getattr(faiss, "__version__", None),
        "created_at": dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
        "extra": index.extra,
    }


def save_index(index: VectorIndex, path: Path | str, *, overwrite: bool = True) -> Path:
    """Write the index folder atomically; a failure leaves any previous index at ``path`` intact."""
    raw = index.faiss_index()
    if raw is None:
        raise VectorIndexError("the index is empty; add vectors before saving")
    faiss = _faiss()
    path = Path(path)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        partial = tmp / f"{INDEX_FILE}.partial"
        faiss.write_index(raw, str(partial))
        os.replace(partial, tmp / INDEX_FILE)
        index.rows(include_removed=True).write_parquet(tmp / ROWS_FILE)
        digest = sha256_file(tmp / INDEX_FILE)
        size = (tmp / INDEX_FILE).stat().st_size
        meta = index_metadata(index, index_sha256=digest, index_bytes=size)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return path


def read_index(path: Path | str, *, verify: bool = True) -> tuple[dict[str, Any], Any, pl.DataFrame]:
    """``(index.json, the FAISS index, rows)`` of an index folder, each checked (VectorIndexError saying why)."""
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
        raise VectorIndexError(f"{path}: not an index sidecar of format {FORMAT} (found {found!r}); rebuild the index")
    if not index_path.is_file() or index_path.stat().st_size == 0:
        raise VectorIndexError(f"{index_path} is missing or empty; rebuild the index")
    if verify and sha256_file(index_path) != meta.get("index_sha256"):
        raise VectorIndexError(f"{index_path} is corrupt (its checksum differs from {META_FILE}); rebuild the index")
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
        raise VectorIndexError(f"{path}: {rows.height} rows in {ROWS_FILE} but {raw.ntotal} vectors in {INDEX_FILE}")
    return meta, raw, rows


def index_arguments(meta: dict[str, Any]) -> dict[str, Any]:
    """``VectorIndex.__init__`` keyword arguments recorded in ``index.json`` (besides dim and kind)."""
    return {
        "spec": EncoderSpec.from_dict(meta["spec"]) if meta.get("spec") else None,
        "normalize": bool(meta.get("normalize", True)),
        "params": IndexParams.from_dict(meta.get("params") or {}),
        "extra": meta.get("extra") or {},
    }


def row_arrays(rows: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, subject ids, prediction times, removed)`` of a rows table, as the index keeps them."""
    return (
        rows.get_column(ID).to_numpy().astype(np.int64),
        rows.get_column(s.SUBJECT_ID).to_numpy().astype(np.int64),
        rows.get_column(PREDICTION_TIME).cast(pl.Datetime("us")).to_numpy().astype("datetime64[us]"),
        rows.get_column(REMOVED).to_numpy().astype(bool),
    )
