"""The benchmark job: tasks → labels → (optional case-cohort sample) → features per encoder → cells → report.

Encoders are named by strings, so the CLI and the main job share one path:

- ``count``: the count-based baseline (:func:`~ehrembed.predict.features.count_features`);
- ``teacher``, ``student``, ``student-onnx`` or a model folder: records are serialized at each
  label's prediction time and embedded (cached, so a re-run only embeds what is new);
- ``ENCODER+guidelines``: the same, with relevant guideline passages appended to each record;
- ``NAME=SPEC``: any of the above (or the path of a saved embedding set) under another name;
- ``count+NAME``: the count features beside the vectors of ``NAME``, another encoder of the same run
  (:func:`~ehrembed.predict.features.fused_features`).

**Instructions.** Instruction-tuned encoders (teachers) embed each task's times with the task's
question (:mod:`ehrembed.encoders.instructions`), so their features are per task; ``generic``
embeds every time once with the generic question instead, for comparison.

**Sampling.** Embedding every prediction time of every task with an LLM teacher on a CPU is out of
reach, so ``sample_positives`` / ``sample_background`` keep a case-cohort sample: up to that many
positive labels per task (one per patient) plus one random labelled time of that many patients,
shared by all tasks; every task keeps all its labels at the chosen times. AUROC is unbiased under
this sampling; AUPRC and Brier are not (positives are enriched), so compare those only within a run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.encoders.base import Encoder
from ehrembed.encoders.embeddings import PREDICTION_TIME, EmbeddingSet
from ehrembed.errors import InputError
from ehrembed.predict.benchmark import BenchmarkConfig, BenchmarkResult, EncoderFeatures, run_benchmark
from ehrembed.predict.features import (
    FUSION_PREFIX,
    Features,
    count_features,
    embedding_features,
    fused_features,
)
from ehrembed.predict.labelers import LabelSet, label_dataset
from ehrembed.predict.ontology import Ontology
from ehrembed.predict.outputs import encoding_section, write_cell_predictions, write_run_card
from ehrembed.predict.prognosis.features import prognosis_features
from ehrembed.predict.prognosis.folder import is_prognosis_folder
from ehrembed.predict.report import write_report
from ehrembed.predict.tasks import TaskError, TaskSpec

COUNT = "count"
GUIDELINES_SUFFIX = "+guidelines"

Progress = Callable[[str, int, int], None]
"""Called with (stage description, done, total)."""


def _stage(progress: Progress | None, description: str) -> Callable[[int, int], None] | None:
    """``progress`` bound to one stage's description (None stays None)."""
    if progress is None:
        return None
    report = progress

    def update(done: int, total: int) -> None:
        report(description, done, total)

    return update


@dataclass(frozen=True)
class EncoderChoice:
    """One column of the report: its name, where its features come from, and guideline augmentation."""

    name: str
    source: str
    guidelines: bool = False
    fuse: str | None = None
    """For ``count+NAME``: the encoder of the run whose vectors sit beside the counts."""

    @property
    def is_count(self) -> bool:
        return self.source == COUNT


def parse_encoder(text: str) -> EncoderChoice:
    """``count``, ``teacher``, ``student+guidelines``, ``/models/x``, ``NAME=SPEC``."""
    text = text.strip()
    if not text:
        raise InputError("an encoder name is empty")
    name, sep, spec = text.partition("=")
    if not sep:
        name, spec = text, text
    if not name or not spec:
        raise InputError(f"encoder {text!r} must be NAME=SPEC or SPEC")
    if spec.startswith(FUSION_PREFIX):
        partner = spec.removeprefix(FUSION_PREFIX).strip()
        if not partner or partner == COUNT:
            raise InputError(
                f"encoder {text!r}: count+NAME needs NAME, another encoder of the run (e.g. count+student)"
            )
        return EncoderChoice(name=name, source=spec, fuse=partner)
    guidelines = spec.endswith(GUIDELINES_SUFFIX)
    source = spec.removesuffix(GUIDELINES_SUFFIX) if guidelines else spec
    if name == spec and not sep and Path(source).exists():
        name = Path(source).name + (GUIDELINES_SUFFIX if guidelines else "")
    return EncoderChoice(name=name, source=source, guidelines=guidelines)


