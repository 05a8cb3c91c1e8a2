"""The ``ehrembed`` command line: thin wrappers over library functions, with progress bars.

Errors a user can fix (bad input, missing files) print one line naming the problem and exit
with status 2; ``--json`` switches data output to JSON on stdout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ehrembed import __version__

app = typer.Typer(
    name="ehrembed",
    help="Structured patient records (OMOP CDM, FHIR R4, MEDS) to Markdown and vectors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
ingest_app = typer.Typer(help="Records in: convert OMOP CDM or FHIR R4 into a MEDS folder.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
guidelines_app = typer.Typer(
    help="Guideline knowledge base: build it from Markdown guidelines, search it (BM25, dense, hybrid).",
    no_args_is_help=True,
)
app.add_typer(guidelines_app, name="guidelines")

out_console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
OverwriteFlag = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")]


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the library's input errors into one-line messages and exit status 2."""
    from ehrembed.ehr.meds import MedsError
    from ehrembed.ehr.serialize import SerializeError
    from ehrembed.store.errors import StoreError

    try:
        yield
    except (MedsError, SerializeError, StoreError, FileExistsError, FileNotFoundError) as exc:
        _fail(str(exc))
    except KeyError as exc:
        _fail(str(exc.args[0]) if exc.args else "not found")
    except ValueError as exc:  # OmopError, FhirError and other input errors derive from ValueError
        _fail(str(exc))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _steps_progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def _bar_progress(label: str) -> Progress:
    """A progress bar with counts and elapsed time on stderr (stdout stays clean for --json)."""
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console)


def _register(dataset_path: Path, source: str) -> None:
    """Record the dataset in the store (SQLite under EHREMBED_HOME or EHREMBED_DATABASE_URL)."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.store.catalog import register_meds
    from ehrembed.store.db import create_all, make_engine, session_scope

    engine = make_engine()
    create_all(engine)
    with session_scope(engine) as session:
        register_meds(session, MedsDataset.open(dataset_path), source)
    engine.dispose()


def _report_ingest(report: Any, as_json: bool) -> None:
    data = report.as_dict()
    if as_json:
        _print_json(data)
        return
    out_console.print(
        f"[green]wrote[/] {data['dataset']}: {data['n_subjects']:,} subjects, "
        f"{data['n_events']:,} events in {data['seconds']:.1f}s"
    )
    for reason, n in data["skipped"].items():
        out_console.print(f"  skipped {n:,}: {reason}")
    for warning in data["warnings"]:
        out_console.print(f"  [yellow]note:[/] {warning}")


@ingest_app.command("omop")
def ingest_omop_cmd(
    out: Annotated[Path, typer.Option("--out", help="MEDS folder to write.")],
    eunomia: Annotated[bool, typer.Option("--eunomia", help="The Eunomia demo CDM (default source).")] = False,
    duckdb_file: Annotated[Path | None, typer.Option("--duckdb", help="An OMOP CDM duckdb file.")] = None,
    folder: Annotated[Path | None, typer.Option("--dir", help="A folder of OMOP tables (CSV/Parquet).")] = None,
    name: Annotated[str | None, typer.Option(help="Dataset name (default: from the source).")] = None,
    lenient: Annotated[bool, typer.Option(help="Skip and count rows without dates instead of failing.")] = False,
    overwrite: OverwriteFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """OMOP CDM → MEDS (Eunomia unless --duckdb or --dir is given)."""
    from ehrembed.ehr.omop import ingest_omop

    if sum([eunomia, duckdb_file is not None, folder is not None]) > 1:
        _fail("choose one source: --eunomia, --duckdb FILE or --dir DIR")
    with _user_errors(), _steps_progress() as progress:
        task = progress.add_task("reading OMOP tables")
        report = ingest_omop(
            duckdb_file=duckdb_file,
            folder=folder,
            out=out,
            overwrite=overwrite,
            dataset_name=name,
            lenient=lenient,
            progress=lambda step: progress.update(task, description=f"OMOP: {step}"),
        )
        progress.update(task, description="registering in the store")
        _register(out, "omop")
    _report_ingest(report, as_json)


@ingest_app.command("fhir")
def ingest_fhir_cmd(
    paths: Annotated[list[Path], typer.Argument(help="ndjson files, Bundle JSON files or folders of them.")],
    out: Annotated[Path, typer.Option("--out", help="MEDS folder to write.")],
    name: Annotated[str | None, typer.Option(help="Dataset name (default: the output folder name).")] = None,
    overwrite: OverwriteFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """FHIR R4 (bulk ndjson and/or Bundles) → MEDS."""
    from ehrembed.ehr.fhir import ingest_fhir

    with _user_errors(), _steps_progress() as progress:
        progress.add_task("reading FHIR resources")
        report = ingest_fhir(paths, out, overwrite=overwrite, dataset_name=name)
        _register(out, "fhir")
    _report_ingest(report, as_json)


@app.command("synth")
def synth_cmd(
    out: Annotated[Path, typer.Option("--out", help="MEDS folder to write.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of patients.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    overwrite: OverwriteFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Generate a synthetic MEDS cohort with real ICD-10-CM / LOINC / RxNorm codes."""
    from ehrembed.ehr.synth import SynthConfig, generate_cohort

    with _user_errors():
        with _bar_progress("synthesising") as progress:
            task = progress.add_task("patients", total=n)
            report = generate_cohort(
                SynthConfig(n_subjects=n, seed=seed),
                out,
                overwrite=overwrite,
                progress=lambda done: progress.update(task, completed=done),
            )
        _register(out, "synth")
    _report_ingest(report, as_json)


