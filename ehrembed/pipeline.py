"""The main job (``ehrembed run`` / ``make run``): records in → vectors → few-shot benchmark → report.

Stages, each timed and each reusing its finished output on a re-run (``fresh`` redoes them):

1. **ingest** Eunomia (or use ``dataset``) as MEDS, register it, describe it, serialize one record;
2. **label** the tasks, then keep a case-cohort sample of prediction times the CPU can embed
   (:func:`ehrembed.predict.job.case_cohort_keys`);
3. **pretrain** the prognostic encoder on the train split's own timelines (:mod:`ehrembed.predict.prognosis`;
   no task, no label);
4. **teacher**: embed those records with the LLM teacher, each task's times with the task's
   question in the instruction (:mod:`ehrembed.encoders.instructions`; content-addressed cache: a
   killed run resumes where it stopped), and, with ``guidelines``, again with guideline passages
   appended (the knowledge base is built once under the data home);
5. **distill** the teacher (or, with the ``prognostic`` recipe, the prognostic encoder) into the BERT
   student on the train-split rows (targets: each record's teacher vectors averaged over the task
   instructions; a base-retention term keeps the student's own similarity structure; the epoch is
   chosen by tuning-split overlap@10 with the teacher);
6. **student**: embed with the undistilled and the distilled student;
7. **index** the distilled student's vectors for similar-patient search;
8. **benchmark** count baseline, undistilled student, teacher (± guidelines), distilled student, the
   prognostic encoder (with its ``k=0`` zero-shot cells) and the fusions ``count+student`` /
   ``count+teacher`` / ``count+distilled`` / ``count+prognosis`` with LightGBM, logistic and kNN heads
   over the few-shot ks, and write the report.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.omop import ingest_omop
from ehrembed.ehr.serialize import EMBED_FORMAT, Serializer, SerializerConfig
from ehrembed.ehr.stats import dataset_stats
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.encoders.base import Encoder
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.errors import InputError
from ehrembed.fsutil import atomic_write_text, sha256_file
from ehrembed.store.catalog import register_meds
from ehrembed.store.db import catalog

if TYPE_CHECKING:
    from ehrembed.predict.job import BenchmarkJobResult
    from ehrembed.predict.labelers import LabelSet
    from ehrembed.predict.tasks import TaskSpec

Say = Callable[[str], None]
Progress = Callable[[str, int, int], None]

MAIN_JOB_TASKS: tuple[str, ...] = ("operational", "new_diagnosis", "abnormal_lab")
MAIN_JOB_KS: tuple[int | str, ...] = (1, 2, 4, 8, 16, 32, 64, "all")
DEFAULT_BASE_WEIGHT = 1.0
"""The main job's base-retention weight (the recipe of ``DistillConfig.keeping_base``)."""