@dataclass(frozen=True)
class BenchmarkJobConfig:
    """What the benchmark job runs (the cells' settings are in ``benchmark``)."""

    encoders: tuple[str, ...] = (COUNT, "student")
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    generic_instruction: bool = False
    max_tokens: int | None = 512
    batch_size: int = 8
    sample_positives: int | None = None
    sample_background: int | None = None
    seed: int = 0
    guidelines_kb: str | None = None
    predictions: Path | None = None
    """A folder for every cell's held-out predictions in meds-evaluation's format (None: not written)."""


@dataclass
class BenchmarkJobResult:
    report: Path
    result: BenchmarkResult
    labelsets: list[LabelSet]
    skipped_tasks: dict[str, str]
    encoding: dict[str, dict[str, Any]]
    timings: dict[str, float]


def label_tasks(
    dataset: MedsDataset,
    tasks: Sequence[TaskSpec],
    *,
    ontology: Ontology | None = None,
    progress: Progress | None = None,
) -> tuple[list[LabelSet], dict[str, str]]:
    """Label every task; a task that cannot be labelled (unknown codes, no labels) is skipped with its reason."""
    ontology = ontology or Ontology.from_dataset(dataset)
    out: list[LabelSet] = []
    skipped: dict[str, str] = {}
    for task in tasks:
        try:
            labelset = label_dataset(
                task,
                dataset,
                ontology=ontology,
                progress=_stage(progress, f"labelling {task.name}"),
            )
        except TaskError as exc:
            skipped[task.name] = str(exc)
            continue
        if len(labelset) == 0:
            reasons = ", ".join(f"{k}: {v}" for k, v in labelset.skipped.most_common(3)) or "no prediction times"
            skipped[task.name] = f"task {task.name}: no labels in this dataset ({reasons})"
            continue
        if labelset.n_positive == 0:
            skipped[task.name] = f"task {task.name}: {len(labelset)} labels but no positives"
            continue
        out.append(labelset)
    return out, skipped


def _hash_order(subject_id: int, when: Any, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}:{subject_id}:{when}".encode()).digest()[:8]


def case_cohort_keys(
    labelsets: Sequence[LabelSet], *, positives: int | None, background: int | None, seed: int = 0
) -> pl.DataFrame:
    """(subject_id, prediction_time) rows to keep: per task up to ``positives`` positive labels (one per
    patient), plus one labelled time of up to ``background`` patients; choices are hash-stable."""
    chosen: set[tuple[int, Any]] = set()
    for labelset in labelsets:
        seen_subjects: set[int] = set()
        ranked = sorted(
            (lab for lab in labelset.labels if lab.value),
            key=lambda lab: _hash_order(lab.subject_id, lab.prediction_time, seed),
        )
        for lab in ranked:
            if positives is not None and len(seen_subjects) >= positives:
                break
            if lab.subject_id not in seen_subjects:
                seen_subjects.add(lab.subject_id)
                chosen.add((lab.subject_id, lab.prediction_time))
    by_subject: dict[int, list[Any]] = {}
    for labelset in labelsets:
        for lab in labelset.labels:
            by_subject.setdefault(lab.subject_id, []).append(lab.prediction_time)
    subjects = sorted(by_subject, key=lambda sid: _hash_order(sid, "", seed))
    for sid in subjects[: background if background is not None else len(subjects)]:
        times = sorted(set(by_subject[sid]), key=lambda t: _hash_order(sid, t, seed))
        chosen.add((sid, times[0]))
    frame = pl.DataFrame(
        {s.SUBJECT_ID: [c[0] for c in chosen], PREDICTION_TIME: [c[1] for c in chosen]},
        schema={s.SUBJECT_ID: pl.Int64, PREDICTION_TIME: pl.Datetime("us")},
    )
    return frame.sort(s.SUBJECT_ID, PREDICTION_TIME)


def restrict(labelset: LabelSet, keys: pl.DataFrame) -> LabelSet:
    """The labels of a task at the given (subject, time) rows only."""
    wanted = {(int(a), b) for a, b in keys.select(s.SUBJECT_ID, PREDICTION_TIME).iter_rows()}
    kept = [lab for lab in labelset.labels if (lab.subject_id, lab.prediction_time) in wanted]
    skipped = Counter(labelset.skipped)
    skipped["not in the case-cohort sample"] += len(labelset.labels) - len(kept)
    return dataclasses.replace(labelset, labels=kept, skipped=skipped)