@app.command("info")
def info_cmd(dataset: Annotated[Path, typer.Argument(help="A MEDS folder.")], as_json: JsonFlag = False) -> None:
    """Subjects, events, codes and description coverage of a MEDS folder."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.ehr.stats import dataset_stats

    with _user_errors():
        stats = dataset_stats(MedsDataset.open(dataset))
    if as_json:
        _print_json(stats)
    else:
        _print_stats(stats)


def _print_stats(stats: dict[str, Any]) -> None:
    cov = stats["description_coverage"]
    table = Table(title=f"{stats['dataset']} ({stats['path']})", show_header=False)
    table.add_row("subjects", f"{stats['subjects']:,}")
    table.add_row("events", f"{stats['events']:,}")
    table.add_row("codes", f"{stats['codes']:,}")
    table.add_row(
        "events per subject",
        f"median {stats['events_per_subject']['median']:.0f}, max {stats['events_per_subject']['max']:,}",
    )
    table.add_row("time range", " to ".join(str(t)[:10] for t in stats["time_range"]))
    table.add_row("splits", ", ".join(f"{k} {v:,}" for k, v in stats["splits"].items()))
    table.add_row("described events", f"{cov['event_coverage']:.1%} ({cov['events_by_source']})")
    table.add_row("described codes", f"{cov['code_coverage']:.1%}")
    table.add_row("events by domain", ", ".join(f"{k} {v:,}" for k, v in stats["events_by_domain"].items()))
    out_console.print(table)


def _parse_time(value: str | None, what: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        _fail(f"{what} {value!r} is not an ISO time such as 2019-06-01 or 2019-06-01T23:59")
    from ehrembed.schema import normalize_time

    return normalize_time(parsed)


@app.command("serialize")
def serialize_cmd(
    dataset: Annotated[Path, typer.Argument(help="A MEDS folder.")],
    subject: Annotated[int, typer.Option("--subject", help="subject_id to serialize.")],
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="ISO time; only events at or before it are shown (default: last event)."),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Token budget; oldest content goes first.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="markdown (visit layout) or list (unique codes).")] = "markdown",
    tokenizer: Annotated[
        Path | None, typer.Option(help="tokenizer.json or model folder for --max-tokens (default: MiniLM).")
    ] = None,
) -> None:
    """Print one patient's record as Markdown."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.ehr.serialize import Serializer, SerializerConfig
    from ehrembed.ehr.tokens import load_token_counter
    from ehrembed.ehr.vocabulary import Vocabulary

    if fmt not in ("markdown", "list"):
        _fail(f"--format must be markdown or list, not {fmt!r}")
    when = _parse_time(as_of, "--as-of")
    with _user_errors():
        ds = MedsDataset.open(dataset)
        patient = ds.patient(subject)
        if when is None:
            times = [e.time for e in patient.events if e.time is not None]
            if not times:
                _fail(f"subject {subject} has no dated events; pass --as-of")
            when = max(times)
        counter = load_token_counter(tokenizer) if max_tokens is not None else None
        config = SerializerConfig(format=fmt, max_tokens=max_tokens)  # type: ignore[arg-type]
        serializer = Serializer(Vocabulary.from_dataset(ds), config, counter)
        result = serializer.serialize_with_stats(patient, as_of=when)
    print(result.text, end="")
    if result.truncated:
        err_console.print(f"[dim]{result.dropped_lines} older line(s) dropped to fit {max_tokens} tokens[/]")