@dataclass(frozen=True)
class MainJobConfig:
    """The main job's settings; the defaults fit about 15 minutes on a 2-core CPU with the packaged models.

    ``dataset`` None ingests the packaged Eunomia demo. ``sample_positives`` / ``sample_background``
    size the case-cohort sample that the LLM teacher embeds (None: every labelled time). ``teacher``,
    ``student`` and ``retrieval_model`` accept local folders (a GTE-Qwen2 on a GPU host, a BGE).
    """

    out: Path = Path("out")
    fresh: bool = False
    dataset: Path | None = None
    serializer: SerializerConfig = field(default_factory=lambda: SerializerConfig(format=EMBED_FORMAT))
    tasks: tuple[str, ...] = MAIN_JOB_TASKS
    predicates: str | None = None
    """Dataset predicates for ACES task configs (a file, or ``omop``); see :mod:`ehrembed.predict.aces`."""
    teacher: str = "teacher"
    teacher_pooling: str | None = None
    """Pooling of the teacher (``last`` / ``mean`` / ``cls``); None keeps the encoder's default."""
    student: str | None = None
    max_tokens: int = 192
    batch_size: int = 8
    sample_positives: int | None = 60
    sample_background: int | None = 160
    guidelines: bool = False
    guidelines_kb: Path | None = None
    retrieval_model: Path | None = None
    distill_epochs: int = 3
    distill_base_weight: float = DEFAULT_BASE_WEIGHT
    distill_records: Literal["sample", "all"] = "sample"
    """What the student learns from: the teacher vectors of the case-cohort sample (``sample``), or of
    every patient's whole record (``all``: one more teacher pass over the dataset, each record with one
    task's question in turn)."""
    distill_recipe: Literal["embedding", "soft-labels", "prognostic"] = "embedding"
    """``embedding``: the student learns the teacher's vectors (keeping its base). ``soft-labels`` adds the
    CKD-EHR term: a head on the student learns the sample's train labels mixed 0.9 / 0.1 with the frozen
    teacher's cross-fitted probabilities. The student then has seen every train label of the sample, so
    its few-shot cells are not few-shot: compare it at k = all. ``prognostic``: the student learns the prognostic
    encoder's vectors of the same records instead of the teacher's (text in, the record's likely future out)."""
    prognosis: bool = True
    """Pretrain the prognostic encoder on the train split (a stage of its own) and benchmark ``prognosis`` and
    ``count+prognosis``."""
    ks: tuple[int | str, ...] = MAIN_JOB_KS
    replicates: int = 3
    heads: tuple[str, ...] = ("lightgbm", "logistic", "knn")
    n_bootstrap: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.distill_recipe == "prognostic" and not self.prognosis:
            raise InputError("the prognostic distillation recipe needs the prognostic encoder: drop --no-prognosis")
        if self.distill_recipe == "soft-labels" and self.distill_records != "sample":
            raise InputError(
                "the soft-label recipe learns the sample's labels, which fall on the sample's records: "
                "use --distill-records sample with --distill-recipe soft-labels"
            )


@dataclass(frozen=True)
class MainJobResult:
    stats: dict[str, Any]
    subject_id: int
    as_of: dt.datetime
    record: str
    timings: dict[str, float]
    report: Path | None = None
    summary: str = ""
    encoding: dict[str, dict[str, Any]] = field(default_factory=dict)


def distillation_keys(dataset: MedsDataset) -> pl.DataFrame:
    """Every subject as of its last dated event: the whole records distillation can learn from."""
    return (
        dataset.scan()
        .filter(pl.col(s.TIME).is_not_null())
        .group_by(s.SUBJECT_ID)
        .agg(pl.col(s.TIME).max().alias("prediction_time"))
        .sort(s.SUBJECT_ID)
        .collect()
        .select(pl.col(s.SUBJECT_ID).cast(pl.Int64), pl.col("prediction_time").cast(pl.Datetime("us")))
    )


def _typical_held_out_subject(dataset: MedsDataset) -> int:
    """The held-out subject whose event count is closest to the median: a representative record."""
    counts = dataset.scan().group_by(s.SUBJECT_ID).agg(pl.len().alias("n"))
    held_out = dataset.splits().filter(pl.col(s.SPLIT) == s.Split.HELD_OUT.value).select(s.SUBJECT_ID).lazy()
    frame = counts.join(held_out, on=s.SUBJECT_ID).collect()
    if frame.is_empty():
        frame = counts.collect()
    median = frame.get_column("n").median()
    return int(
        frame.with_columns((pl.col("n") - median).abs().alias("d")).sort("d", s.SUBJECT_ID).item(0, s.SUBJECT_ID)
    )


class _Clock:
    """Times named stages and tells the user as each one starts and ends."""

    def __init__(self, say: Say) -> None:
        self.say = say
        self.timings: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = fn()
        self.timings[name] = time.perf_counter() - started
        self.say(f"{name}: done in {self.timings[name]:.1f}s")
        return value


def _ingest(config: MainJobConfig, say: Say) -> MedsDataset:
    if config.dataset is not None:
        say(f"ingest: using {config.dataset}")
        return MedsDataset.open(config.dataset)
    data_dir = Path(config.out) / "eunomia"
    if config.fresh or not (data_dir / s.DATASET_FILE).exists():
        say("ingest: Eunomia OMOP CDM → MEDS")
        ingest_omop(out=data_dir, overwrite=True)
    else:
        say(f"ingest: reusing {data_dir}")
    return MedsDataset.open(data_dir)