def label_keys(labelsets: Sequence[LabelSet]) -> pl.DataFrame:
    """Every distinct (subject_id, prediction_time) the tasks label."""
    frames = [ls.frame().select(s.SUBJECT_ID, PREDICTION_TIME) for ls in labelsets]
    if not frames:
        return pl.DataFrame(schema={s.SUBJECT_ID: pl.Int64, PREDICTION_TIME: pl.Datetime("us")})
    return pl.concat(frames).unique().sort(s.SUBJECT_ID, PREDICTION_TIME)


def labels_frame(labelsets: Sequence[LabelSet]) -> pl.DataFrame:
    """Every label as one row: subject_id, prediction_time, value, task (what soft-label distillation reads)."""
    return pl.concat([ls.frame().with_columns(task=pl.lit(ls.task.name)) for ls in labelsets])


def times_by_subject(keys: pl.DataFrame) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for sid, when in keys.select(s.SUBJECT_ID, PREDICTION_TIME).iter_rows():
        out.setdefault(int(sid), []).append(when)
    return out


def _load_encoder(choice: EncoderChoice, max_tokens: int | None) -> Encoder:
    """The choice's encoder; ``max_tokens`` sets a teacher's window but may only shorten a student's."""
    from ehrembed.encoders import encoder_kind, load_encoder

    if max_tokens is not None and encoder_kind(choice.source) != "teacher":
        encoder = load_encoder(choice.source)
        if encoder.spec.max_tokens > max_tokens:
            encoder = load_encoder(choice.source, max_tokens=max_tokens)
        return encoder
    return load_encoder(choice.source, **({} if max_tokens is None else {"max_tokens": max_tokens}))


def _saved_set(choice: EncoderChoice) -> Path | None:
    source = Path(choice.source)
    if source.exists() and ((source / "embedding.json").exists() or source.suffix == ".parquet"):
        return source
    return None


