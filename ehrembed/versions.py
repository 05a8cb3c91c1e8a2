"""Installed package versions, for the run cards every stage writes (distilled models, benchmarks, knowledge bases).

At the bottom of the layers (it imports nothing of ehrembed), so any stage may record what it ran with.
"""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("ehrembed", "torch", "transformers", "sentence-transformers", "peft", "numpy", "safetensors")
"""The packages that shape a trained model (the default for :func:`package_versions`)."""


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Python's and the installed versions of ``packages`` (absent ones are skipped)."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