def _guideline_kb(config: MainJobConfig, say: Say, progress: Progress | None) -> Path:
    """The knowledge base folder, built once (under the data home unless ``guidelines_kb`` names one)."""
    from ehrembed.retrieval.guidelines import RetrievalModelConfig, build_knowledge_base, default_kb_dir

    target = config.guidelines_kb or default_kb_dir()
    if (target / "kb.json").exists() and not config.fresh:
        say(f"guidelines: reusing the knowledge base in {target}")
        return target
    model = RetrievalModelConfig.minilm(config.retrieval_model)
    say(f"guidelines: building the knowledge base in {target} (once)")
    kb = build_knowledge_base(
        None,
        model,
        progress=None if progress is None else (lambda d, t: progress("embedding guideline passages", d, t)),
    )
    kb.save(target, onnx_queries=True)
    return target


def _distill(
    config: MainJobConfig,
    dataset: MedsDataset,
    teacher: EmbeddingSet | Mapping[str, EmbeddingSet],
    teacher_dir: Path,
    out: Path,
    say: Say,
    labels: pl.DataFrame,
) -> Path:
    """Distil the teacher's vectors into the student; reuse an earlier student made from the same vectors
    with the same recipe. ``labels`` (the sample's, one row per task and time) feed the soft-label recipe."""
    from ehrembed.distill.job import RETENTION_FILE, DistillJobConfig, average_over_instructions, distill_dataset
    from ehrembed.distill.train import DistillConfig

    source = out.with_name(out.name + ".teacher.json")
    soft = config.distill_recipe == "soft-labels"
    job = DistillJobConfig(
        base=Path(config.student) if config.student else None,
        train=DistillConfig.keeping_base(
            epochs=config.distill_epochs,
            batch_size=16,
            patience=2,
            weight_base=config.distill_base_weight,
            weight_soft_label=1.0 if soft else 0.0,
        ),
        seed=config.seed,
    )
    made_from = {
        "teacher_sha256": sha256_file(teacher_dir),
        "recipe": json.loads(json.dumps(dataclasses.asdict(job), default=str)),
    }
    if (
        (out / "modules.json").exists()
        and (out / RETENTION_FILE).exists()
        and not config.fresh
        and source.exists()
        and json.loads(source.read_text()) == made_from
    ):
        say(f"distill: reusing {out} (same teacher vectors and recipe)")
        return out
    targets = teacher if isinstance(teacher, EmbeddingSet) else average_over_instructions(teacher)
    result = distill_dataset(dataset, targets, out, job, labels=labels if soft else None, overwrite=True, resume=False)
    atomic_write_text(source, json.dumps(made_from) + "\n")
    for task, counts in (result.labels or {}).items():
        say(
            f"distill: {task}: {counts['labelled']} labelled train records ({counts['positives']} positive), "
            f"{counts['with_probability']} with a teacher probability"
        )
    final = result.distill.final
    say(
        f"distill: {result.rows['train']} train records, best epoch {result.distill.best_epoch}, tuning "
        f"overlap@10 with the teacher {result.distill.initial.overlap or 0:.3f} → {final.overlap or 0:.3f}, "
        f"cosine {result.distill.initial.cosine:.3f} → {final.cosine:.3f}"
    )
    retention = result.retention
    if "student" in retention:
        k = retention.get("k", 10)
        say(
            f"distill: held-out retention: cosine to teacher {retention['student']['cosine_mean']:.3f}, "
            f"overlap@{k} {retention['student'][f'overlap@{k}']:.3f} "
            f"(undistilled student {retention['undistilled'][f'overlap@{k}']:.3f})"
        )
    return out


