"""Content-addressed embedding cache: a vector is stored once per (encoder, serializer, text).

Keys are SHA-256 digests of the encoder fingerprint, the serializer version, the instruction and
the exact text, so re-running a job only encodes what changed. Vectors live in shard files
(``shard-*.npz``: keys + float32 vectors), each written atomically; a job killed mid-way loses at
most the shard it was computing, and the next run picks up from the shards on disk. A key may
appear in more than one shard after such a restart; lookups take any copy (they are identical).
"""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ehrembed.fsutil import atomic_write_bytes

KEY_BYTES = 16


def cache_key(spec_fingerprint: str, serializer_version: str, instruction: str | None, text: str) -> bytes:
    """The 16-byte content address of one vector."""
    digest = hashlib.sha256()
    for part in (spec_fingerprint, serializer_version, instruction or "", text):
        encoded = part.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.digest()[:KEY_BYTES]


class EmbeddingCache:
    """Shards of (key, vector) under one folder, for one encoder (one dim)."""

    def __init__(self, root: Path, dim: int) -> None:
        self.root = Path(root)
        self.dim = dim
        self._index: dict[bytes, tuple[int, int]] = {}  # key -> (shard number, row)
        self._shards: list[Path] = []
        self._loaded: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # one instance may serve a server's threads
        self._scan()

    def _scan(self) -> None:
        if not self.root.exists():
            return
        for path in sorted(self.root.glob("shard-*.npz")):
            try:
                with np.load(path) as data:
                    keys = data["keys"]
                    if data["vectors"].shape[1:] != (self.dim,):
                        continue  # another encoder's dim: not ours
            except (OSError, ValueError, KeyError):
                continue  # a damaged shard is ignored; its texts get encoded again
            number = len(self._shards)
            self._shards.append(path)
            for row, key in enumerate(keys):
                self._index.setdefault(key.tobytes(), (number, row))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def missing(self, keys: Iterable[bytes]) -> list[bytes]:
        return [k for k in keys if k not in self._index]

    def _vectors(self, number: int) -> np.ndarray:
        if number not in self._loaded:
            with self._lock, np.load(self._shards[number]) as data:
                self._loaded[number] = data["vectors"].astype(np.float32)
        return self._loaded[number]

    def get_many(self, keys: Sequence[bytes]) -> np.ndarray:
        """Vectors for ``keys`` in order; KeyError names how many are absent."""
        absent = self.missing(keys)
        if absent:
            raise KeyError(f"{len(absent)} of {len(keys)} vectors are not in the cache at {self.root}")
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        for i, key in enumerate(keys):
            number, row = self._index[key]
            out[i] = self._vectors(number)[row]
        return out

    def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> Path:
        """Store a batch as one new shard (atomic write), and index it."""
        if len(keys) != len(vectors) or vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"cache put: {len(keys)} keys for vectors of shape {vectors.shape} (dim {self.dim})")
        buffer = io.BytesIO()
        # raw uint8 rows: numpy's fixed-size bytes type would strip trailing zero bytes
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES)
        np.savez(buffer, keys=key_array, vectors=np.asarray(vectors, dtype=np.float32))
        with self._lock:
            path = self.root / f"shard-{len(self._shards):06d}-{uuid.uuid4().hex[:8]}.npz"
            atomic_write_bytes(path, buffer.getvalue())
            number = len(self._shards)
            self._shards.append(path)
            self._loaded[number] = np.asarray(vectors, dtype=np.float32)
            for row, key in enumerate(keys):
                self._index.setdefault(key, (number, row))
        return path
