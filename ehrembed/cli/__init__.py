"""The ``ehrembed`` command line: thin wrappers over library functions, with progress bars.

Errors a user can fix (the :mod:`ehrembed.errors` family, files that exist or are missing)
print one line naming the problem and exit with status 2; anything else is a bug: a short
traceback and exit 1 (``--debug`` for the whole one). ``--json`` switches data output to JSON
on stdout. One module per stage: ``records`` (ingest, synth, info, serialize), ``models`` (embed,
distill, export-onnx), ``search`` (index, similar, guidelines), ``predict`` (tasks, benchmark, run).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Annotated

import typer

from ehrembed import __version__
from ehrembed.cli.common import app, err_console

# Each stage's module registers its commands on ``app``; this order is the order of ``--help``.
for _stage in ("records", "models", "search", "predict", "service"):
    importlib.import_module(f"ehrembed.cli.{_stage}")

__all__ = ["app", "main"]


_DEBUG = {"on": False}


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="On an internal error (a bug), print the full traceback.")
    ] = False,
) -> None:
    _DEBUG["on"] = debug
    if version:
        print(__version__)
        raise typer.Exit(0)
    # Libraries' own tqdm bars (weight loading, encode loops) would interleave with ours.
    os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> None:
    """Run the CLI; an exception outside the error family is a bug: a short traceback, exit 1."""
    try:
        app()
    except Exception as exc:  # user errors already left through `fail` (exit 2)
        if _DEBUG["on"]:
            raise
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/ehrembed/" in f.filename][-3:]
        err_console.print(f"[bold red]internal error[/] (a bug, not your input): {type(exc).__name__}: {exc}")
        for frame in frames:
            err_console.print(f"  at {frame.filename.split('/ehrembed/')[-1]}:{frame.lineno} in {frame.name}")
        err_console.print("rerun with --debug for the whole traceback, and report it")
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