def _pretrain(config: MainJobConfig, dataset: MedsDataset, out: Path, say: Say, progress: Progress | None) -> Path:
    """The prognostic encoder, pretrained on the train split; reused when made from the same data and settings."""
    from ehrembed.predict.prognosis.folder import is_prognosis_folder
    from ehrembed.predict.prognosis.train import PretrainConfig, pretrain

    settings = PretrainConfig(seed=config.seed, name="prognosis")
    made_from = {"dataset": str(dataset.root), "config": dataclasses.asdict(settings)}
    source = out.with_name(out.name + ".made-from.json")
    same = source.exists() and json.loads(source.read_text()) == json.loads(json.dumps(made_from))
    if is_prognosis_folder(out) and not config.fresh and same:
        say(f"pretrain: reusing {out} (same dataset and settings)")
        return out
    result = pretrain(
        dataset,
        out,
        settings,
        say=say,
        progress=None if progress is None else (lambda d, t: progress("pretraining (prognosis)", d, t)),
        overwrite=True,
    )
    atomic_write_text(source, json.dumps(made_from) + "\n")
    from ehrembed.services.prognosis import record_prognosis

    with catalog() as session:  # `GET /v1/patients/{id}/outlook` finds it here
        record_prognosis(session, out, dataset, method=settings.method)
    auroc = result.figures.get("validation_auroc_365d")
    say(
        f"pretrain: {len(result.model.targets):,} targets, {result.model.dim}-d vectors"
        + (f", validation AUROC of its 365-day risks {auroc:.3f}" if auroc is not None else "")
    )
    return out


def _sampled_labels(
    config: MainJobConfig, dataset: MedsDataset, tasks: Sequence[TaskSpec], say: Say, progress: Progress | None
) -> tuple[list[LabelSet], dict[str, str]]:
    """The tasks' labels, cut to the case-cohort sample the teacher embeds; the tasks left out and why."""
    from ehrembed.predict.job import case_cohort_keys, label_keys, label_tasks, restrict
    from ehrembed.predict.ontology import Ontology
    from ehrembed.predict.tasks import TaskError

    ontology = Ontology.from_dataset(dataset)
    labelsets, skipped = label_tasks(dataset, tasks, ontology=ontology, progress=progress)
    for reason in skipped.values():
        say(f"  not run: {reason}")
    if not labelsets:
        raise TaskError("no task has labels in this dataset: " + "; ".join(skipped.values()))
    keys = case_cohort_keys(
        labelsets, positives=config.sample_positives, background=config.sample_background, seed=config.seed
    )
    labelsets = [restrict(ls, keys) for ls in labelsets]
    keys = label_keys(labelsets)
    say(
        f"label: {len(labelsets)} tasks, {keys.height:,} prediction times to embed "
        f"({', '.join(f'{ls.task.name} {len(ls)}/{ls.n_positive}+' for ls in labelsets)})"
    )
    return labelsets, skipped


def _prognostic_targets(
    dataset: MedsDataset, teacher: EmbeddingSet | Mapping[str, EmbeddingSet], model_dir: Path, out: Path
) -> tuple[EmbeddingSet, Path]:
    """The prognostic encoder's vectors of the records the teacher embedded (each record once): what the
    ``prognostic`` recipe's student learns instead of the teacher's vectors."""
    from ehrembed.predict.prognosis.model import PrognosisModel, embedding_set

    sets = [teacher] if isinstance(teacher, EmbeddingSet) else list(teacher.values())
    keys = (
        pl.concat([e.rows() for e in sets])
        .unique()
        .sort(s.SUBJECT_ID, "prediction_time")
        .select(pl.col(s.SUBJECT_ID).cast(pl.Int64), pl.col("prediction_time").cast(pl.Datetime("us")))
    )
    vectors = embedding_set(PrognosisModel.load(model_dir), dataset, keys)
    vectors.save(out)
    return EmbeddingSet.load(out), out


