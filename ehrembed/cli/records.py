"""CLI for records in: OMOP and FHIR ingest, synthetic cohorts, dataset info, one serialized record."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ehrembed.cli.common import (
    FormatOption,
    JsonFlag,
    MaxTokensOption,
    OverwriteFlag,
    RecordFormat,
    ShiftDatesOption,
    app,
    bar_progress,
    err_console,
    export_app,
    fail,
    ingest_app,
    out_console,
    parse_time,
    print_json,
    print_stats,
    register_dataset,
    steps_progress,
    user_errors,
)


def _report_ingest(report: Any, as_json: bool) -> None:
    data = report.as_dict()
    if as_json:
        print_json(data)
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
        fail("choose one source: --eunomia, --duckdb FILE or --dir DIR")
    with user_errors(), steps_progress() as progress:
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
        register_dataset(out, "omop")
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

    with user_errors(), steps_progress() as progress:
        progress.add_task("reading FHIR resources")
        report = ingest_fhir(paths, out, overwrite=overwrite, dataset_name=name)
        register_dataset(out, "fhir")
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

    with user_errors():
        with bar_progress("synthesising") as progress:
            task = progress.add_task("patients", total=n)
            report = generate_cohort(
                SynthConfig(n_subjects=n, seed=seed),
                out,
                overwrite=overwrite,
                progress=lambda done: progress.update(task, completed=done),
            )
        register_dataset(out, "synth")
    _report_ingest(report, as_json)


class MedsLayout(StrEnum):
    """How ``export meds`` lays out the data shards (``ehrembed.ehr.meds.export_meds``)."""

    by_split = "split"
    flat = "flat"


@export_app.command("meds")
def export_meds_cmd(
    dataset: Annotated[Path, typer.Argument(help="A MEDS folder.")],
    out: Annotated[Path, typer.Option("--out", help="The MEDS folder to write.")],
    layout: Annotated[
        MedsLayout,
        typer.Option(help="split: data/{train,tuning,held_out}/*.parquet (what meds-tab reads); flat: data/*.parquet."),
    ] = MedsLayout.by_split,
    overwrite: OverwriteFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Copy a MEDS folder in another shard layout (the metadata and splits stay the same)."""
    from ehrembed.ehr.meds import MedsDataset, export_meds

    with user_errors():
        written = export_meds(MedsDataset.open(dataset), out, layout=layout.value, overwrite=overwrite)
    if as_json:
        print_json({"out": str(out), "layout": layout.value, "shards": written})
        return
    parts = ", ".join(f"{name} {n}" for name, n in written.items())
    out_console.print(f"[green]wrote[/] {out} ({layout.value} layout; shards: {parts})")


@app.command("describe-codes")
def describe_codes_cmd(
    dataset: Annotated[Path, typer.Argument(help="A MEDS folder.")],
    concepts: Annotated[
        Path, typer.Option("--concepts", help="An OMOP vocabulary export's CONCEPT.csv (Athena's, tab-separated).")
    ],
    as_json: JsonFlag = False,
) -> None:
    """Fill codes without a description from an OMOP vocabulary export (the dataset's own descriptions win)."""
    from ehrembed.ehr.athena import describe_codes
    from ehrembed.ehr.meds import MedsDataset

    with user_errors():
        report = describe_codes(MedsDataset.open(dataset), concepts)
    if as_json:
        print_json({"filled": report.filled, "before": report.before, "after": report.after})
        return
    out_console.print(f"[green]described[/] {report.filled:,} more code(s) from {concepts}")
    for name, after in report.after.items():
        before = report.before.get(name, after)
        out_console.print(
            f"  {name:<12} codes {before['codes_described']:,} → {after['codes_described']:,} of {after['codes']:,}, "
            f"events {before['events_described']:,} → {after['events_described']:,} of {after['events']:,}"
        )


@app.command("info")
def info_cmd(dataset: Annotated[Path, typer.Argument(help="A MEDS folder.")], as_json: JsonFlag = False) -> None:
    """Subjects, events, codes and description coverage of a MEDS folder."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.ehr.stats import dataset_stats

    with user_errors():
        stats = dataset_stats(MedsDataset.open(dataset))
    if as_json:
        print_json(stats)
    else:
        print_stats(stats)


@app.command("serialize")
def serialize_cmd(
    dataset: Annotated[Path, typer.Argument(help="A MEDS folder.")],
    subject: Annotated[int, typer.Option("--subject", help="subject_id to serialize.")],
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="ISO time; only events at or before it are shown (default: last event)."),
    ] = None,
    max_tokens: MaxTokensOption = None,
    fmt: FormatOption = RecordFormat.markdown,
    shift_dates: ShiftDatesOption = False,
    tokenizer: Annotated[
        Path | None, typer.Option(help="tokenizer.json or model folder for --max-tokens (default: MiniLM).")
    ] = None,
) -> None:
    """Print one patient's record (Markdown by default)."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.ehr.serialize import Serializer, SerializerConfig
    from ehrembed.ehr.tokens import load_token_counter
    from ehrembed.ehr.vocabulary import Vocabulary

    when = parse_time(as_of, "--as-of")
    with user_errors():
        ds = MedsDataset.open(dataset)
        patient = ds.patient(subject)
        if when is None:
            times = [e.time for e in patient.events if e.time is not None]
            if not times:
                fail(f"subject {subject} has no dated events; pass --as-of")
            when = max(times)
        counter = load_token_counter(tokenizer) if max_tokens is not None else None
        config = SerializerConfig(format=fmt.value, max_tokens=max_tokens, shift_dates=shift_dates)
        serializer = Serializer(Vocabulary.from_dataset(ds), config, counter)
        result = serializer.serialize_with_stats(patient, as_of=when)
    print(result.text, end="")
    if result.truncated:
        err_console.print(f"[dim]{result.dropped_lines} older line(s) dropped to fit {max_tokens} tokens[/]")
