"""What the service holds in memory: the store, encoders, datasets with their indexes, heads, guidelines.

Encoders, datasets and indexes load at startup (:meth:`ServiceState.load`); heads load on first
use, from the store, and the least recently used are dropped past ``api_max_heads``. Searches only
read, so they run concurrently; a rebuilt index is loaded beside the old one and swapped in by one
reference assignment (:meth:`reload_index`), so requests in flight finish on the index they started
with. A patient upsert takes its dataset's write lock, so readers never see the folder mid-write.

Several worker processes (``ehrembed serve --workers N``) share the store and the folders: a head
fitted in one worker is loaded from the store by the others; readers hold a shared lock on the
dataset's upsert lock file, so no worker reads a folder while another upserts into it; and a worker
whose dataset folder changed since it loaded it reloads the vocabulary and search state first.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from sqlalchemy.orm import Session

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.stats import dataset_stats
from ehrembed.ehr.upsert import SharedReadLock, UpsertReport, read_lock, upsert_patients
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.encoders.base import Encoder, EncoderSpec
from ehrembed.encoders.cache import EmbeddingCache
from ehrembed.encoders.job import AsOf, default_cache_dir
from ehrembed.predict.fitted import CARD_FILE, FittedHead, embed_for_head, load_fitted
from ehrembed.predict.ontology import Ontology
from ehrembed.predict.prognosis.model import PrognosisModel
from ehrembed.retrieval.augment import GuidelineAugmenter, relevant_guidelines
from ehrembed.retrieval.index import VectorIndex
from ehrembed.retrieval.similar import SimilarPatients
from ehrembed.services.prognosis import recorded_prognosis
from ehrembed.settings import Settings
from ehrembed.store.audit_writer import AuditWriter
from ehrembed.store.catalog import register_meds
from ehrembed.store.db import create_all, make_engine, make_session_factory, session_scope
from ehrembed.store.errors import NotFoundError
from ehrembed.store.repository import current_artifact, get_artifact, list_artifacts, list_datasets
from ehrembed.store.tables import ArtifactKind

if TYPE_CHECKING:
    from ehrembed.retrieval.guidelines import GuidelineKB, Passage

_MEMO_SIZE = 20_000
"""Per-subject results a dataset keeps (about 30 MB of 384-dimensional vectors at most)."""


class RWLock:
    """Many readers or one writer; writers wait for readers in progress and block new ones.

    With ``meds_root``, readers also hold that MEDS folder's cross-process read lock, so patient
    upserts in other processes wait for them, and they for those upserts.
    """

    def __init__(self, meds_root: Path | None = None) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._shared = SharedReadLock(meds_root) if meds_root is not None else None

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            if self._shared is None:
                yield
            else:
                with self._shared.hold():
                    yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class _Memo:
    """A thread-safe LRU of per-subject results (head vectors, guideline passages) for one load of a dataset."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class DatasetHandle:
    """A registered dataset as served: its folder, vocabulary, similar-patient search and lock."""

    name: str
    dataset: MedsDataset
    vocabulary: Vocabulary
    similar: SimilarPatients | None = None
    index_path: Path | None = None
    lock: RWLock = field(default_factory=RWLock)
    generation: int = 0
    """The data folder's modification time when the vocabulary and search state were loaded."""
    ontology: Ontology | None = None
    """Built on first use by a ``count+`` head after each (re)load (:meth:`count_ontology`)."""
    stats: dict[str, Any] | None = None
    """The dataset's summary (:func:`ehrembed.ehr.stats.dataset_stats`), made on first ask after each (re)load."""
    memo: _Memo = field(default_factory=lambda: _Memo(_MEMO_SIZE))
    """Per-subject results while the data is unchanged: emptied by every (re)load."""

    subjects: frozenset[int] | None = None
    """The dataset's subject ids, read on first ask after each (re)load."""

    def subject_set(self) -> frozenset[int]:
        if self.subjects is None:
            self.subjects = frozenset(self.dataset.splits().get_column(s.SUBJECT_ID).to_list())
        return self.subjects

    def head_vectors(
        self, fitted: FittedHead, encoder: Encoder, subject_ids: Sequence[int], as_of: AsOf, cache: EmbeddingCache
    ) -> tuple[np.ndarray, list[int | None], list[dt.datetime | None]]:
        """:func:`embed_for_head` for stored subjects at one as-of (or each one's latest), remembered per (head,
        subject, as-of) until the data changes: a subject asked again costs a dictionary lookup, not a read,
        a serialization and a cache lookup. Labelled examples (an as-of per subject) are not remembered."""
        if isinstance(as_of, Mapping):
            return embed_for_head(
                fitted, encoder, self.dataset, subject_ids=list(subject_ids), as_of=as_of,
                vocabulary=self.vocabulary, cache=cache,
            )  # fmt: skip
        keys = [("vector", fitted.head_id, sid, as_of) for sid in subject_ids]
        found = {sid: self.memo.get(key) for sid, key in zip(subject_ids, keys, strict=True)}
        missing = [sid for sid, hit in found.items() if hit is None]
        if missing:
            vectors, subjects, times = embed_for_head(
                fitted, encoder, self.dataset, subject_ids=missing, as_of=as_of,
                vocabulary=self.vocabulary, cache=cache,
            )  # fmt: skip
            for vector, sid, when in zip(vectors, subjects, times, strict=True):
                found[sid] = (vector, when)  # type: ignore[index]
                self.memo.put(("vector", fitted.head_id, sid, as_of), (vector, when))
        rows = [found[sid] for sid in subject_ids]
        return np.stack([v for v, _ in rows]), list(subject_ids), [when for _, when in rows]

    def guideline_passages(self, augmenter: GuidelineAugmenter, subject_id: int, when: dt.datetime) -> list[Passage]:
        """The guideline passages augmentation finds for a subject at a time, remembered until the data changes."""
        key = ("guidelines", augmenter.version, subject_id, when)
        passages = self.memo.get(key)
        if passages is None:
            passages = relevant_guidelines(self.dataset.patient(subject_id), when, self.vocabulary, augmenter)
            self.memo.put(key, passages)
        return list(passages)

    def summary(self) -> dict[str, Any]:
        """Sizes, splits and description coverage, computed once per load (it scans every event)."""
        if self.stats is None:
            self.stats = dataset_stats(self.dataset, self.vocabulary)
        return self.stats

    def count_ontology(self) -> Ontology:
        """The dataset's ontology for count features, built once per load rather than per request."""
        if self.ontology is None:
            self.ontology = Ontology.from_dataset(self.dataset)
        return self.ontology


