"""Shared pieces of the CLI: the Typer apps, consoles, error handling, progress bars and store helpers.

Errors a user can fix (bad input, missing files) print one line naming the problem and exit
with status 2; ``--json`` switches data output to JSON on stdout.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from enum import StrEnum
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
from typer.core import TyperCommand

from ehrembed.errors import EhrembedError

app = typer.Typer(
    name="ehrembed",
    help="Structured patient records (OMOP CDM, FHIR R4, MEDS) to Markdown and vectors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
ingest_app = typer.Typer(help="Records in: convert OMOP CDM or FHIR R4 into a MEDS folder.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
export_app = typer.Typer(help="Data out: a MEDS folder in another layout.", no_args_is_help=True)
app.add_typer(export_app, name="export")
guidelines_app = typer.Typer(
    help="Guideline knowledge base: build it from Markdown guidelines, search it (BM25, dense, hybrid).",
    no_args_is_help=True,
)
app.add_typer(guidelines_app, name="guidelines")

out_console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
OverwriteFlag = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")]


class IndexKind(StrEnum):
    """``ehrembed index --kind``: auto (by size), flat (exact), hnsw or ivfpq."""

    auto = "auto"
    flat = "flat"
    hnsw = "hnsw"
    ivfpq = "ivfpq"


class SearchMode(StrEnum):
    """``ehrembed guidelines search --mode``."""

    hybrid = "hybrid"
    bm25 = "bm25"
    dense = "dense"


class Scope(StrEnum):
    """API key scopes, each including the ones before."""

    read = "read"
    write = "write"
    admin = "admin"


class Sex(StrEnum):
    F = "F"
    M = "M"


TopOption = Annotated[int, typer.Option("-k", "--top", "--k", min=1, help="How many results to return.")]
"""Result counts are ``-k/--top`` everywhere (``--k`` is kept as an old spelling); few-shot sizes are ``--shots``."""
MIN_MAX_TOKENS = 32
"""One minimum for every ``--max-tokens``: below it no record fits beside an instruction."""
MaxTokensOption = Annotated[
    int | None, typer.Option("--max-tokens", min=MIN_MAX_TOKENS, help="Token window / budget (default: the model's).")
]


class RecordFormat(StrEnum):
    """The serializer's record layouts (``SerializerConfig.format``)."""

    markdown = "markdown"
    list = "list"
    list_dated = "list_dated"
    markdown_compact = "markdown_compact"


FormatOption = Annotated[
    RecordFormat,
    typer.Option(
        "--format",
        help="Record layout: markdown (the reference's Markdown: fixed vitals and labs, visits newest first), "
        "list (unique codes, the reference's final format), list_dated (unique codes with their age and "
        "demographics) or markdown_compact (the shorter Markdown: whichever labs the patient has).",
    ),
]


PredicatesOption = Annotated[
    str | None,
    typer.Option(
        "--predicates",
        help="Dataset predicates for ACES task configs (a YAML file with a 'predicates:' mapping, or 'omop' for "
        "MEDS folders made by `ehrembed ingest omop`): they fill MEDS-DEV's '???' predicates.",
    ),
]
ShiftDatesOption = Annotated[
    bool,
    typer.Option(
        "--shift-dates",
        help="Markdown: move every date so the as-of time reads 2024-01-01 00:00 (intervals kept, the year hidden).",
    ),
]


class MultiValueCommand(TyperCommand):
    """A command whose repeatable options also take several values after one flag.

    ``--tasks a.yaml b.yaml`` (what a shell makes of ``--tasks *.yaml``) reads as ``--tasks a.yaml
    --tasks b.yaml``: words after a repeatable option are its values once the command's positional
    arguments are all given (so give the dataset first), until the next option.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # Typer vendors its own click, so parameters are told apart by what they say they are.
        options = {name: p for p in self.params if p.param_type_name == "option" for name in p.opts}
        positional = sum(1 for p in self.params if p.param_type_name == "argument")
        out: list[str] = []
        seen, current, i = 0, None, 0
        while i < len(args):
            token = args[i]
            if token == "--":
                out.extend(args[i:])
                break
            if token.startswith("-") and len(token) > 1:
                name, has_value = token.split("=", 1)[0], "=" in token
                option = options.get(name)
                takes_value = option is not None and not getattr(option, "is_flag", False)
                current = name if takes_value and getattr(option, "multiple", False) else None
                out.append(token)
                if takes_value and not has_value and i + 1 < len(args):
                    out.append(args[i + 1])  # the option's own value, whatever it looks like
                    i += 1
                i += 1
                continue
            if current is not None and seen >= positional:
                out.extend([current, token])
            else:
                seen, current = seen + 1, None
                out.append(token)
            i += 1
        return super().parse_args(ctx, out)


def fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's error family (and a file that exists or is missing) into one line and exit 2.

    Anything else is a bug and propagates: :func:`ehrembed.cli.main` prints it as such.
    """
    try:
        yield
    except (EhrembedError, FileExistsError, FileNotFoundError) as exc:
        fail(str(exc))


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def steps_progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def bar_progress(label: str) -> Progress:
    """A progress bar with counts and elapsed time on stderr (stdout stays clean for --json)."""
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console)


def register_dataset(dataset_path: Path, source: str) -> None:
    """Record the dataset in the store (SQLite under EHREMBED_HOME or EHREMBED_DATABASE_URL)."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.store.catalog import register_meds
    from ehrembed.store.db import catalog

    with catalog() as session:
        register_meds(session, MedsDataset.open(dataset_path), source)


def record_artifact(
    kind: str, name: str, path: Path, spec: dict[str, Any], dataset: str | None, dataset_root: Path | None = None
) -> None:
    """Record an output in the store, linked to the dataset registered for ``dataset_root`` (else ``dataset``)."""
    from ehrembed.store.catalog import record_artifact
    from ehrembed.store.db import catalog

    with catalog() as session:
        record_artifact(session, kind, name, path, spec, dataset, dataset_root)


def parse_time(value: str | None, what: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        fail(f"{what} {value!r} is not an ISO time such as 2019-06-01 or 2019-06-01T23:59")
    from ehrembed.schema import InputRangeError, valid_time

    try:
        return valid_time(parsed, what)
    except InputRangeError as exc:
        fail(str(exc))


def print_stats(stats: dict[str, Any]) -> None:
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
    by_vocabulary = stats.get("coverage_by_vocabulary") or {}
    table.add_row("described by vocabulary", vocabulary_coverage_line(by_vocabulary))
    out_console.print(table)


def vocabulary_coverage_line(by_vocabulary: dict[str, dict[str, int]], top: int = 8) -> str:
    """``LOINC 12/40 codes, RxNorm 0/9 codes, ...``: described codes per vocabulary, most events first."""
    parts = [f"{name} {row['codes_described']}/{row['codes']}" for name, row in list(by_vocabulary.items())[:top]]
    return ", ".join(parts) + (" codes" if parts else "")


@contextlib.contextmanager
def stage_progress() -> Iterator[Any]:
    """One progress bar whose description follows the stage: yields ``update(description, done, total)``."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        bar = progress.add_task("starting", total=None)

        def update(description: str, done: int, total: int) -> None:
            progress.update(bar, description=description, completed=done, total=total)

        yield update


def split_list(values: list[str] | None) -> list[str]:
    """Repeatable options that also accept comma-separated lists: ``--k 1,4 --k all`` → ``["1", "4", "all"]``."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]