def _every_record_targets(
    config: MainJobConfig,
    dataset: MedsDataset,
    labelsets: Sequence[LabelSet],
    emb_dir: Path,
    teacher_encoder: Encoder | None,
    say: Say,
    progress: Progress | None,
) -> dict[str, EmbeddingSet]:
    """``--distill-records all``: every patient's whole record through the teacher, each with one task's question
    in turn (patients dealt round-robin over the tasks)."""
    from ehrembed.predict.job import embed_keys, parse_encoder

    keys = distillation_keys(dataset)
    choice = parse_encoder(f"teacher={config.teacher}")
    step = None if progress is None else (lambda d, t: progress("embedding (every record)", d, t))
    sets: dict[str, EmbeddingSet] = {}
    for i, labelset in enumerate(labelsets):
        part = keys.filter(pl.col(s.SUBJECT_ID) % len(labelsets) == i)
        if part.height:
            sets[labelset.task.name], _ = embed_keys(
                dataset,
                choice,
                part,
                emb_dir / "distill-teacher" / labelset.task.name,
                max_tokens=config.max_tokens,
                batch_size=config.batch_size,
                question=labelset.task.question,
                encoder=teacher_encoder,
                progress=step,
            )
    say(f"teacher: {keys.height:,} whole records for distillation")
    return sets


def _benchmark(
    config: MainJobConfig,
    dataset: MedsDataset,
    tasks: Sequence[TaskSpec],
    out: Path,
    embeddings: dict[str, Any],
    encoding: dict[str, dict[str, Any]],
    labelled: tuple[list[LabelSet], dict[str, str]],
    progress: Progress | None,
) -> BenchmarkJobResult:
    """Every encoder of the run (and the fusions with counts) through the few-shot benchmark and its report."""
    from ehrembed.predict.benchmark import BenchmarkConfig
    from ehrembed.predict.job import BenchmarkJobConfig, benchmark_dataset

    prognosis = (f"prognosis={out / 'models' / 'prognosis'}",) if config.prognosis else ()
    encoders = (
        "count",
        "student",
        "teacher",
        *(("teacher+guidelines",) if config.guidelines else ()),
        "distilled",
        *prognosis,
        "count+student",
        "count+teacher",
        "count+distilled",
        *(("count+prognosis",) if config.prognosis else ()),
    )
    job = BenchmarkJobConfig(
        encoders=encoders,
        benchmark=BenchmarkConfig(
            ks=config.ks,
            replicates=config.replicates,
            heads=config.heads,
            seed=config.seed,
            n_bootstrap=config.n_bootstrap,
        ),
        sample_positives=config.sample_positives,
        sample_background=config.sample_background,
        seed=config.seed,
    )
    return benchmark_dataset(
        dataset,
        tasks,
        out / "report",
        job,
        embeddings=embeddings,
        encoding=encoding,
        labelled=labelled,
        progress=progress,
        title=f"Few-shot benchmark on {dataset.name} (main job)",
    )


