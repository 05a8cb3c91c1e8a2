"""The ``ehrembed`` command line: thin wrappers over library functions, with progress bars.

Errors a user can fix (bad input, missing files) print one line naming the problem and exit
with status 2; ``--json`` switches data output to JSON on stdout. One module per stage:
``records`` (ingest, synth, info, serialize), ``models`` (embed, distill, export-onnx),
``search`` (index, similar, guidelines), ``predict`` (tasks, benchmark, run).
"""

from __future__ import annotations

import importlib
import os
from typing import Annotated

import typer

from ehrembed import __version__
from ehrembed.cli.common import app

# Each stage's module registers its commands on ``app``; this order is the order of ``--help``.
for _stage in ("records", "models", "search", "predict", "service"):
    importlib.import_module(f"ehrembed.cli.{_stage}")

__all__ = ["app", "main"]


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        print(__version__)
        raise typer.Exit(0)
    # Libraries' own tqdm bars (weight loading, encode loops) would interleave with ours.
    os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
