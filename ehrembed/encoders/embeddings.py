"""EmbeddingSet: vectors with the rows they describe and the encoder that made them.

On disk an EmbeddingSet is a folder (``vectors.npy`` memory-mappable, ``rows.parquet`` with
subject_id and as_of, ``embedding.json`` with the encoder spec and serializer version), written
atomically; or, for analysts, a single Parquet file with subject_id, prediction_time and a
fixed-size list vector column (the spec rides along in the Parquet schema metadata).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ehrembed import schema as s
from ehrembed.encoders.base import EncoderError, EncoderSpec
from ehrembed.fsutil import atomic_dir, atomic_write_bytes, restore_interrupted

VECTORS_FILE = "vectors.npy"
ROWS_FILE = "rows.parquet"
META_FILE = "embedding.json"
PREDICTION_TIME = "prediction_time"
VECTOR = "vector"
_META_KEY = b"ehrembed.embedding"


@dataclass(frozen=True)
class EmbeddingSet:
    """``vectors[i]`` embeds subject ``subject_ids[i]`` as of ``as_of[i]``."""

    subject_ids: np.ndarray  # int64 (n,)
    as_of: np.ndarray  # datetime64[us] (n,)
    vectors: np.ndarray  # float32 (n, dim); may be a read-only memory map
    spec: EncoderSpec
    serializer_version: str
    instruction: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.subject_ids)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != n or len(self.as_of) != n:
            raise EncoderError(
                f"embedding set is inconsistent: {n} ids, {len(self.as_of)} times, vectors {self.vectors.shape}"
            )
        if self.vectors.shape[1] != self.spec.dim:
            raise EncoderError(f"vectors have dim {self.vectors.shape[1]} but the encoder spec says {self.spec.dim}")

    def __len__(self) -> int:
        return len(self.subject_ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def page(self, offset: int, limit: int | None = None) -> EmbeddingSet:
        """Rows ``offset`` to ``offset + limit`` (all the rest without a limit), without copying the vectors."""
        if offset < 0 or (limit is not None and limit < 0):
            raise EncoderError(f"offset and limit must not be negative (got {offset}, {limit})")
        stop = len(self) if limit is None else min(len(self), offset + limit)
        window = slice(offset, stop)
        return dataclasses.replace(
            self, subject_ids=self.subject_ids[window], as_of=self.as_of[window], vectors=self.vectors[window]
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "spec_fingerprint": self.spec.fingerprint(),
            "serializer_version": self.serializer_version,
            "instruction": self.instruction,
            "count": len(self),
            "dim": self.dim,
            "extra": self.extra,
        }

    def rows(self) -> pl.DataFrame:
        return pl.DataFrame(
            {s.SUBJECT_ID: self.subject_ids.astype(np.int64), PREDICTION_TIME: self.as_of.astype("datetime64[us]")}
        )

    def save(self, path: Path | str, *, overwrite: bool = True) -> Path:
        """Write atomically: a folder, or one Parquet file when ``path`` ends in ``.parquet``."""
        path = Path(path)
        if path.suffix == ".parquet":
            return self.to_parquet(path)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            np.save(tmp / VECTORS_FILE, np.ascontiguousarray(self.vectors, dtype=np.float32))
            self.rows().write_parquet(tmp / ROWS_FILE)
            (tmp / META_FILE).write_text(json.dumps(self.metadata(), indent=2, default=str) + "\n")
        return path

    def to_parquet(self, path: Path | str) -> Path:
        """subject_id, prediction_time, vector (fixed-size list of float32), atomically."""
        path = Path(path)
        vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim)
        table = pa.table(
            {
                s.SUBJECT_ID: pa.array(self.subject_ids.astype(np.int64)),
                PREDICTION_TIME: pa.array(self.as_of.astype("datetime64[us]")),
                VECTOR: column,
            }
        )
        table = table.replace_schema_metadata({_META_KEY: json.dumps(self.metadata(), default=str).encode()})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
        return path

    def csv_chunks(self, rows: int = 2048) -> Iterator[bytes]:
        """``subject_id,prediction_time,v0..v{dim-1}`` as CSV, a block of rows at a time (for streaming)."""
        yield (",".join([s.SUBJECT_ID, PREDICTION_TIME, *(f"v{i}" for i in range(self.dim))]) + "\n").encode()
        times = np.datetime_as_string(self.as_of.astype("datetime64[us]"), unit="us")
        for start in range(0, len(self), rows):
            block = np.asarray(self.vectors[start : start + rows], dtype=np.float32)
            lines = [
                f"{int(sid)},{when}," + ",".join(f"{v:.7g}" for v in vec)
                for sid, when, vec in zip(
                    self.subject_ids[start : start + rows], times[start : start + rows], block, strict=True
                )
            ]
            yield ("\n".join(lines) + "\n").encode()

    def export(self, fmt: str, target: Path) -> Path:
        """Write one file for analysts: ``parquet`` (ids, times, vectors, metadata), ``npy`` (the vectors in
        row order; ``rows()`` gives the ids) or ``csv``."""
        if fmt == "parquet":
            return self.to_parquet(target)
        if fmt == "npy":
            with open(target, "wb") as fh:
                np.save(fh, np.ascontiguousarray(self.vectors, dtype=np.float32))
            return target
        if fmt == "csv":
            with open(target, "wb") as fh:
                for chunk in self.csv_chunks():
                    fh.write(chunk)
            return target
        raise EncoderError(f"export format must be parquet, npy or csv, not {fmt!r}")

    @classmethod
    def load(cls, path: Path | str, *, mmap: bool = True) -> EmbeddingSet:
        """Read a folder (vectors memory-mapped by default) or a Parquet file written by ``save``."""
        path = Path(path)
        restore_interrupted(path)
        if not path.exists():
            raise EncoderError(f"embeddings {path} not found")
        if path.is_file():
            return cls._load_parquet(path)
        meta_path = path / META_FILE
        if not meta_path.exists() or not (path / VECTORS_FILE).exists():
            raise EncoderError(f"{path} is not an embedding set folder (no {META_FILE} / {VECTORS_FILE})")
        meta = json.loads(meta_path.read_text())
        vectors = np.load(path / VECTORS_FILE, mmap_mode="r" if mmap else None)
        rows = pl.read_parquet(path / ROWS_FILE)
        return cls(
            subject_ids=rows.get_column(s.SUBJECT_ID).to_numpy(),
            as_of=rows.get_column(PREDICTION_TIME).to_numpy().astype("datetime64[us]"),
            vectors=vectors,
            spec=EncoderSpec.from_dict(meta["spec"]),
            serializer_version=meta["serializer_version"],
            instruction=meta.get("instruction"),
            extra=meta.get("extra") or {},
        )

    @classmethod
    def _load_parquet(cls, path: Path) -> EmbeddingSet:
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise EncoderError(f"{path}: not a readable Parquet file ({exc})") from exc
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise EncoderError(f"{path}: Parquet file has no ehrembed embedding metadata")
        meta = json.loads(raw)
        spec = EncoderSpec.from_dict(meta["spec"])
        flat = table.column(VECTOR).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return cls(
            subject_ids=table.column(s.SUBJECT_ID).to_numpy(),
            as_of=table.column(PREDICTION_TIME).to_numpy().astype("datetime64[us]"),
            vectors=flat.astype(np.float32).reshape(-1, spec.dim),
            spec=spec,
            serializer_version=meta["serializer_version"],
            instruction=meta.get("instruction"),
            extra=meta.get("extra") or {},
        )
