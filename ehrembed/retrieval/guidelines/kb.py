"""The knowledge base: passages, their vectors and BM25, searched by mode; built, saved and loaded atomically."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ehrembed.encoders.base import Encoder, EncoderError
from ehrembed.retrieval.chunking import Chunk, ChunkingConfig, chunk_markdown, overview_chunks
from ehrembed.retrieval.guidelines.base import (
    _SPECIAL_TOKEN_MARGIN,
    KB_FORMAT_VERSION,
    MODES,
    OPEN_MEDICINE_PACKAGE,
    GuidelineError,
    Mode,
)
from ehrembed.retrieval.guidelines.bm25 import Bm25Index
from ehrembed.retrieval.guidelines.expansion import QueryExpander, packaged_expander
from ehrembed.retrieval.guidelines.fusion import FusionConfig, reciprocal_rank_fusion
from ehrembed.retrieval.guidelines.model import RetrievalModelConfig
from ehrembed.retrieval.guidelines.sources import _sha256, discover_guidelines

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Passage:
    """One search hit."""

    guideline_id: str
    title: str
    section: str
    passage: str
    score: float
    doi: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class GuidelineKB:
    """Passages, their vectors and the metadata to search them; see the module docstring."""

    chunks: list[Chunk]
    vectors: np.ndarray
    model: RetrievalModelConfig
    meta: dict[str, Any]
    fusion: FusionConfig = field(default_factory=FusionConfig)
    encoder: Encoder | None = None
    _bm25: Bm25Index | None = field(default=None, repr=False)
    _metadata_bm25: tuple[list[str], Bm25Index] | None = field(default=None, repr=False)
    query_onnx: Path | None = None
    """An fp32 ONNX export of the retrieval model (``query_onnx/`` of a saved folder) that embeds queries:
    the same vectors (checked at save) in half the time of torch on a CPU."""
    _query_encoder: Encoder | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.chunks) != len(self.vectors):
            raise GuidelineError(f"{len(self.chunks)} passages but {len(self.vectors)} vectors")
        self._guidelines = {g["id"]: g for g in self.meta.get("guidelines", [])}

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def fingerprint(self) -> str:
        """Names the passages, vectors' model, index and search settings (fusion, the abbreviation table):
        changes whenever search results could, so records augmented from it re-embed."""
        search: dict[str, Any] = {"fusion": dataclasses.asdict(self.fusion)}
        if self.fusion.expand:
            search["abbreviations"] = self.expander.digest
        payload = json.dumps([self.meta["fingerprint"], search], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def expander(self) -> QueryExpander:
        return packaged_expander()

    def expanded(self, query: str, *, dense: bool = False) -> str:
        """The query as the BM25 (or, with ``dense``, the dense) ranking reads it."""
        if self.fusion.expand and (not dense or self.fusion.expand_dense):
            return self.expander.expand(query)
        return query

    @property
    def metadata_bm25(self) -> tuple[list[str], Bm25Index]:
        """BM25 over one document per guideline: its registry fields (title, organisation, topics)."""
        if self._metadata_bm25 is None:
            ids = self.guideline_ids
            docs = []
            for gid in ids:
                g = self._guidelines.get(gid, {})
                title = g.get("title") or next(c.title for c in self.chunks if c.guideline_id == gid)
                docs.append(" ".join([title, str(g.get("organization") or ""), ", ".join(g.get("topics") or [])]))
            settings = self.meta.get("bm25", {})
            self._metadata_bm25 = (ids, Bm25Index(docs, stemmer=settings.get("stemmer", "english")))
        return self._metadata_bm25

    @property
    def guideline_ids(self) -> list[str]:
        return sorted({c.guideline_id for c in self.chunks})

    @property
    def bm25(self) -> Bm25Index:
        if self._bm25 is None:
            settings = self.meta.get("bm25", {})
            self._bm25 = Bm25Index(
                [c.text for c in self.chunks],
                stemmer=settings.get("stemmer", "english"),
                k1=float(settings.get("k1", 1.5)),
                b=float(settings.get("b", 0.75)),
            )
        return self._bm25

    def get_encoder(self) -> Encoder:
        """The retrieval model, loaded on first use and checked against the one that built the vectors."""
        if self.encoder is None:
            encoder = self.model.load_encoder()
            built = self.meta.get("encoder", {}).get("fingerprint")
            if built is not None and encoder.spec.fingerprint() != built:
                raise GuidelineError(
                    f"the retrieval model in {self.model.folder()} is not the one that built this knowledge base "
                    "(its weights or settings changed); rebuild it with `ehrembed guidelines build`"
                )
            self.encoder = encoder
        return self.encoder

    def query_encoder(self) -> Encoder:
        """What embeds queries: the ONNX export when the folder has one and onnxruntime loads it, else the model."""
        if self._query_encoder is None:
            encoder: Encoder | None = None
            if self.query_onnx is not None:
                try:
                    from ehrembed.encoders.onnx import OnnxStudentEncoder

                    built = self.meta.get("encoder", {})  # the model's settings, without loading it
                    encoder = OnnxStudentEncoder.from_folder(
                        self.query_onnx,
                        max_tokens=built.get("max_tokens"),
                        normalize=bool(built.get("normalize", True)),
                    )
                except (ImportError, EncoderError) as exc:
                    log.warning(
                        "queries run on torch: the ONNX query model in %s does not load (%s)", self.query_onnx, exc
                    )
            self._query_encoder = encoder or self.get_encoder()
        return self._query_encoder

    def query_vectors(self, queries: Sequence[str]) -> np.ndarray:
        texts = [self.model.query_instruction + self.expanded(q, dense=True) for q in queries]
        return self.query_encoder().encode(texts, batch_size=32)

    def rank(
        self, query: str, mode: Mode = "hybrid", *, query_vector: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Passage indices with scores, best first (up to ``fusion.depth`` for fused and dense rankings)."""
        if mode not in MODES:
            raise GuidelineError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not query.strip():
            raise GuidelineError("the query is empty")
        depth = min(self.fusion.depth, len(self.chunks))
        bm25_ranked: list[tuple[int, float]] = []
        dense_ranked: list[tuple[int, float]] = []
        if mode in ("bm25", "hybrid"):
            scores = self.bm25.scores(self.expanded(query))
            order = np.argsort(-scores, kind="stable")[:depth]
            bm25_ranked = [(int(i), float(scores[i])) for i in order if scores[i] > 0]
        if mode in ("dense", "hybrid"):
            vector = query_vector if query_vector is not None else self.query_vectors([query])[0]
            # einsum, not BLAS: interleaved with the encoder's torch threads, a threaded BLAS gemv spins against them
            # and triples a query's latency on a small machine
            sims = np.einsum("ij,j->i", self.vectors, np.asarray(vector, dtype=np.float32))
            order = np.argsort(-sims, kind="stable")[:depth]
            dense_ranked = [(int(i), float(sims[i])) for i in order]
        if mode == "bm25":
            return bm25_ranked
        if mode == "dense":
            return dense_ranked
        rankings = [[i for i, _ in bm25_ranked], [i for i, _ in dense_ranked]]
        weights = [self.fusion.bm25_weight, self.fusion.dense_weight]
        fused = reciprocal_rank_fusion(rankings, weights, k=self.fusion.k)
        if self.fusion.guideline_weight <= 0:
            return fused
        support = self._guideline_support(query, rankings, weights)
        boosted = [
            (i, s + self.fusion.guideline_weight * support.get(self.chunks[i].guideline_id, 0.0)) for i, s in fused
        ]
        position = {i: n for n, (i, _) in enumerate(fused)}
        return sorted(boosted, key=lambda item: (-item[1], position[item[0]]))

    def _guideline_support(
        self, query: str, rankings: Sequence[Sequence[int]], weights: Sequence[float]
    ) -> dict[str, float]:
        """Per guideline: its best passages' fused contributions (decayed) and its registry fields' BM25 rank."""
        f = self.fusion
        support: dict[str, float] = {}
        for ranking, weight in zip(rankings, weights, strict=True):
            taken: dict[str, int] = {}
            for rank, i in enumerate(ranking, start=1):
                gid = self.chunks[i].guideline_id
                j = taken.get(gid, 0)
                if j < f.aggregate_depth:
                    support[gid] = support.get(gid, 0.0) + weight * f.aggregate_decay**j / (f.k + rank)
                    taken[gid] = j + 1
        if f.metadata_weight > 0:
            ids, index = self.metadata_bm25
            scores = index.scores(self.expanded(query))
            for rank, n in enumerate(np.argsort(-scores, kind="stable"), start=1):
                if scores[n] <= 0:
                    break
                support[ids[n]] = support.get(ids[n], 0.0) + f.metadata_weight / (f.k + rank)
        return support

    def search(
        self,
        query: str,
        k: int = 5,
        mode: Mode = "hybrid",
        *,
        per_guideline: int | None = None,
        query_vector: np.ndarray | None = None,
    ) -> list[Passage]:
        """The ``k`` best passages for ``query``; ``per_guideline`` caps passages from one guideline."""
        if k < 1:
            raise GuidelineError(f"k must be >= 1, got {k}")
        hits: list[Passage] = []
        taken: dict[str, int] = {}
        for i, score in self.rank(query, mode, query_vector=query_vector):
            chunk = self.chunks[i]
            if per_guideline is not None and taken.get(chunk.guideline_id, 0) >= per_guideline:
                continue
            taken[chunk.guideline_id] = taken.get(chunk.guideline_id, 0) + 1
            doi = self._guidelines.get(chunk.guideline_id, {}).get("doi")
            hits.append(Passage(chunk.guideline_id, chunk.title, chunk.section, chunk.passage, score, doi))
            if len(hits) >= k:
                break
        return hits

    def rank_guidelines(
        self, query: str, mode: Mode = "hybrid", *, query_vector: np.ndarray | None = None
    ) -> list[str]:
        """Guideline ids in the order of their best passage."""
        seen: dict[str, None] = {}
        for i, _ in self.rank(query, mode, query_vector=query_vector):
            seen.setdefault(self.chunks[i].guideline_id, None)
        return list(seen)

    # --- persistence ---------------------------------------------------------------------------
    def save(self, path: Path | str, *, overwrite: bool = True, onnx_queries: bool = False) -> Path:
        """Write the knowledge base folder atomically (replacing an existing one when ``overwrite``).

        With ``onnx_queries``, the retrieval model is also exported to fp32 ONNX in ``query_onnx/`` and
        used for queries after loading, if its vectors match the model's (max abs difference 1e-4 on a
        sample of passages); a model that does not export (not a sentence-transformers folder, no
        onnxruntime) is noted in the log and queries stay on torch.
        """
        import polars as pl

        from ehrembed.fsutil import atomic_dir

        target = Path(path)
        with atomic_dir(target, overwrite=overwrite) as scratch:
            query_onnx = self._export_query_model(scratch / "query_onnx") if onnx_queries else None
            pl.DataFrame(
                {
                    "guideline_id": [c.guideline_id for c in self.chunks],
                    "title": [c.title for c in self.chunks],
                    "section": [c.section for c in self.chunks],
                    "passage": [c.passage for c in self.chunks],
                    "text": [c.text for c in self.chunks],
                    "source": [c.source for c in self.chunks],
                },
                schema={k: pl.String for k in ("guideline_id", "title", "section", "passage", "text", "source")},
            ).write_parquet(scratch / "chunks.parquet")
            np.save(scratch / "vectors.npy", np.ascontiguousarray(self.vectors, dtype=np.float32))
            meta = {**self.meta, "fusion": dataclasses.asdict(self.fusion)}
            meta.pop("query_onnx", None)
            if query_onnx is not None:
                meta["query_onnx"] = query_onnx
            (scratch / "kb.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: Path | str | None = None, *, encoder: Encoder | None = None) -> GuidelineKB:
        """A saved knowledge base (default: ``<EHREMBED_HOME>/guidelines/default``); vectors are memory-mapped."""
        import polars as pl

        folder = Path(path) if path is not None else default_kb_dir()
        sidecar = folder / "kb.json"
        if not sidecar.is_file():
            raise FileNotFoundError(
                f"no guideline knowledge base in {folder} (kb.json missing); build one with `ehrembed guidelines build`"
            )
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        if meta.get("format_version") != KB_FORMAT_VERSION:
            raise GuidelineError(f"{folder}: knowledge base format {meta.get('format_version')} is not supported")
        frame = pl.read_parquet(folder / "chunks.parquet")
        chunks = [
            Chunk(r["guideline_id"], r["title"], r["section"], r["passage"], r["text"], r["source"])
            for r in frame.iter_rows(named=True)
        ]
        vectors = np.load(folder / "vectors.npy", mmap_mode="r")
        fusion = FusionConfig(**meta.get("fusion", {}))
        onnx = folder / "query_onnx" if meta.get("query_onnx") and (folder / "query_onnx").is_dir() else None
        model = RetrievalModelConfig.from_dict(meta["model"])
        return cls(chunks, vectors, model, meta, fusion, encoder, query_onnx=onnx)

    def _export_query_model(self, out: Path) -> dict[str, Any] | None:
        """Export the retrieval model to fp32 ONNX in ``out`` and check it; its check figures, or None."""
        import shutil

        try:
            from ehrembed.encoders.onnx import OnnxStudentEncoder, export_onnx

            export_onnx(self.model.folder(), out, quantize=False, overwrite=True)
            spec = self.get_encoder().spec
            onnx = OnnxStudentEncoder.from_folder(out, max_tokens=spec.max_tokens, normalize=spec.normalize)
        except (ImportError, EncoderError, GuidelineError) as exc:
            log.warning("queries stay on torch: the retrieval model does not export to ONNX (%s)", exc)
            shutil.rmtree(out, ignore_errors=True)
            return None
        sample = [self.model.query_instruction + c.text for c in self.chunks[:: max(1, len(self.chunks) // 16)]]
        difference = float(np.max(np.abs(onnx.encode(sample) - self.get_encoder().encode(sample))))
        if difference > 1e-4:
            log.warning("queries stay on torch: the ONNX export differs from the model by %.2g", difference)
            shutil.rmtree(out, ignore_errors=True)
            return None
        return {"max_abs_difference": difference, "checked_texts": len(sample)}


def default_kb_dir() -> Path:
    from ehrembed.settings import get_settings

    return get_settings().home / "guidelines" / "default"


def build_knowledge_base(
    source: Path | str | None = None,
    model: RetrievalModelConfig | None = None,
    *,
    chunking: ChunkingConfig | None = None,
    fusion: FusionConfig | None = None,
    stemmer: str | None = "english",
    encoder: Encoder | None = None,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> GuidelineKB:
    """Read, chunk and embed guidelines (default: open-medicine's, with the packaged MiniLM).

    ``encoder`` skips loading the model ``model`` names (it must be that model). Passages are cut to
    fit the encoder's window (the passage instruction and special tokens included). ``progress(done,
    total)`` is called as passages are embedded.
    """
    model = model or RetrievalModelConfig.minilm()
    chunking = chunking or ChunkingConfig()
    sources = discover_guidelines(source)
    encoder = encoder or model.load_encoder()
    instruction_tokens = encoder.count_tokens([model.passage_instruction])[0] if model.passage_instruction else 0
    window = encoder.spec.max_tokens - _SPECIAL_TOKEN_MARGIN - instruction_tokens
    effective = dataclasses.replace(chunking, max_tokens=min(chunking.max_tokens, window))

    def count(texts: list[str]) -> list[int]:
        return encoder.count_tokens(texts)

    chunks: list[Chunk] = []
    files_meta: list[dict[str, Any]] = []
    for guideline in sources:
        before = len(chunks)
        if effective.overview:
            chunks.extend(
                overview_chunks(
                    guideline.id,
                    guideline.title,
                    organization=guideline.organization,
                    year=guideline.year,
                    topics=guideline.topics,
                    config=effective,
                    count=count,
                )
            )
        for path in guideline.files:
            relative = path.relative_to(guideline.root).as_posix()
            files_meta.append({"guideline_id": guideline.id, "path": relative, "sha256": _sha256(path)})
            chunks.extend(
                chunk_markdown(
                    path.read_text(encoding="utf-8"),
                    guideline_id=guideline.id,
                    title=guideline.title,
                    source=relative,
                    config=effective,
                    count=count,
                )
            )
        if len(chunks) == before:
            log.warning("guideline %s has no text to index", guideline.id)
    if not chunks:
        raise GuidelineError("the guidelines hold no text to index")
    texts = [model.passage_instruction + c.text for c in chunks]
    vectors = np.zeros((len(texts), encoder.spec.dim), dtype=np.float32)
    order = np.argsort(encoder.count_tokens(texts), kind="stable")  # similar lengths together: little padding
    step = max(batch_size * 4, 64)
    for start in range(0, len(texts), step):
        idx = order[start : start + step]
        vectors[idx] = encoder.encode([texts[i] for i in idx], batch_size=batch_size)
        if progress is not None:
            progress(min(start + step, len(texts)), len(texts))
    bm25 = Bm25Index([c.text for c in chunks], stemmer=stemmer)
    source_digest = hashlib.sha256(
        json.dumps([[f["guideline_id"], f["path"], f["sha256"]] for f in files_meta]).encode()
        + json.dumps([g.metadata() for g in sources], sort_keys=True).encode()
    ).hexdigest()
    bm25_settings = {"stemmer": bm25.stemmer_name, "k1": bm25.k1, "b": bm25.b}
    fingerprint_payload = {
        "format_version": KB_FORMAT_VERSION,
        "sources": source_digest,
        "chunking": dataclasses.asdict(effective),
        "encoder": encoder.spec.fingerprint(),
        "model": {k: v for k, v in model.to_dict().items() if k != "model_path"},
        "bm25": bm25_settings,
    }
    meta: dict[str, Any] = {
        "format_version": KB_FORMAT_VERSION,
        "fingerprint": hashlib.sha256(json.dumps(fingerprint_payload, sort_keys=True).encode()).hexdigest()[:16],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": str(Path(source).resolve()) if source is not None else f"package:{OPEN_MEDICINE_PACKAGE}",
        "sources_sha256": source_digest,
        "files": files_meta,
        "guidelines": [g.metadata() for g in sources],
        "n_passages": len(chunks),
        "model": model.to_dict(),
        "encoder": {**encoder.spec.to_dict(), "fingerprint": encoder.spec.fingerprint()},
        "chunking": dataclasses.asdict(effective),
        "bm25": bm25_settings,
        "versions": _versions(),
    }
    return GuidelineKB(chunks, vectors, model, meta, fusion or FusionConfig(), encoder, bm25)


def _versions() -> dict[str, str]:
    from ehrembed.versions import package_versions

    return package_versions(
        ("ehrembed", "bm25s", "PyStemmer", "sentence-transformers", "transformers", "torch", "open-medicine")
    )
