"""The embed job: serialize patients, encode what the cache lacks, write an EmbeddingSet.

Patients are streamed in chunks: each chunk is serialized within the encoder's token budget,
looked up in the content-addressed cache, and only the misses are encoded and stored as a new
cache shard. A killed job therefore resumes where it stopped, with no vector lost or encoded
twice, and the final EmbeddingSet (assembled from the cache in row order) is written atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.serialize import EMBED_FORMAT, Serializer, SerializerConfig
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.encoders.base import Encoder, EncoderError
from ehrembed.encoders.cache import EmbeddingCache, cache_key
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.encoders.instructions import instruction_for
from ehrembed.settings import get_settings

if TYPE_CHECKING:
    from ehrembed.retrieval.augment import GuidelineAugmentation

AsOf = dt.datetime | Mapping[int, dt.datetime | Sequence[dt.datetime]] | None
"""When to embed: one time for every subject, a time or times per subject, or None (each one's last event)."""

_BUDGET_MARGIN = 4  # tokens kept free for the model's own special tokens
MIN_RECORD_TOKENS = 32


@dataclass(frozen=True)
class EmbedConfig:
    """How records become vectors. ``serializer.max_tokens`` None means the encoder's budget.

    The instruction an encoder gets comes from :func:`~ehrembed.encoders.instructions.instruction_for`:
    ``question`` is the task's question (None: the generic one), ``instruction`` a full instruction
    that replaces the rule's wording; encoders without an instruction template get none either way.
    ``guidelines`` appends relevant guideline passages to each record (a share of its budget;
    :mod:`ehrembed.retrieval.augment`); it changes the serializer version, hence the cache keys.
    """

    question: str | None = None
    instruction: str | None = None
    serializer: SerializerConfig = field(default_factory=lambda: SerializerConfig(format=EMBED_FORMAT))
    batch_size: int = 8
    chunk_size: int = 256
    cache_dir: Path | None = None
    guidelines: GuidelineAugmentation | None = None

    @classmethod
    def replaying(cls, stored: Mapping[str, Any]) -> EmbedConfig:
        """The config that embeds new records the way stored vectors were made: their instruction and
        serializer layout, from an index's or a head's record of them (``instruction``, ``serializer``).

        Vectors recorded before Markdown followed the reference (a layout with ``max_labs``, or none recorded
        at all: the Markdown of that time) were made in what is now ``markdown_compact``, and replay in it.
        """
        known = {f.name for f in dataclasses.fields(SerializerConfig)} - {"max_tokens"}
        layout = dict(stored.get("serializer") or {"format": "markdown_compact"})
        if layout.get("format") == "markdown" and "max_labs" in layout:
            layout["format"] = "markdown_compact"
        return cls(
            instruction=stored.get("instruction"),
            serializer=SerializerConfig(**{k: v for k, v in layout.items() if k in known}),
        )

    def instruction_for(self, encoder: Encoder) -> str | None:
        """The instruction ``encoder`` gets for every record of this job (the one rule)."""
        return instruction_for(
            encoder.spec, self.question, serializer_format=self.serializer.format, override=self.instruction
        )


@dataclass
class EmbedReport:
    """What the job did; counts only, no record text."""

    out: Path
    rows: int = 0
    encoded: int = 0
    cached: int = 0
    truncated_records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    tokens_encoded: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out"] = str(self.out)
        data["records_per_second"] = round(self.encoded / self.seconds, 2) if self.seconds and self.encoded else None
        return data


class EncoderTokenCounter:
    """Lets the serializer count tokens with the encoder's own tokenizer."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.name = f"{encoder.spec.name}@{encoder.spec.revision[:12]}"

    def count(self, texts: list[str]) -> list[int]:
        return self.encoder.count_tokens(texts)


def record_serializer(encoder: Encoder, vocabulary: Vocabulary, config: EmbedConfig) -> Serializer:
    """A serializer whose budget leaves room for the instruction inside the encoder's window."""
    budget = config.serializer.max_tokens
    if budget is None:
        instruction = config.instruction_for(encoder)
        prefix = encoder.spec.format("", instruction)  # a fixed prompt counts even without an instruction
        prefix_tokens = encoder.count_tokens([prefix])[0] if prefix else 0
        budget = encoder.spec.max_tokens - prefix_tokens - _BUDGET_MARGIN
        if budget < MIN_RECORD_TOKENS:
            raise EncoderError(
                f"the instruction uses {prefix_tokens} of {encoder.spec.max_tokens} tokens, leaving {budget} for "
                f"the record (at least {MIN_RECORD_TOKENS} needed); shorten it or raise the encoder's max_tokens"
            )
    serializer_config = dataclasses.replace(config.serializer, max_tokens=budget)
    appendix = None
    if config.guidelines is not None:  # the settings build their appendix: encoders need not import retrieval
        appendix = config.guidelines.augmenter()
    return Serializer(vocabulary, serializer_config, EncoderTokenCounter(encoder), appendix=appendix)


def default_cache_dir(encoder: Encoder, home: Path | None = None) -> Path:
    """The encoder's embedding cache under the data home (``home``, else the settings')."""
    return (home or get_settings().home) / "cache" / "embeddings" / encoder.spec.fingerprint()


def embed_dataset(
    dataset: MedsDataset,
    encoder: Encoder,
    out: Path,
    config: EmbedConfig | None = None,
    *,
    subject_ids: Sequence[int] | None = None,
    as_of: AsOf = None,
    progress: Callable[[int, int], None] | None = None,
) -> EmbedReport:
    """Embed each subject as of ``as_of``: one time for all, a map from subject to one time or several
    (one row per time, e.g. a task's prediction times), or by default each one's last event.

    ``progress(done, total)`` is called after every chunk. Subjects whose as-of time falls before
    their birth, or who have no dated events, are skipped and counted in the report. The
    embedding set is written to ``out`` atomically.
    """
    started = time.perf_counter()
    embeddings, report = embed_records(
        dataset, encoder, config, subject_ids=subject_ids, as_of=as_of, progress=progress
    )
    embeddings.save(out)
    report.out = Path(out)
    report.seconds = time.perf_counter() - started
    return report


def embed_records(
    dataset: MedsDataset,
    encoder: Encoder,
    config: EmbedConfig | None = None,
    *,
    subject_ids: Sequence[int] | None = None,
    as_of: AsOf = None,
    progress: Callable[[int, int], None] | None = None,
    vocabulary: Vocabulary | None = None,
    cache: EmbeddingCache | None = None,
) -> tuple[EmbeddingSet, EmbedReport]:
    """:func:`embed_dataset` without the file: the embedding set in memory (cached vectors are reused).
    ``vocabulary`` and ``cache``: the dataset's vocabulary and the encoder's embedding cache, when a
    long-lived caller holds them already (the cache then must be the one ``config.cache_dir`` names)."""
    config = config or EmbedConfig()
    if subject_ids is None and isinstance(as_of, Mapping):
        subject_ids = sorted(as_of)
    started = time.perf_counter()
    report = EmbedReport(out=Path())
    vocabulary = vocabulary or Vocabulary.from_dataset(dataset)
    serializer = record_serializer(encoder, vocabulary, config)
    cache = cache or EmbeddingCache(config.cache_dir or default_cache_dir(encoder), encoder.spec.dim)
    fingerprint = encoder.spec.fingerprint()
    instruction = config.instruction_for(encoder)
    wanted = list(subject_ids) if subject_ids is not None else dataset.subject_ids()
    total = len(wanted)

    keys: list[bytes] = []
    row_ids: list[int] = []
    row_times: list[dt.datetime] = []
    pending: list[tuple[bytes, str]] = []
    seen_pending: set[bytes] = set()
    done = 0

    def flush() -> None:
        if not pending:
            return
        texts = [text for _, text in pending]
        vectors = encoder.encode(texts, instruction=instruction, batch_size=config.batch_size)
        report.tokens_encoded += sum(encoder.count_tokens(texts))
        cache.put([key for key, _ in pending], vectors)
        report.encoded += len(pending)
        pending.clear()
        seen_pending.clear()

    for patient in dataset.iter_patients(wanted if subject_ids is not None else None):
        done += 1
        times = _as_of_times(patient, as_of)
        if not times:
            report.skipped["no dated events"] = report.skipped.get("no dated events", 0) + 1
        birth = patient.birth_time
        for when in times:
            if birth is not None and when < birth:
                report.skipped["as-of before birth"] = report.skipped.get("as-of before birth", 0) + 1
                continue
            result = serializer.serialize_with_stats(patient, as_of=when)
            report.truncated_records += result.truncated
            key = cache_key(fingerprint, serializer.version, instruction, result.text)
            keys.append(key)
            row_ids.append(patient.subject_id)
            row_times.append(when)
            if key in cache:
                report.cached += 1
            elif key not in seen_pending:
                pending.append((key, result.text))
                seen_pending.add(key)
        if len(pending) >= config.chunk_size:
            flush()
            if progress is not None:
                progress(done, total)
    flush()
    if progress is not None:
        progress(done, total)
    if not keys:
        raise EncoderError(f"no records to embed in dataset {dataset.name} (skipped: {report.skipped or 'none'})")
    missing_subjects = total - done
    if missing_subjects > 0:
        report.skipped["unknown subject"] = missing_subjects
    embeddings = EmbeddingSet(
        subject_ids=np.asarray(row_ids, dtype=np.int64),
        as_of=np.asarray(row_times, dtype="datetime64[us]"),
        vectors=cache.get_many(keys),
        spec=encoder.spec,
        serializer_version=serializer.version,
        instruction=instruction,
        extra={
            "dataset": dataset.name,
            "serializer": dataclasses.asdict(serializer.config),
            **({"guidelines": serializer.appendix.version} if serializer.appendix is not None else {}),
            "truncated_records": report.truncated_records,
        },
    )
    report.rows = len(keys)
    report.seconds = time.perf_counter() - started
    return embeddings, report


def _as_of_times(patient: s.Patient, as_of: AsOf) -> list[dt.datetime]:
    """The times to embed a patient at: the given one(s), else its last dated event (none if it has none)."""
    if isinstance(as_of, Mapping):
        wanted = as_of.get(patient.subject_id)
        if wanted is None:
            return []
        return [wanted] if isinstance(wanted, dt.datetime) else list(wanted)
    if as_of is not None:
        return [as_of]
    times = [e.time for e in patient.events if e.time is not None]
    return [max(times)] if times else []
