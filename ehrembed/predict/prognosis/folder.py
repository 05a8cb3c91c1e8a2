"""What makes a folder a prognostic model, without importing torch (the benchmark and CLI ask this often)."""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "prognosis.json"


def is_prognosis_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a prognostic model (``ehrembed pretrain``'s output)."""
    return (Path(path).expanduser() / CONFIG_FILE).is_file()
