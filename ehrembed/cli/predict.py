"""CLI for prediction: task files, the few-shot benchmark and the main job."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ehrembed.cli.common import (
    MIN_MAX_TOKENS,
    JsonFlag,
    MultiValueCommand,
    PredicatesOption,
    app,
    err_console,
    fail,
    out_console,
    print_json,
    print_stats,
    split_list,
    stage_progress,
    user_errors,
)
from ehrembed.pipeline import MainJobConfig

_JOB = MainJobConfig()  # the main job's defaults, shown by `ehrembed run --help`


class DistillRecipe(StrEnum):
    """How the main job's student learns (``MainJobConfig.distill_recipe``)."""

    embedding = "embedding"
    soft_labels = "soft-labels"
    prognostic = "prognostic"


class DistillRecords(StrEnum):
    """What the main job's student is distilled on (``MainJobConfig.distill_records``)."""

    sample = "sample"
    all = "all"


tasks_app = typer.Typer(
    help="Prediction tasks: list the built-in ones, show or validate a task file.", no_args_is_help=True
)
app.add_typer(tasks_app, name="tasks")

KOption = Annotated[
    list[str] | None,
    typer.Option("--shots", "--k", help="Few-shot sizes k (repeatable or comma-separated; 'all'). Old spelling --k."),
]
TasksOption = Annotated[
    list[str] | None,
    typer.Option(
        "--tasks",
        help="Task files (ours or ACES configs), built-in task names or groups (operational, new_diagnosis, "
        "abnormal_lab, all), meds-dev:PATH (an installed MEDS-DEV task), or MEDS labels folders (repeatable; "
        "several after one flag). Default: every built-in task.",
    ),
]
HeadOption = Annotated[
    list[str] | None, typer.Option("--head", help="Heads: lightgbm, logistic, knn (repeatable; default all).")
]