def _record(kind: str, name: str, path: Path, spec: dict[str, Any], dataset: str | None) -> None:
    from ehrembed.store.catalog import record_artifact
    from ehrembed.store.db import create_all, make_engine, session_scope

    engine = make_engine()
    create_all(engine)
    with session_scope(engine) as session:
        record_artifact(session, kind, name, path, spec, dataset)
    engine.dispose()


def _guideline_augmentation(enabled: bool, kb: Path | None) -> Any:
    """The embed step's guideline augmentation settings, or None when it is off."""
    if not enabled and kb is None:
        return None
    from ehrembed.retrieval.augment import GuidelineAugmentation

    return GuidelineAugmentation(kb=str(kb) if kb is not None else None)


@app.command("embed")
def embed_cmd(
    dataset: Annotated[Path, typer.Argument(help="A MEDS folder.")],
    out: Annotated[Path, typer.Option("--out", help="Embedding set: a folder, or a .parquet file for analysts.")],
    encoder: Annotated[
        str, typer.Option(help="teacher, student, student-onnx, or a model folder (HF, sentence-transformers, ONNX).")
    ] = "teacher",
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="ISO time for every patient (default: each one's last event).")
    ] = None,
    instruction: Annotated[
        str | None, typer.Option(help="Task instruction for instruction-tuned teachers (default: a general one).")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(min=8, help="Encoder token window (default: the model's).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Record layout: markdown or list.")] = "markdown",
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 8,
    limit: Annotated[int | None, typer.Option(min=1, help="Embed only the first N subjects.")] = None,
    guidelines: Annotated[
        bool,
        typer.Option(
            "--guidelines",
            help="Append relevant guideline passages to each record (a quarter of its budget; needs "
            "`ehrembed guidelines build`).",
        ),
    ] = False,
    guidelines_kb: Annotated[
        Path | None, typer.Option("--guidelines-kb", help="Knowledge base for --guidelines (default: the built one).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Serialize every patient and embed the records (cached and resumable; re-runs only do new work)."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.ehr.serialize import SerializerConfig
    from ehrembed.encoders import load_encoder
    from ehrembed.encoders.base import DEFAULT_INSTRUCTION
    from ehrembed.encoders.job import EmbedConfig, embed_dataset

    if fmt not in ("markdown", "list"):
        _fail(f"--format must be markdown or list, not {fmt!r}")
    when = _parse_time(as_of, "--as-of")
    with _user_errors():
        ds = MedsDataset.open(dataset)
        kwargs: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
        with _steps_progress() as spinner:
            spinner.add_task(f"loading encoder {encoder}")
            model = load_encoder(encoder, **kwargs)
        config = EmbedConfig(
            instruction=instruction or (DEFAULT_INSTRUCTION if model.spec.instruction_template else None),
            serializer=SerializerConfig(format=fmt),  # type: ignore[arg-type]
            batch_size=batch_size,
            guidelines=_guideline_augmentation(guidelines, guidelines_kb),
        )
        subjects = ds.subject_ids()[:limit] if limit else None
        with _bar_progress(f"embedding with {model.spec.name}") as progress:
            task = progress.add_task("records", total=len(subjects) if subjects else len(ds.subject_ids()))
            report = embed_dataset(
                ds,
                model,
                out,
                config,
                subject_ids=subjects,
                as_of=when,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        _record("embeddings", out.name, out, model.spec.to_dict(), ds.name)
    data = report.as_dict()
    if as_json:
        _print_json(data)
        return
    out_console.print(
        f"[green]wrote[/] {out}: {data['rows']:,} vectors of dim {model.spec.dim} "
        f"({data['encoded']:,} encoded, {data['cached']:,} from cache) in {data['seconds']:.1f}s"
    )
    if data["truncated_records"]:
        out_console.print(f"  {data['truncated_records']:,} records were cut to fit the token window (oldest first)")
    for reason, n in data["skipped"].items():
        out_console.print(f"  skipped {n:,}: {reason}")


@app.command("distill")
def distill_cmd(
    dataset: Annotated[Path, typer.Argument(help="The MEDS folder the teacher embeddings were made from.")],
    teacher_embeddings: Annotated[Path, typer.Option("--teacher-embeddings", help="Output of `ehrembed embed`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the distilled sentence-transformers model.")],
    base: Annotated[
        Path | None, typer.Option(help="Student base model folder (default: packaged all-MiniLM-L6-v2).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option(min=2)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 5e-5,
    contrastive: Annotated[float, typer.Option(min=0.0, help="Weight of the in-batch contrastive term.")] = 0.0,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without held-out improvement before stopping.")] = 2,
    max_train: Annotated[int | None, typer.Option(min=1, help="Use at most N training records.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoints in --out.")] = False,
    overwrite: OverwriteFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Distil teacher embeddings into a small BERT student; report what it retains on held-out patients."""
    from ehrembed.distill.job import DistillJobConfig, distill_dataset, retention_table
    from ehrembed.distill.train import DistillConfig, rich_progress
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.encoders.embeddings import EmbeddingSet

    with _user_errors():
        ds = MedsDataset.open(dataset)
        teacher = EmbeddingSet.load(teacher_embeddings)
        config = DistillJobConfig(
            base=base,
            max_train=max_train,
            train=DistillConfig(
                epochs=epochs, batch_size=batch_size, lr=lr, weight_contrastive=contrastive, patience=patience
            ),
        )
        with rich_progress() as progress:
            result = distill_dataset(ds, teacher, out, config, progress=progress, resume=resume, overwrite=overwrite)
        _record("model", out.name, out, {"teacher": teacher.spec.to_dict(), "rows": result.rows}, ds.name)
    summary = {
        "model": str(out),
        "rows": result.rows,
        "held_out_before": dataclasses.asdict(result.distill.initial),
        "held_out_after": dataclasses.asdict(result.distill.final),
        "best_epoch": result.distill.best_epoch,
        "retention": result.retention,
    }
    if as_json:
        _print_json(summary)
        return
    before, after = result.distill.initial, result.distill.final
    out_console.print(f"[green]wrote[/] {out} (best epoch {result.distill.best_epoch}, rows {result.rows})")
    out_console.print(
        f"  tuning-split MSE {before.mse:.5f} → {after.mse:.5f}, cosine {before.cosine:.4f} → {after.cosine:.4f}"
    )
    if "student" in result.retention:
        table = Table(title=f"retention on {result.rows['held_out']} held-out patients")
        frame = retention_table(result.retention)
        for column in frame.columns:
            table.add_column(column)
        for row in frame.iter_rows():
            table.add_row(*("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
        out_console.print(table)


@app.command("export-onnx")
def export_onnx_cmd(
    model_dir: Annotated[
        Path | None, typer.Argument(help="A sentence-transformers folder (default: the packaged MiniLM).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: MODEL_DIR/onnx).")] = None,
    no_quantize: Annotated[bool, typer.Option("--no-quantize", help="Keep fp32 weights.")] = False,
    overwrite: OverwriteFlag = False,
) -> None:
    """Export a student to ONNX with int8 dynamic quantization, selectable as an encoder folder."""
    from ehrembed.encoders.onnx import export_onnx, read_sidecar

    with _user_errors(), _steps_progress() as spinner:
        spinner.add_task("exporting to ONNX")
        folder = export_onnx(model_dir, out, quantize=not no_quantize, overwrite=overwrite)
    check = read_sidecar(folder).get("check") or {}
    out_console.print(f"[green]wrote[/] {folder}")
    if check:
        out_console.print(f"  cosine to the fp32 student on built-in samples: {check}")
    out_console.print(f"  use it with: ehrembed embed DIR --encoder {folder} --out FILE")


@app.command("index")
def index_cmd(
    dataset: Annotated[Path, typer.Argument(help="The MEDS folder the embeddings were made from.")],
    embeddings: Annotated[Path, typer.Option("--embeddings", help="Output of `ehrembed embed` (folder or .parquet).")],
    out: Annotated[Path | None, typer.Option("--out", help="Index folder (default: <embeddings>.index).")] = None,
    kind: Annotated[str, typer.Option(help="auto (by size), flat (exact), hnsw or ivfpq.")] = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Build a FAISS index over an embedding set for similar-patient search (replaced atomically)."""
    import numpy as np

    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.encoders.embeddings import EmbeddingSet
    from ehrembed.retrieval.index import KINDS, build_index

    if kind not in KINDS:
        _fail(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")
    target = out or Path(f"{embeddings}.index")
    with _user_errors():
        ds = MedsDataset.open(dataset)
        emb = EmbeddingSet.load(embeddings)
        unknown = int((~np.isin(emb.subject_ids, np.asarray(ds.subject_ids(), dtype=np.int64))).sum())
        if unknown == len(emb):
            _fail(f"none of the {len(emb):,} subjects in {embeddings} is in dataset {dataset}; wrong dataset?")
        with _bar_progress(f"indexing {len(emb):,} vectors") as progress:
            task = progress.add_task("vectors", total=len(emb))
            report = build_index(
                emb, target, kind=kind, progress=lambda done, total: progress.update(task, completed=done, total=total)
            )
        spec = {"kind": report.kind, "encoder": emb.spec.to_dict(), "embeddings": str(embeddings.resolve())}
        _record("index", target.name, target, {**spec, "params": report.params, "rows": report.rows}, ds.name)
    data = {**report.as_dict(), "subjects_not_in_dataset": unknown}
    if as_json:
        _print_json(data)
        return
    out_console.print(
        f"[green]wrote[/] {target}: {report.kind} index of {report.rows:,} vectors (dim {report.dim}, "
        f"{report.index_bytes / 1e6:.1f} MB) in {report.seconds:.1f}s"
    )
    if unknown:
        out_console.print(f"  [yellow]note:[/] {unknown:,} rows belong to subjects not in {dataset}")


def _recorded_index(dataset_name: str) -> Path:
    """The newest index recorded in the store for a dataset (whose folder still exists)."""
    from ehrembed.store.db import create_all, make_engine, session_scope
    from ehrembed.store.errors import NotFoundError
    from ehrembed.store.repository import list_artifacts

    engine = make_engine()
    create_all(engine)
    try:
        with session_scope(engine) as session:
            try:
                artifacts = list_artifacts(session, "index", dataset=dataset_name)
            except NotFoundError:
                artifacts = []
            paths = [Path(a.path) for a in sorted(artifacts, key=lambda a: a.created_at, reverse=True)]
    finally:
        engine.dispose()
    for path in paths:
        if path.is_dir():
            return path
    _fail(
        f"no index is recorded for dataset {dataset_name!r}; build one with "
        "`ehrembed index DIR --embeddings FILE` or pass --index PATH"
    )


@app.command("similar")
def similar_cmd(
    dataset: Annotated[Path, typer.Argument(help="The MEDS folder the index was built from.")],
    subject: Annotated[int, typer.Option("--subject", help="subject_id whose similar patients to find.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of similar patients.")] = 10,
    index: Annotated[
        Path | None, typer.Option("--index", help="Index folder (default: the newest recorded for the dataset).")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="ISO time of the subject's index row (default: its latest).")
    ] = None,
    split: Annotated[
        list[str] | None, typer.Option("--split", help="Only neighbours in this split (repeatable).")
    ] = None,
    sex: Annotated[str | None, typer.Option("--sex", help="Only neighbours of this sex: F or M.")] = None,
    min_age: Annotated[
        float | None, typer.Option("--min-age", min=0, help="Minimum age at the neighbour's time.")
    ] = None,
    max_age: Annotated[
        float | None, typer.Option("--max-age", min=0, help="Maximum age at the neighbour's time.")
    ] = None,
    has_code: Annotated[
        list[str] | None, typer.Option("--has-code", help="Only neighbours with this code by their time (repeatable).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """The patients most similar to a subject, with what their records share."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.retrieval.index import VectorIndex
    from ehrembed.retrieval.similar import SimilarFilters, SimilarPatients

    when = _parse_time(as_of, "--as-of")
    with _user_errors():
        ds = MedsDataset.open(dataset)
        filters = SimilarFilters(
            splits=tuple(split or ()), sex=sex, min_age=min_age, max_age=max_age, has_codes=tuple(has_code or ())
        )
        with _steps_progress() as spinner:
            spinner.add_task("loading the index")
            vector_index = VectorIndex.load(index or _recorded_index(ds.name))
            spinner.add_task("searching")
            result = SimilarPatients(vector_index, ds).by_subject(subject, as_of=when, k=k, filters=filters)
    if as_json:
        _print_json(result.as_dict())
        return
    query_time = f" as of {result.query.as_of:%Y-%m-%d %H:%M}" if result.query.as_of else ""
    table = Table(title=f"patients similar to subject {subject}{query_time}")
    for column in ("#", "subject", "as of", "score", "split", "sex", "age", "shared"):
        table.add_column(column, overflow="fold")
    for n in result.neighbors:
        table.add_row(
            str(n.rank),
            str(n.subject_id),
            f"{n.prediction_time:%Y-%m-%d}" if n.prediction_time else "-",
            f"{n.score:.4f}",
            n.split or "-",
            n.sex or "-",
            f"{n.age:.0f}" if n.age is not None else "-",
            n.explanation.brief(3),
        )
    out_console.print(table)
    if len(result.neighbors) < k:
        out_console.print(f"  only {len(result.neighbors)} of {k} patients pass the filters")


@app.command("run")
def run_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for the job's outputs.")] = Path("out"),
    fresh: Annotated[bool, typer.Option(help="Redo every stage instead of reusing finished outputs.")] = False,
) -> None:
    """The main job on the embedded default (Eunomia): ingest, describe, serialize a record."""
    from ehrembed.pipeline import MainJobConfig, run_main_job

    with _user_errors():
        result = run_main_job(MainJobConfig(out=out, fresh=fresh), say=lambda msg: err_console.print(msg))
    _print_stats(result.stats)
    out_console.rule(f"record of subject {result.subject_id} as of {result.as_of:%Y-%m-%d %H:%M}")
    print(result.record, end="")
    out_console.rule()
    for stage, seconds in result.timings.items():
        out_console.print(f"{stage:<12} {seconds:7.2f}s")
    out_console.print(f"outputs in {out.resolve()}")


@guidelines_app.command("build")
def guidelines_build_cmd(
    source: Annotated[
        Path | None,
        typer.Option(help="Folder of Markdown guidelines (default: the 43 of the open-medicine package)."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="Local retrieval model folder, e.g. a BGE (default: the packaged all-MiniLM-L6-v2)."),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="bge (CLS pooling, query instruction) or minilm (the folder's pooling, no instruction); "
            "default: bge with --model, minilm without."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Knowledge base folder (default: $EHREMBED_HOME/guidelines/default).")
    ] = None,
    chunk_tokens: Annotated[
        int, typer.Option(min=32, help="Passage budget in the model's tokens (at most its window).")
    ] = 256,
    as_json: JsonFlag = False,
) -> None:
    """Chunk, embed and index guidelines into a knowledge base folder (replaced atomically)."""
    import time

    from ehrembed.retrieval.chunking import ChunkingConfig
    from ehrembed.retrieval.guidelines import (
        RetrievalModelConfig,
        build_knowledge_base,
        default_kb_dir,
        discover_guidelines,
    )

    chosen = preset or ("bge" if model is not None else "minilm")
    if chosen not in ("bge", "minilm"):
        _fail(f"--preset must be bge or minilm, not {chosen!r}")
    if chosen == "bge" and model is None:
        _fail("--preset bge needs --model PATH to a local BGE folder")
    config = RetrievalModelConfig.bge(model) if chosen == "bge" and model else RetrievalModelConfig.minilm(model)
    target = out or default_kb_dir()
    started = time.perf_counter()
    with _user_errors():
        discover_guidelines(source)  # a bad source fails before the model loads
        with _steps_progress() as spinner:
            spinner.add_task(f"loading retrieval model {config.folder()}")
            encoder = config.load_encoder()
        with _bar_progress("embedding passages") as progress:
            task = progress.add_task("passages", total=None)
            kb = build_knowledge_base(
                source,
                config,
                chunking=ChunkingConfig(max_tokens=chunk_tokens),
                encoder=encoder,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        kb.save(target)
    data = {
        "out": str(target),
        "guidelines": len(kb.guideline_ids),
        "passages": len(kb),
        "model": kb.meta["encoder"]["name"],
        "fingerprint": kb.fingerprint,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if as_json:
        _print_json(data)
        return
    out_console.print(
        f"[green]wrote[/] {target}: {data['passages']:,} passages from {data['guidelines']} guidelines "
        f"embedded with {data['model']} in {data['seconds']:.1f}s"
    )


@guidelines_app.command("search")
def guidelines_search_cmd(
    query: Annotated[str, typer.Argument(help="A clinical question, e.g. 'eGFR 40 with albuminuria'.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Passages to return.")] = 5,
    mode: Annotated[str, typer.Option(help="hybrid (BM25 + dense, rank fusion), bm25 or dense.")] = "hybrid",
    kb_dir: Annotated[
        Path | None, typer.Option("--kb", help="Knowledge base folder (default: $EHREMBED_HOME/guidelines/default).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Search the guideline knowledge base; prints guideline, section, score and passage."""
    from ehrembed.retrieval.guidelines import MODES, GuidelineKB

    if mode not in MODES:
        _fail(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    with _user_errors():
        kb = GuidelineKB.load(kb_dir)
        hits = kb.search(query, k=k, mode=mode)
    if as_json:
        _print_json({"query": query, "mode": mode, "results": [h.as_dict() for h in hits]})
        return
    if not hits:
        out_console.print("no matching passages")
    for rank, hit in enumerate(hits, start=1):
        out_console.rule(f"{rank}. {hit.guideline_id}  score {hit.score:.4f}", align="left")
        out_console.print(f"[bold]{hit.title}[/]")
        if hit.section:
            out_console.print(f"[dim]{hit.section}[/]")
        print(hit.passage)


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        print(__version__)
        raise typer.Exit(0)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
