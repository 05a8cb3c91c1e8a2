"""Shared bits of the benchmark scripts: machine facts, peak memory, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def save(name: str, figures: dict[str, Any], path: Path | None = None) -> Path:
    """Print the figures and write them as JSON (default ``bench/results/<name>.json``)."""
    target = path or RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **figures}
    text = json.dumps(payload, indent=2, default=str)
    target.write_text(text + "\n")
    print(text)
    print(f"saved {target}")
    return target