class _LockedEncoder:
    """An encoder whose ``encode`` calls run one at a time (a model uses every core already)."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.spec: EncoderSpec = inner.spec
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        with self._lock:
            return self.inner.encode(texts, **kwargs)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)


class ServiceState:
    """The service's loaded state. Build it, call :meth:`load`, and share it across requests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.resolved_database_url)
        create_all(self.engine)
        self.sessions = make_session_factory(self.engine)
        self.audit_writer = AuditWriter(self.sessions)
        self.encoders: dict[str, Encoder] = {}
        self.datasets: dict[str, DatasetHandle] = {}
        self.heads: OrderedDict[str, FittedHead] = OrderedDict()  # least recently used first
        self.kb: GuidelineKB | None = None
        self.augmenter: GuidelineAugmenter | None = None
        self._caches: dict[Path, EmbeddingCache] = {}
        self._prognosis: dict[tuple[Path, int], PrognosisModel] = {}
        self.ready = False
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------------

    def load(self) -> None:
        """Load encoders, datasets (with their newest index) and the guideline knowledge base."""
        for name in self.settings.api_encoders:
            encoder = self.encoder(name)
            # a student that knows its spec loads its model lazily; a server loads it now, not on a request
            getattr(getattr(encoder, "inner", encoder), "model", None)
        with self.session() as session:
            datasets = [(d.name, d.path) for d in list_datasets(session)]
        for name, path in datasets:
            if Path(path, "data").is_dir():
                self.datasets[name] = self._open_dataset(name, Path(path))
        self._load_kb()
        self.ready = True

    def close(self) -> None:
        self.ready = False
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.sessions) as session:
            yield session

    # --- encoders -------------------------------------------------------------------------------

    def encoder(self, name: str) -> Encoder:
        """A loaded encoder by name: a built-in (``student``...) or a model registered in the store."""
        with self._lock:
            if name in self.encoders:
                return self.encoders[name]
        models = self.registered_models()
        if name not in self.settings.api_encoders and name not in models:
            raise NotFoundError(f"unknown encoder {name!r}; this service offers: {', '.join(self.encoder_names())}")
        from ehrembed.encoders import load_encoder

        loaded = _LockedEncoder(load_encoder(models.get(name, name)))
        with self._lock:
            return self.encoders.setdefault(name, loaded)

    def registered_models(self) -> dict[str, str]:
        """Model folders recorded in the store, by name."""
        with self.session() as session:
            return {a.name: a.path for a in list_artifacts(session, ArtifactKind.MODEL)}

    def encoder_names(self) -> list[str]:
        """What a request may name as its encoder: the built-in encoders served here and the registered models."""
        return sorted(set(self.settings.api_encoders) | set(self.registered_models()))

    def encoder_for(self, spec: EncoderSpec) -> Encoder | None:
        """A loaded encoder with this spec, or one loaded from the spec's local folder; None if neither."""
        for encoder in self.encoders.values():
            if encoder.spec.fingerprint() == spec.fingerprint():
                return encoder
        from ehrembed.encoders import load_encoder

        if not Path(spec.model_path).is_dir():
            return None
        try:
            candidate = load_encoder(spec.model_path, max_tokens=spec.max_tokens)
        except ValueError:
            return None
        if candidate.spec.fingerprint() != spec.fingerprint():
            return None
        locked = _LockedEncoder(candidate)
        with self._lock:
            self.encoders.setdefault(f"{spec.name}@{spec.fingerprint()[:8]}", locked)
        return locked

    # --- datasets and indexes -------------------------------------------------------------------

    def _newest_index(self, name: str) -> Path | None:
        with self.session() as session:
            artifact = current_artifact(
                session, ArtifactKind.INDEX, name, matches=lambda a: Path(a.path, "index.faiss").is_file()
            )
            return None if artifact is None else Path(artifact.path)

    def _similar(self, dataset: MedsDataset, vocabulary: Vocabulary, path: Path) -> SimilarPatients:
        index = VectorIndex.load(path)
        encoder = self.encoder_for(index.spec) if index.spec is not None else None
        return SimilarPatients(index, dataset, vocabulary=vocabulary, encoder=encoder).warm()

    def _open_dataset(self, name: str, path: Path) -> DatasetHandle:
        dataset = MedsDataset.open(path)
        handle = DatasetHandle(
            name, dataset, Vocabulary(), index_path=self._newest_index(name), lock=RWLock(dataset.root)
        )
        self._reload(handle)
        return handle

    def _reload(self, handle: DatasetHandle) -> None:
        """(Re)read what depends on the dataset's patients: vocabulary and similar-patient search.

        The caller holds the handle's write lock, or is its only user (a handle being opened).
        """
        with read_lock(handle.dataset.root):  # not while another process upserts
            generation = _generation(handle.dataset)
            handle.vocabulary = Vocabulary.from_dataset(handle.dataset)
            handle.ontology = None
            handle.stats = None
            handle.memo.clear()
            handle.subjects = None
            if handle.index_path is not None:
                handle.similar = self._similar(handle.dataset, handle.vocabulary, handle.index_path)
            handle.generation = generation

    def dataset(self, name: str) -> DatasetHandle:
        """A served dataset, opened on first use and reloaded when another process changed its patients."""
        handle = self.datasets.get(name)
        if handle is not None and _generation(handle.dataset) != handle.generation:
            with handle.lock.write():
                if _generation(handle.dataset) != handle.generation:
                    self._reload(handle)
        if handle is None:
            with self.session() as session:
                known = {d.name: d.path for d in list_datasets(session)}
            if name not in known:
                raise NotFoundError(f"unknown dataset {name!r}; known: {', '.join(sorted(known)) or 'none'}")
            handle = self._open_dataset(name, Path(known[name]))
            with self._lock:
                handle = self.datasets.setdefault(name, handle)
        return handle

    def prognosis(self, name: str) -> PrognosisModel:
        """The dataset's current prognostic model (:func:`~ehrembed.services.prognosis.recorded_prognosis`),
        loaded once per folder and weights file."""
        with self.session() as session:
            folder = recorded_prognosis(session, name)
        key = (folder, Path(folder, "model.safetensors").stat().st_mtime_ns)
        with self._lock:
            model = self._prognosis.get(key)
            if model is None:
                model = self._prognosis[key] = PrognosisModel.load(folder)
        return model

    def reload_index(self, name: str) -> dict[str, Any]:
        """Load the newest recorded index of a dataset and swap it in; requests in flight keep the old one."""
        handle = self.dataset(name)
        path = self._newest_index(name)
        if path is None:
            raise NotFoundError(f"no index is recorded for dataset {name!r}; build one with `ehrembed index`")
        similar = self._similar(handle.dataset, handle.vocabulary, path)
        handle.similar, handle.index_path = similar, path  # one assignment each: readers see old or new
        return {"dataset": name, "index": str(path), "rows": len(similar.index), "kind": similar.index.kind}

    def upsert(
        self, name: str, events: pl.DataFrame, codes: pl.DataFrame | None, source_ids: pl.DataFrame | None
    ) -> UpsertReport:
        """Add or replace patients under the dataset's write lock, then refresh what depends on them."""
        handle = self.dataset(name)
        with handle.lock.write():
            report = upsert_patients(handle.dataset, events, codes=codes, source_ids=source_ids)
            self._reload(handle)
            with self.session() as session:
                register_meds(session, handle.dataset, "meds", name=name)
        return report

    # --- heads and guidelines -------------------------------------------------------------------

    def head(self, head_id: str) -> FittedHead:
        """A fitted head: from memory, else from the store (fitted earlier, or by another worker)."""
        with self._lock:
            fitted = self.heads.get(head_id)
            if fitted is not None:
                self.heads.move_to_end(head_id)
                return fitted
        with self.session() as session:
            try:
                folder: Path | None = Path(get_artifact(session, ArtifactKind.HEAD, head_id).path)
            except NotFoundError:
                folder = None
        if folder is None or not (folder / CARD_FILE).is_file():
            raise NotFoundError(f"unknown head {head_id!r}; fit one with POST /v1/heads")
        return self.add_head(load_fitted(folder))

    def add_head(self, fitted: FittedHead) -> FittedHead:
        """Keep a head in memory, dropping the least recently used past ``api_max_heads``."""
        with self._lock:
            self.heads[fitted.head_id] = fitted
            self.heads.move_to_end(fitted.head_id)
            while len(self.heads) > self.settings.api_max_heads:
                self.heads.popitem(last=False)
        return fitted

    def embedding_cache(self, encoder: Encoder) -> EmbeddingCache:
        """The encoder's embedding cache under the data home, opened once and shared by the requests.

        Shards another process writes later are not seen by this instance: their records miss, are
        encoded again and stored in a shard of ours (slower once, never wrong)."""
        root = default_cache_dir(encoder, self.settings.home)
        with self._lock:
            cache = self._caches.get(root)
            if cache is None:
                cache = self._caches[root] = EmbeddingCache(root, encoder.spec.dim)
            return cache

    def heads_dir(self) -> Path:
        return self.settings.home / "heads"

    def _load_kb(self) -> None:
        from ehrembed.retrieval.guidelines import GuidelineKB, default_kb_dir

        folder = self.settings.guidelines_kb or default_kb_dir()
        if (Path(folder) / "kb.json").is_file():
            self.kb = GuidelineKB.load(folder)
            self.augmenter = GuidelineAugmenter(kb=self.kb)  # one, so its per-term rankings serve every request


def _generation(dataset: MedsDataset) -> int:
    """Changes whenever a shard is added, rewritten or removed (an upsert always writes one)."""
    return (dataset.root / s.DATA_DIR).stat().st_mtime_ns