def embed_keys(
    dataset: MedsDataset,
    choice: EncoderChoice,
    keys: pl.DataFrame,
    out: Path,
    *,
    max_tokens: int | None,
    batch_size: int,
    guidelines_kb: str | None = None,
    question: str | None = None,
    encoder: Encoder | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[EmbeddingSet, dict[str, Any]]:
    """Embed each (subject, time) of ``keys`` with the chosen encoder (or load a saved set); speed figures.

    ``question`` is the task's question for instruction-tuned encoders (None: the generic one).
    """
    saved = _saved_set(choice)
    if saved is not None:
        embeddings = EmbeddingSet.load(saved)
        return embeddings, {"source": str(saved), "rows": len(embeddings)}
    from ehrembed.encoders.job import EmbedConfig, embed_dataset

    encoder = encoder or _load_encoder(choice, max_tokens)
    guidelines = None
    if choice.guidelines:
        from ehrembed.retrieval.augment import GuidelineAugmentation

        guidelines = GuidelineAugmentation(kb=guidelines_kb)
    config = EmbedConfig(question=question, batch_size=batch_size, guidelines=guidelines)
    report = embed_dataset(dataset, encoder, out, config, as_of=times_by_subject(keys), progress=progress)
    info = report.as_dict()
    info["records_per_second"] = (
        round(report.encoded / report.seconds, 3) if report.encoded and report.seconds else None
    )
    info["encoder"] = encoder.spec.name
    info["max_tokens"] = encoder.spec.max_tokens
    info["instruction"] = config.instruction_for(encoder)
    return EmbeddingSet.load(out), info


TaskEmbeddings = EmbeddingSet | dict[str, EmbeddingSet]
"""One embedding set for every task, or one per task name (instruction-tuned encoders: one instruction a task)."""


def embed_tasks(
    dataset: MedsDataset,
    choice: EncoderChoice,
    labelsets: Sequence[LabelSet],
    out: Path,
    *,
    max_tokens: int | None,
    batch_size: int,
    guidelines_kb: str | None = None,
    generic: bool = False,
    encoder: Encoder | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[TaskEmbeddings, dict[str, Any]]:
    """Embed the tasks' labelled times with the chosen encoder, the way the instruction rule says.

    An encoder whose vectors do not depend on the instruction (a student) embeds every time once;
    an instruction-tuned one (a teacher) embeds each task's times with the task's question, into
    ``out/{task}`` (or once with the generic question when ``generic``). ``encoder`` is the choice's
    encoder already loaded (e.g. with another pooling); by default it is loaded here. The returned
    info's ``plan`` says which it was (``once``, ``per task`` or ``saved set``); it goes into ``run.json``.
    """
    from ehrembed.encoders.instructions import instruction_for

    all_keys = label_keys(labelsets)
    if _saved_set(choice) is not None:
        saved, info = embed_keys(dataset, choice, all_keys, out, max_tokens=max_tokens, batch_size=batch_size)
        return saved, {**info, "plan": "saved set"}
    encoder = encoder or _load_encoder(choice, max_tokens)
    embed = functools.partial(
        embed_keys, dataset, choice, max_tokens=max_tokens, batch_size=batch_size, guidelines_kb=guidelines_kb,
        encoder=encoder,
    )  # fmt: skip
    if generic or instruction_for(encoder.spec, "?") is None:
        once, info = embed(all_keys, out, progress=progress)
        return once, {**info, "plan": "once"}
    per_task: dict[str, EmbeddingSet] = {}
    infos: list[dict[str, Any]] = []
    total = sum(ls.frame().get_column(s.SUBJECT_ID).n_unique() for ls in labelsets)
    done_before = 0
    for labelset in labelsets:
        keys = label_keys([labelset])
        offset = done_before

        def step(done: int, _total: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + done, total)

        per_task[labelset.task.name], info = embed(
            keys, out / labelset.task.name, question=labelset.task.question, progress=step
        )
        infos.append(info)
        done_before += keys.get_column(s.SUBJECT_ID).n_unique()
    merged: dict[str, Any] = {k: infos[0][k] for k in ("encoder", "max_tokens")}
    for key in ("rows", "encoded", "cached", "truncated_records", "seconds", "tokens_encoded"):
        merged[key] = sum(i.get(key) or 0 for i in infos)
    merged["records_per_second"] = (
        round(merged["encoded"] / merged["seconds"], 3) if merged["encoded"] and merged["seconds"] else None
    )
    merged["instructions"] = {ls.task.name: i["instruction"] for ls, i in zip(labelsets, infos, strict=True)}
    merged["plan"] = "per task"
    return per_task, merged


def check_fusions(choices: Sequence[EncoderChoice]) -> None:
    """Every ``count+NAME`` names another (non-fused, non-count) encoder of the same run."""
    names = {c.name: c for c in choices}
    for choice in choices:
        if choice.fuse is None:
            continue
        partner = names.get(choice.fuse)
        if partner is None or partner.fuse is not None or partner.is_count:
            others = ", ".join(c.name for c in choices if c.fuse is None and not c.is_count) or "none"
            raise InputError(
                f"encoder {choice.name}: {choice.fuse!r} is not an encoder of this run (its encoders: {others})"
            )


def task_features(name: str, embeddings: TaskEmbeddings) -> EncoderFeatures:
    """Features of one embedding set, or per task of per-task sets."""
    if isinstance(embeddings, EmbeddingSet):
        return embedding_features(name, embeddings)
    return {task: embedding_features(name, emb) for task, emb in embeddings.items()}


def fuse(counts: Features, partner: EncoderFeatures, name: str, fit_subjects: np.ndarray) -> EncoderFeatures:
    """``count+NAME`` features: the counts beside the partner's vectors (per task where the partner is);
    the vectors' principal components are fitted on ``fit_subjects`` (the train split) only."""
    if isinstance(partner, Mapping):
        return {task: fused_features(counts, f, name, fit_subjects=fit_subjects) for task, f in partner.items()}
    return fused_features(counts, partner, name, fit_subjects=fit_subjects)


def benchmark_dataset(
    dataset: MedsDataset,
    tasks: Sequence[TaskSpec],
    out: Path,
    config: BenchmarkJobConfig | None = None,
    *,
    embeddings: dict[str, TaskEmbeddings] | None = None,
    encoding: dict[str, dict[str, Any]] | None = None,
    labelled: tuple[list[LabelSet], dict[str, str]] | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] = lambda _m: None,
    title: str | None = None,
) -> BenchmarkJobResult:
    """Label, featurize, run every cell and write the report into ``out``.

    ``embeddings`` supplies ready embedding sets by encoder name (the main job passes the ones it
    made); other neural encoders are embedded into ``out/embeddings/{name}``. ``labelled`` supplies
    labels already made (and sampled) with the tasks that were skipped, so they are not made twice.
    """
    config = config or BenchmarkJobConfig()
    choices = [parse_encoder(e) for e in config.encoders]
    names = [c.name for c in choices]
    if len(set(names)) != len(names):
        raise InputError(f"encoder names must be unique, got {names}")
    check_fusions(choices)
    out = Path(out)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    ontology = Ontology.from_dataset(dataset)
    if labelled is not None:
        labelsets, skipped = labelled
    else:
        labelsets, skipped = label_tasks(dataset, tasks, ontology=ontology, progress=progress)
        for reason in skipped.values():
            say(f"not run: {reason}")
    if not labelsets:
        raise TaskError("no task has labels in this dataset: " + "; ".join(skipped.values()))
    if labelled is None and (config.sample_positives is not None or config.sample_background is not None):
        keys = case_cohort_keys(
            labelsets, positives=config.sample_positives, background=config.sample_background, seed=config.seed
        )
        labelsets = [restrict(ls, keys) for ls in labelsets]
    keys = label_keys(labelsets)
    timings["label"] = time.perf_counter() - started

    features: dict[str, EncoderFeatures] = {}
    encoding = dict(encoding or {})
    counts: Features | None = None
    zero_shot: dict[str, dict[str, Features]] = {}
    for choice in sorted(choices, key=lambda c: c.fuse is not None):  # fusions last: they reuse the others
        started = time.perf_counter()
        if (choice.is_count or choice.fuse is not None) and counts is None:
            counts = count_features(dataset, keys, ontology=ontology, name=COUNT)
        if choice.is_count:
            assert counts is not None
            features[choice.name] = dataclasses.replace(counts, name=choice.name)
        elif choice.fuse is not None:
            assert counts is not None
            train = dataset.splits().filter(pl.col(s.SPLIT) == s.Split.TRAIN.value).get_column(s.SUBJECT_ID)
            features[choice.name] = fuse(counts, features[choice.fuse], choice.name, train.to_numpy())
        elif (
            (embeddings or {}).get(choice.name) is None and not choice.guidelines and is_prognosis_folder(choice.source)
        ):
            features[choice.name], encoding[choice.name], zero_shot[choice.name] = prognosis_features(
                dataset, choice.name, choice.source, keys, labelsets=labelsets, ontology=ontology, say=say
            )
        else:
            emb = (embeddings or {}).get(choice.name)
            if emb is None:
                emb, info = embed_tasks(
                    dataset,
                    choice,
                    labelsets,
                    out / "embeddings" / choice.name.replace("/", "_"),
                    max_tokens=config.max_tokens,
                    batch_size=config.batch_size,
                    guidelines_kb=config.guidelines_kb,
                    generic=config.generic_instruction,
                    progress=_stage(progress, f"embedding ({choice.name})"),
                )
                encoding[choice.name] = info
            features[choice.name] = task_features(choice.name, emb)
        timings[f"features:{choice.name}"] = time.perf_counter() - started

    started = time.perf_counter()
    result = run_benchmark(
        labelsets,
        features,
        dataset.splits(),
        config.benchmark,
        zero_shot=zero_shot,
        progress=_stage(progress, "few-shot cells"),
        say=say,
    )
    timings["benchmark"] = time.perf_counter() - started
    if config.predictions is not None:
        written = write_cell_predictions(result, labelsets, Path(config.predictions))
        say(f"predictions: {written:,} files (meds-evaluation format) in {config.predictions}")
    extra = {}
    if encoding:
        extra["Encoding speed"] = encoding_section(encoding)
    if skipped:
        extra["Tasks not run"] = "\n".join(f"- {reason}" for reason in skipped.values())
    report = write_report(
        result,
        out,
        title=title or f"Few-shot benchmark on {dataset.name}",
        encoders=names,
        extra_sections=extra,
    )
    write_run_card(out, dataset, tasks, config, encoding, timings)
    return BenchmarkJobResult(report, result, labelsets, skipped, encoding, timings)