@tasks_app.command("list")
def tasks_list_cmd(
    meds_dev: Annotated[
        bool, typer.Option("--meds-dev", help="List the installed MEDS-DEV task configs (meds-dev:PATH) instead.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """The built-in EHRSHOT-style tasks, by group (or MEDS-DEV's task configs)."""
    from ehrembed.predict.tasks import builtin_tasks

    if meds_dev:
        from ehrembed.predict.aces import meds_dev_tasks

        with user_errors():
            refs = meds_dev_tasks()
        if as_json:
            print_json(refs)
            return
        for ref in refs:
            out_console.print(ref)
        out_console.print(
            "[dim]their dataset predicates: --predicates FILE (or omop for `ehrembed ingest omop` data)[/]"
        )
        return
    tasks = builtin_tasks()
    if as_json:
        print_json([t.to_dict() for t in tasks])
        return
    for task in tasks:
        out_console.print(f"[bold]{task.name:<24}[/] {task.group:<14} {task.description}")


@tasks_app.command("show")
def tasks_show_cmd(
    task: Annotated[
        str,
        typer.Argument(
            help="A task file (ours or an ACES config), a built-in task, meds-dev:PATH, or a MEDS labels folder."
        ),
    ],
    dataset: Annotated[Path | None, typer.Option(help="A MEDS folder: also label it and print label counts.")] = None,
    predicates: PredicatesOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Validate a task and print it (with label counts on a dataset)."""
    from ehrembed.predict.tasks import resolve_tasks

    with user_errors():
        (spec,) = resolve_tasks([task], predicates=predicates)
        summary = None
        if dataset is not None:
            from ehrembed.ehr.meds import MedsDataset
            from ehrembed.predict.labelers import label_dataset

            summary = label_dataset(spec, MedsDataset.open(dataset)).summary()
    if as_json:
        print_json({"task": spec.to_dict(), "question": spec.question, "labels": summary})
        return
    print(spec.to_yaml(), end="")
    if not spec.instruction:
        out_console.print(f"# no instruction: instruction-tuned encoders get the derived question {spec.question!r}")
    if summary is not None:
        out_console.print(
            f"labels: {summary['labels']:,}, positives {summary['positives']:,}, subjects {summary['subjects']:,}"
        )
        skipped: dict[str, int] = summary["skipped"]  # type: ignore[assignment]
        for reason, n in skipped.items():
            out_console.print(f"  not labelled {n:,}: {reason}")


@tasks_app.command("label", cls=MultiValueCommand)
def tasks_label_cmd(
    dataset: Annotated[Path, typer.Argument(help="A MEDS folder.")],
    out: Annotated[Path, typer.Option("--out", help="Labels root: one TASK/labels.parquet per task.")],
    tasks: TasksOption = None,
    predicates: PredicatesOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Label a dataset and write MEDS label files (subject_id, prediction_time, boolean_value) per task."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.predict.job import label_tasks
    from ehrembed.predict.meds_labels import write_labels
    from ehrembed.predict.tasks import resolve_tasks

    with user_errors():
        ds = MedsDataset.open(dataset)
        specs = resolve_tasks(split_list(tasks) or ["all"], predicates=predicates)
        with stage_progress() as update:
            labelsets, skipped = label_tasks(ds, specs, progress=update)
        written = write_labels(((ls.task.name, ls.frame()) for ls in labelsets), out)
    summary = {
        "labels": {ls.task.name: {"path": str(written[ls.task.name]), **ls.summary()} for ls in labelsets},
        "not_labelled": skipped,
    }
    if as_json:
        print_json(summary)
        return
    for ls in labelsets:
        out_console.print(f"[green]wrote[/] {written[ls.task.name]}: {len(ls):,} labels, {ls.n_positive:,} positive")
    for reason in skipped.values():
        err_console.print(f"not labelled: {reason}")


@app.command("benchmark", cls=MultiValueCommand)
def benchmark_cmd(
    dataset: Annotated[Path, typer.Argument(help="A MEDS folder.")],
    out: Annotated[Path, typer.Option("--out", help="Report folder (results, report.md, plots).")],
    tasks: TasksOption = None,
    encoders: Annotated[
        list[str] | None,
        typer.Option(
            "--encoders",
            help="count, student, teacher, ENCODER+guidelines, a model folder, NAME=SPEC with SPEC an encoder or "
            "a saved embedding set, or count+NAME (the counts beside NAME's vectors) (repeatable or "
            "comma-separated; default count,student).",
        ),
    ] = None,
    k: KOption = None,
    replicates: Annotated[int, typer.Option(min=1, help="Replicates per k.")] = 5,
    head: HeadOption = None,
    max_tokens: Annotated[int | None, typer.Option(min=MIN_MAX_TOKENS, help="Token window of neural encoders.")] = 512,
    sample_positives: Annotated[
        int | None, typer.Option(min=1, help="Case-cohort sample: positives per task to keep (default: all).")
    ] = None,
    sample_background: Annotated[
        int | None, typer.Option(min=1, help="Case-cohort sample: patients with one random time each (default: all).")
    ] = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="Patient bootstrap resamples per cell for 95% CIs.")] = 200,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    generic_instruction: Annotated[
        bool,
        typer.Option(
            "--generic-instruction",
            help="Give instruction-tuned encoders the generic question instead of each task's (for comparison).",
        ),
    ] = False,
    predicates: PredicatesOption = None,
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions",
            help="Also write every cell's held-out predictions in meds-evaluation's format under this folder "
            "(TASK/ENCODER/HEAD/k{K}_r{REPLICATE}.parquet).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Few-shot benchmark (EHRSHOT protocol) of encoders and heads on tasks; writes a report."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.predict.benchmark import BenchmarkConfig
    from ehrembed.predict.fewshot import EHRSHOT_KS, parse_ks
    from ehrembed.predict.heads import HEAD_NAMES
    from ehrembed.predict.job import BenchmarkJobConfig, benchmark_dataset
    from ehrembed.predict.tasks import resolve_tasks
    from ehrembed.services.reports import record_report
    from ehrembed.store.db import catalog

    with user_errors():
        ks = parse_ks(split_list(k)) if k else EHRSHOT_KS
        config = BenchmarkJobConfig(
            encoders=tuple(split_list(encoders) or ["count", "student"]),
            benchmark=BenchmarkConfig(
                ks=ks,
                replicates=replicates,
                heads=tuple(split_list(head) or HEAD_NAMES),
                seed=seed,
                n_bootstrap=bootstrap,
            ),
            max_tokens=max_tokens,
            sample_positives=sample_positives,
            sample_background=sample_background,
            seed=seed,
            generic_instruction=generic_instruction,
            predictions=predictions,
        )
        ds = MedsDataset.open(dataset)
        specs = resolve_tasks(split_list(tasks) or ["all"], predicates=predicates)
        with stage_progress() as update:
            result = benchmark_dataset(ds, specs, out, config, progress=update, say=lambda m: err_console.print(m))
        with catalog() as session:  # `GET /v1/reports` and the console's report page list it
            record_report(session, result.report.parent, ds.name, ds.root)
    summary = {
        "report": str(result.report),
        "cells": result.result.results.height,
        "missing_cells": result.result.missing.height,
        "tasks": result.result.tasks,
        "tasks_not_run": result.skipped_tasks,
        "encoding": result.encoding,
        "seconds": {k: round(v, 2) for k, v in result.timings.items()},
    }
    if as_json:
        print_json(summary)
        return
    out_console.print(
        f"[green]wrote[/] {result.report}: {summary['cells']:,} cells scored, {summary['missing_cells']:,} missing "
        f"(reasons in the report), {len(result.labelsets)} tasks"
    )


@app.command("run", cls=MultiValueCommand)
def run_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for the job's outputs.")] = Path("out"),
    fresh: Annotated[bool, typer.Option(help="Redo every stage instead of reusing finished outputs.")] = False,
    dataset: Annotated[Path | None, typer.Option(help="A MEDS folder to use instead of ingesting Eunomia.")] = None,
    tasks: TasksOption = None,
    predicates: PredicatesOption = None,
    teacher: Annotated[str, typer.Option(help="Teacher: 'teacher' (packaged SmolLM2) or a model folder.")] = "teacher",
    student: Annotated[
        Path | None, typer.Option(help="Student base folder (default: the packaged all-MiniLM-L6-v2).")
    ] = None,
    max_tokens: Annotated[
        int, typer.Option(min=MIN_MAX_TOKENS, help="Token window of the teacher and students.")
    ] = _JOB.max_tokens,
    sample_positives: Annotated[
        int, typer.Option(min=1, help="Case-cohort sample: positives per task the teacher embeds.")
    ] = _JOB.sample_positives or 60,
    sample_background: Annotated[
        int, typer.Option(min=1, help="Case-cohort sample: background patients (one time each).")
    ] = _JOB.sample_background or 160,
    full: Annotated[
        bool, typer.Option("--full", help="Embed every labelled time (no sample): hours on a CPU, meant for a GPU.")
    ] = False,
    guidelines: Annotated[
        bool,
        typer.Option(
            "--guidelines/--no-guidelines",
            help="Also embed with guideline passages appended (teacher+guidelines; per task, so it doubles the "
            "teacher's time).",
        ),
    ] = _JOB.guidelines,
    teacher_pooling: Annotated[
        str | None, typer.Option(help="Teacher pooling: last, mean or cls (default: the teacher's own).")
    ] = _JOB.teacher_pooling,
    guidelines_kb: Annotated[
        Path | None,
        typer.Option(
            "--kb",
            "--guidelines-kb",
            help="Guideline knowledge base folder (default: built once under $EHREMBED_HOME).",
        ),
    ] = None,
    retrieval_model: Annotated[
        Path | None,
        typer.Option(help="Retrieval model folder for building the knowledge base (default: packaged MiniLM)."),
    ] = None,
    k: KOption = None,
    replicates: Annotated[int, typer.Option(min=1, help="Replicates per k.")] = _JOB.replicates,
    head: HeadOption = None,
    epochs: Annotated[int, typer.Option(min=1, help="Distillation epochs.")] = _JOB.distill_epochs,
    base_weight: Annotated[
        float,
        typer.Option(
            "--distill-base-weight", min=0.0, help="Weight of the base-retention term in distillation (0: off)."
        ),
    ] = _JOB.distill_base_weight,
    distill_records: Annotated[
        DistillRecords,
        typer.Option(
            "--distill-records",
            help="Distil on the case-cohort sample's records (sample) or on every patient's whole record (all: "
            "one more teacher pass over the dataset).",
        ),
    ] = DistillRecords(_JOB.distill_records),
    distill_recipe: Annotated[
        DistillRecipe,
        typer.Option(
            "--distill-recipe",
            help="embedding: learn the teacher's vectors. soft-labels: also learn the sample's train labels "
            "mixed with the frozen teacher's cross-fitted probabilities (CKD-EHR); compare it at k=all. "
            "prognostic: learn the prognostic encoder's vectors of the same records.",
        ),
    ] = DistillRecipe(_JOB.distill_recipe),
    prognosis: Annotated[
        bool,
        typer.Option(
            help="Pretrain the prognostic encoder on the train split and benchmark prognosis and count+prognosis."
        ),
    ] = _JOB.prognosis,
) -> None:
    """The main job: Eunomia → labels → teacher (± guidelines) → distilled student → index → benchmark report."""
    from ehrembed.pipeline import MAIN_JOB_KS, MAIN_JOB_TASKS, run_main_job
    from ehrembed.predict.fewshot import parse_ks
    from ehrembed.predict.heads import HEAD_NAMES

    with user_errors():
        config = MainJobConfig(
            out=out,
            fresh=fresh,
            dataset=dataset,
            tasks=tuple(split_list(tasks) or MAIN_JOB_TASKS),
            predicates=predicates,
            teacher=teacher,
            teacher_pooling=teacher_pooling,
            student=str(student) if student else None,
            max_tokens=max_tokens,
            sample_positives=None if full else sample_positives,
            sample_background=None if full else sample_background,
            guidelines=guidelines,
            guidelines_kb=guidelines_kb,
            retrieval_model=retrieval_model,
            distill_epochs=epochs,
            distill_base_weight=base_weight,
            distill_records=distill_records.value,
            distill_recipe=distill_recipe.value,
            prognosis=prognosis,
            ks=parse_ks(split_list(k)) if k else MAIN_JOB_KS,
            replicates=replicates,
            heads=tuple(split_list(head) or HEAD_NAMES),
        )
        with stage_progress() as update:
            result = run_main_job(config, say=lambda msg: err_console.print(msg), progress=update)
    print_stats(result.stats)
    out_console.rule(f"record of subject {result.subject_id} as of {result.as_of:%Y-%m-%d %H:%M}")
    print(result.record, end="")
    out_console.rule("macro AUROC (held-out)")
    print(result.summary)
    out_console.rule("wall time per stage")
    for stage, seconds in result.timings.items():
        out_console.print(f"{stage:<20} {seconds:8.1f}s")
    out_console.print(f"{'total':<20} {sum(result.timings.values()):8.1f}s")
    if result.report is None:
        fail("the job produced no report")
    out_console.print(f"report: {result.report.resolve()}")