def run_main_job(config: MainJobConfig, say: Say = lambda _m: None, progress: Progress | None = None) -> MainJobResult:
    """Run every stage into ``config.out`` and return what to show the user."""
    from ehrembed.predict.job import embed_tasks, labels_frame, parse_encoder
    from ehrembed.predict.tasks import resolve_tasks
    from ehrembed.services.embeddings import record_embeddings
    from ehrembed.services.indexes import build_recorded_index
    from ehrembed.services.reports import record_report

    out = Path(config.out)
    clock = _Clock(say)
    dataset = clock.run("ingest", lambda: _ingest(config, say))

    def register() -> None:
        with catalog() as session:
            register_meds(session, dataset, "omop" if config.dataset is None else "meds")

    clock.run("register", register)
    vocabulary = Vocabulary.from_dataset(dataset)

    def describe() -> dict[str, Any]:
        stats = dataset_stats(dataset, vocabulary)
        atomic_write_text(out / "stats.json", json.dumps(stats, indent=2, default=str) + "\n")
        return stats

    stats = clock.run("describe", describe)
    subject_id = _typical_held_out_subject(dataset)
    patient = dataset.patient(subject_id)
    as_of = max(e.time for e in patient.events if e.time is not None)
    record = Serializer(vocabulary, config.serializer).serialize(patient, as_of=as_of)
    atomic_write_text(out / f"record_{subject_id}.md", record)

    tasks = resolve_tasks(list(config.tasks), predicates=config.predicates)
    labelsets, skipped = clock.run("label", lambda: _sampled_labels(config, dataset, tasks, say, progress))
    prognosis_dir = out / "models" / "prognosis"
    if config.prognosis:
        clock.run("pretrain", lambda: _pretrain(config, dataset, prognosis_dir, say, progress))

    # --- embeddings ----------------------------------------------------------------------------
    emb_dir = out / "embeddings"
    embeddings: dict[str, Any] = {}
    encoding: dict[str, dict[str, Any]] = {}

    teacher_encoder: Encoder | None = None

    def embed(name: str, spec: str, kb: Path | None = None, encoder: Encoder | None = None) -> None:
        choice = parse_encoder(f"{name}={spec}")
        emb, info = embed_tasks(
            dataset,
            choice,
            labelsets,
            emb_dir / name,
            max_tokens=config.max_tokens,
            batch_size=config.batch_size,
            guidelines_kb=str(kb) if kb is not None else None,
            encoder=encoder,
            progress=None if progress is None else (lambda d, t: progress(f"embedding ({name})", d, t)),
        )
        embeddings[name], encoding[name] = emb, info
        with catalog() as session:
            for part in list(emb) if isinstance(emb, dict) else [None]:
                where = emb_dir / name / part if part else emb_dir / name
                label = f"{dataset.name}-{name}" + (f"-{part}" if part else "")
                record_embeddings(session, dataset, where, encoder=name, name=label)

    def teacher() -> None:
        nonlocal teacher_encoder
        from ehrembed.encoders import load_encoder

        options: dict[str, Any] = {"max_tokens": config.max_tokens}
        if config.teacher_pooling is not None:
            options["pooling"] = config.teacher_pooling
        teacher_encoder = load_encoder(config.teacher, **options)
        embed("teacher", config.teacher, encoder=teacher_encoder)

    clock.run("teacher", teacher)
    if config.guidelines:
        kb = clock.run("guidelines", lambda: _guideline_kb(config, say, progress))
        clock.run(
            "teacher+guidelines",
            lambda: embed("teacher+guidelines", f"{config.teacher}+guidelines", kb, encoder=teacher_encoder),
        )
    models = out / "models" / "student"
    targets, targets_dir = embeddings["teacher"], emb_dir / "teacher"
    if config.distill_records == "all":
        every_record = functools.partial(
            _every_record_targets, config, dataset, labelsets, emb_dir, teacher_encoder, say, progress
        )
        targets, targets_dir = clock.run("teacher (every record)", every_record), emb_dir / "distill-teacher"
    if config.distill_recipe == "prognostic":
        targets, targets_dir = _prognostic_targets(dataset, targets, prognosis_dir, emb_dir / "prognosis-targets")
    labels = labels_frame(labelsets)
    clock.run("distill", lambda: _distill(config, dataset, targets, targets_dir, models, say, labels))
    clock.run("student", lambda: embed("student", config.student or "student"))
    clock.run("distilled", lambda: embed("distilled", str(models)))

    def index() -> None:
        with catalog() as session:
            build_recorded_index(dataset, [emb_dir / "distilled"], out / "index" / "distilled", session=session)

    clock.run("index", index)

    bench = clock.run(
        "benchmark",
        lambda: _benchmark(config, dataset, tasks, out, embeddings, encoding, (labelsets, skipped), progress),
    )
    with catalog() as session:  # the console's report page finds the run here
        record_report(session, bench.report.parent, dataset.name, dataset.root)
    card_path = bench.report.parent / "run.json"  # the benchmark's card, with every stage of the job beside it
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["main_job_seconds"] = {name: round(seconds, 2) for name, seconds in clock.timings.items()}
    atomic_write_text(card_path, json.dumps(card, indent=2, default=str) + "\n")
    summary = bench.report.read_text().split("## Macro AUROC by encoder and k", 1)[-1].split("\n## ", 1)[0]
    return MainJobResult(stats, subject_id, as_of, record, clock.timings, bench.report, summary.strip(), encoding)
