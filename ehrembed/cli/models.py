"""CLI for models: embed records, distil the teacher into the student, export the student to ONNX, pretrain the
prognostic encoder on a dataset's own timelines."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ehrembed.cli.common import (
    FormatOption,
    JsonFlag,
    MaxTokensOption,
    MultiValueCommand,
    OverwriteFlag,
    RecordFormat,
    ShiftDatesOption,
    app,
    bar_progress,
    err_console,
    fail,
    out_console,
    parse_time,
    print_json,
    record_artifact,
    split_list,
    steps_progress,
    user_errors,
)

if TYPE_CHECKING:
    from ehrembed.ehr.serialize import SerializerConfig


def _guideline_augmentation(enabled: bool, kb: Path | None) -> Any:
    """The embed step's guideline augmentation settings, or None when it is off."""
    if not enabled and kb is None:
        return None
    from ehrembed.retrieval.augment import GuidelineAugmentation

    return GuidelineAugmentation(kb=str(kb) if kb is not None else None)


def _task_question(task: str | None) -> str | None:
    """The question of ``--task`` (a built-in task name or a task file), or None."""
    if task is None:
        return None
    from ehrembed.predict.tasks import resolve_tasks

    return resolve_tasks([task])[0].question


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
        str | None,
        typer.Option(
            help="A full instruction for instruction-tuned teachers, replacing the rule's wording "
            "(default: the reference wording with --task's question, or the generic one)."
        ),
    ] = None,
    for_task: Annotated[
        str | None,
        typer.Option(
            "--task", help="Embed for this task (built-in name or YAML file): its question goes into the instruction."
        ),
    ] = None,
    max_tokens: MaxTokensOption = None,
    fmt: FormatOption = RecordFormat.list,
    shift_dates: ShiftDatesOption = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 8,
    chunk_size: Annotated[
        int, typer.Option(min=1, help="Records encoded between cache writes (what a killed job can lose).")
    ] = 256,
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
        Path | None,
        typer.Option("--kb", "--guidelines-kb", help="Knowledge base for --guidelines (default: the built one)."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Run on Ray: 'local' (a local Ray instance), 'auto' (the running cluster) or ray://HOST:10001.",
        ),
    ] = None,
    ray_actors: Annotated[
        int | None, typer.Option("--ray-actors", min=1, help="Encoder actors (default: one per GPU, else per CPU).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Serialize every patient and embed the records (cached and resumable; re-runs only do new work)."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.ehr.serialize import SerializerConfig
    from ehrembed.encoders import load_encoder
    from ehrembed.encoders.job import EmbedConfig, embed_dataset
    from ehrembed.services.embeddings import record_embeddings
    from ehrembed.store.db import catalog

    when = parse_time(as_of, "--as-of")
    if (Path(encoder).expanduser() / "prognosis.json").is_file():
        _embed_prognosis(dataset, Path(encoder).expanduser(), out, when, limit, as_json)
        return
    with user_errors():
        ds = MedsDataset.open(dataset)
        kwargs: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
        question = _task_question(for_task)
        subjects = ds.subject_ids()[:limit] if limit else None
        total = len(subjects) if subjects else len(ds.subject_ids())
        layout = SerializerConfig(format=fmt.value, shift_dates=shift_dates)
        if ray_address is not None:
            report = _embed_on_ray(
                ds, encoder, out, kwargs, instruction, question, layout, batch_size, guidelines, guidelines_kb,
                ray_address, ray_actors, subjects, when,
            )  # fmt: skip
        else:
            with steps_progress() as spinner:
                spinner.add_task(f"loading encoder {encoder}")
                model = load_encoder(encoder, **kwargs)
            config = EmbedConfig(
                question=question,
                instruction=instruction,
                serializer=layout,
                batch_size=batch_size,
                chunk_size=chunk_size,
                guidelines=_guideline_augmentation(guidelines, guidelines_kb),
            )
            with bar_progress(f"embedding with {model.spec.name}") as progress:
                task = progress.add_task("records", total=total)
                report = embed_dataset(
                    ds,
                    model,
                    out,
                    config,
                    subject_ids=subjects,
                    as_of=when,
                    progress=lambda done, total: progress.update(task, completed=done, total=total),
                )
        with catalog() as session:
            written = record_embeddings(session, ds, out, encoder=encoder)
    data = report.as_dict()
    if as_json:
        print_json(data)
        return
    out_console.print(
        f"[green]wrote[/] {out}: {data['rows']:,} vectors of dim {written.dim} "
        f"({data['encoded']:,} encoded, {data['cached']:,} from cache) in {data['seconds']:.1f}s"
    )
    if data["truncated_records"]:
        out_console.print(f"  {data['truncated_records']:,} records were cut to fit the token window (oldest first)")
    for reason, n in data["skipped"].items():
        out_console.print(f"  skipped {n:,}: {reason}")


def _embed_prognosis(dataset: Path, model_dir: Path, out: Path, when: Any, limit: int | None, as_json: bool) -> None:
    """``embed --encoder PROGNOSIS_DIR``: one prognostic vector per subject, as of ``when`` or its last event."""
    import time

    import polars as pl

    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.predict.ontology import Ontology
    from ehrembed.predict.prognosis.model import PrognosisModel, embedding_set
    from ehrembed.predict.prognosis.points import END_OF_RECORD, record_ends
    from ehrembed.services.embeddings import record_embeddings
    from ehrembed.store.db import catalog

    with user_errors():
        started = time.perf_counter()
        ds = MedsDataset.open(dataset)
        model = PrognosisModel.load(model_dir)
        ontology = Ontology.from_dataset(ds)
        coverage, warning = model.check_coverage(ds, ontology=ontology)
        if warning:
            err_console.print(f"[yellow]warning:[/] {warning}")
        subjects = ds.subject_ids()[:limit] if limit else None
        ends = record_ends(ds, subjects)
        keys = ends.select(
            pl.col("subject_id"),
            (pl.lit(when, dtype=pl.Datetime("us")) if when is not None else pl.col(END_OF_RECORD)).alias(
                "prediction_time"
            ),
        )
        written = embedding_set(model, ds, keys, ontology=ontology)
        written.save(out)
        with catalog() as session:
            record_embeddings(session, ds, out, encoder=str(model_dir))
    data = {
        "rows": len(written),
        "dim": written.dim,
        "coverage": round(coverage, 4),
        "seconds": time.perf_counter() - started,
    }
    if as_json:
        print_json(data)
        return
    out_console.print(
        f"[green]wrote[/] {out}: {data['rows']:,} prognostic vectors of dim {written.dim} "
        f"(input coverage {coverage:.0%}) in {data['seconds']:.1f}s"
    )


def _embed_on_ray(
    ds: Any,
    encoder: str,
    out: Path,
    kwargs: dict[str, Any],
    instruction: str | None,
    question: str | None,
    layout: SerializerConfig,
    batch_size: int,
    guidelines: bool,
    guidelines_kb: Path | None,
    address: str,
    actors: int | None,
    subjects: list[int] | None,
    when: Any,
) -> Any:
    """The embed command's Ray path: shards → actor pool (see ehrembed.encoders.distributed)."""
    from ehrembed.encoders.distributed import embed_dataset_ray
    from ehrembed.encoders.job import EmbedConfig

    config = EmbedConfig(
        question=question,
        instruction=instruction,
        serializer=layout,
        batch_size=batch_size,
        guidelines=_guideline_augmentation(guidelines, guidelines_kb),
    )
    with bar_progress(f"embedding {encoder} on Ray ({address})") as progress:
        task = progress.add_task("shards", total=len(ds.shards))
        return embed_dataset_ray(
            ds,
            encoder,
            out,
            config,
            encoder_kwargs=kwargs,
            address=None if address == "local" else address,
            num_actors=actors,
            subject_ids=subjects,
            as_of=when,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )


@app.command("distill")
def distill_cmd(
    dataset: Annotated[Path, typer.Argument(help="The MEDS folder the teacher embeddings were made from.")],
    teacher_embeddings: Annotated[
        Path,
        typer.Option(
            "--teacher-embeddings",
            help="Output of `ehrembed embed`, or a folder of per-task sets (the benchmark's teacher folder): their "
            "vectors are averaged per record.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the distilled sentence-transformers model.")],
    base: Annotated[
        Path | None, typer.Option(help="Student base model folder (default: packaged all-MiniLM-L6-v2).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option(min=2)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 5e-5,
    contrastive: Annotated[float, typer.Option(min=0.0, help="Weight of the in-batch contrastive term.")] = 0.0,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without held-out improvement before stopping.")] = 2,
    base_weight: Annotated[
        float, typer.Option(min=0.0, help="Weight of the base-retention term (keeps the student's own structure).")
    ] = 1.0,
    init_projection: Annotated[
        bool,
        typer.Option(help="Start the projection at the ridge fit of the teacher on the base's embeddings."),
    ] = True,
    monitor: Annotated[
        str, typer.Option(help="What picks the epoch on the tuning split: overlap (overlap@10), mse or cosine.")
    ] = "overlap",
    max_train: Annotated[int | None, typer.Option(min=1, help="Use at most N training records.")] = None,
    soft_labels: Annotated[
        list[str] | None,
        typer.Option(
            "--soft-labels",
            help="CKD-EHR: also learn these tasks (names, groups or YAML files; repeatable or comma-separated) "
            "from their train labels mixed with the frozen teacher's cross-fitted probabilities. The teacher "
            "embeddings must be at the tasks' prediction times (e.g. the benchmark's teacher folder).",
        ),
    ] = None,
    soft_label_weight: Annotated[
        float, typer.Option(min=0.0, help="Weight of the soft-label term with --soft-labels.")
    ] = 1.0,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoints in --out.")] = False,
    overwrite: OverwriteFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Distil teacher embeddings into a small BERT student; report what it retains on held-out patients."""
    from ehrembed.distill.job import DistillJobConfig, distill_dataset, load_teacher_embeddings, retention_table
    from ehrembed.distill.train import DistillConfig, rich_progress
    from ehrembed.ehr.meds import MedsDataset

    with user_errors():
        ds = MedsDataset.open(dataset)
        teacher = load_teacher_embeddings(teacher_embeddings)
        labels = None
        if soft_labels:
            from ehrembed.predict.job import label_tasks, labels_frame
            from ehrembed.predict.tasks import resolve_tasks

            labelsets, _skipped = label_tasks(ds, resolve_tasks(split_list(soft_labels)))
            if not labelsets:
                fail("none of the --soft-labels tasks has labels in this dataset")
            labels = labels_frame(labelsets)
        config = DistillJobConfig(
            base=base,
            max_train=max_train,
            train=DistillConfig.keeping_base(
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                weight_contrastive=contrastive,
                patience=patience,
                weight_base=base_weight,
                init_projection=init_projection,
                monitor=monitor,
                weight_soft_label=soft_label_weight if labels is not None else 0.0,
            ),
        )
        with rich_progress() as progress:
            result = distill_dataset(
                ds, teacher, out, config, labels=labels, progress=progress, resume=resume, overwrite=overwrite
            )
        record_artifact(
            "model", out.name, out, {"teacher": teacher.spec.to_dict(), "rows": result.rows}, ds.name, ds.root
        )
    summary = {
        "model": str(out),
        "rows": result.rows,
        "held_out_before": dataclasses.asdict(result.distill.initial),
        "held_out_after": dataclasses.asdict(result.distill.final),
        "best_epoch": result.distill.best_epoch,
        "retention": result.retention,
        "soft_labels": result.labels,
    }
    if as_json:
        print_json(summary)
        return
    before, after = result.distill.initial, result.distill.final
    out_console.print(f"[green]wrote[/] {out} (best epoch {result.distill.best_epoch}, rows {result.rows})")
    out_console.print(
        f"  tuning-split MSE {before.mse:.5f} → {after.mse:.5f}, cosine {before.cosine:.4f} → {after.cosine:.4f}"
    )
    for task, counts in (result.labels or {}).items():
        out_console.print(
            f"  soft labels, {task}: {counts['labelled']} labelled train records ({counts['positives']} positive), "
            f"{counts['with_probability']} with a teacher probability"
        )
    if "student" in result.retention:
        table = Table(title=f"retention on {result.rows['held_out']} held-out patients")
        frame = retention_table(result.retention)
        for column in frame.columns:
            table.add_column(column)
        for row in frame.iter_rows():
            table.add_row(*("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
        out_console.print(table)


@app.command("pretrain", cls=MultiValueCommand)
def pretrain_cmd(
    dataset: Annotated[Path, typer.Argument(help="A MEDS folder; only its train split is read.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the prognostic model (safetensors + JSON).")],
    method: Annotated[
        str,
        typer.Option(
            help="tte (time-to-event network, MOTOR's loss), horizons (occurrence within 30/180/365 days), "
            "rrr (reduced-rank ridge, closed form), svd (counts' singular vectors), untrained (the network at init)."
        ),
    ] = "tte",
    dim: Annotated[int, typer.Option(min=1, help="Vector size.")] = 256,
    targets: Annotated[
        int, typer.Option(min=1, help="Target codes (ranked by the entropy of their frequency).")
    ] = 1000,
    min_subjects: Annotated[int, typer.Option(min=1, help="A target needs this many train subjects.")] = 10,
    points_per_subject: Annotated[int, typer.Option(min=1, help="Prediction points per train subject, at most.")] = 8,
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    exclude_codes: Annotated[
        Path | None,
        typer.Option(
            "--exclude-codes", help="A file of codes (one a line) removed, with descendants, from the targets."
        ),
    ] = None,
    exclude_tasks: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-tasks",
            help="Tasks (names, groups or files) whose outcome codes and descendants are removed from the targets.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the points, the validation subjects and the weights.")] = 0,
    overwrite: OverwriteFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Pretrain a prognostic encoder on the dataset's train split: vectors that anticipate each code's next
    occurrence. Use it as `--encoders prognosis=OUT` (benchmark, embed, index). An interrupted run resumes."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.predict.ontology import Ontology
    from ehrembed.predict.prognosis.train import PretrainConfig, exclusion_codes_for, pretrain

    with user_errors():
        ds = MedsDataset.open(dataset)
        ontology = Ontology.from_dataset(ds)
        excluded: list[str] = []
        if exclude_codes is not None:
            lines = exclude_codes.read_text().splitlines()
            excluded += [c.strip() for c in lines if c.strip() and not c.startswith("#")]
        if exclude_tasks:
            from ehrembed.predict.tasks import resolve_tasks

            excluded += exclusion_codes_for(resolve_tasks(split_list(exclude_tasks)), ontology)
        config = PretrainConfig(
            method=method,
            dim=dim,
            max_targets=targets,
            min_subjects=min_subjects,
            points_per_subject=points_per_subject,
            epochs=epochs,
            exclude_codes=tuple(sorted(set(excluded))),
            seed=seed,
            name=out.name,
        )
        with bar_progress("pretraining") as bar:
            task = bar.add_task("pretraining", total=None)
            result = pretrain(
                ds,
                out,
                config,
                ontology=ontology,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                say=lambda m: err_console.print(m),
                overwrite=overwrite,
            )
        from ehrembed.services.prognosis import record_prognosis
        from ehrembed.store.db import catalog

        with catalog() as session:  # `GET /v1/patients/{id}/outlook` finds the newest one
            record_prognosis(session, out, ds, method=method)
    figures = {k: v for k, v in result.figures.items() if k != "history"}
    if as_json:
        print_json({"model": str(out), "method": method, "targets": len(result.model.targets), **figures})
        return
    auroc = figures.get("validation_auroc_365d")
    out_console.print(
        f"[green]wrote[/] {out}: {method}, {result.model.dim}-d vectors from {len(result.model.columns):,} count "
        f"columns, {len(result.model.targets):,} targets, {figures['seconds']:.1f}s"
        + (f"; validation AUROC of the 365-day risks {auroc:.3f}" if auroc is not None else "")
    )


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

    with user_errors(), steps_progress() as spinner:
        spinner.add_task("exporting to ONNX")
        folder = export_onnx(model_dir, out, quantize=not no_quantize, overwrite=overwrite)
    check = read_sidecar(folder).get("check") or {}
    out_console.print(f"[green]wrote[/] {folder}")
    if check:
        out_console.print(f"  cosine to the fp32 student on built-in samples: {check}")
    out_console.print(f"  use it with: ehrembed embed DIR --encoder {folder} --out FILE")
