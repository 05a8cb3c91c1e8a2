"""Reading FHIR files (bulk ndjson, Bundle JSON, single resources, gzip) and resolving references."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ehrembed.ehr.fhir.base import FhirError

# --- reading files -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    """One resource plus where it came from (for error messages) and its Bundle fullUrl."""

    resource: dict[str, Any]
    location: str
    full_url: str | None = None


def _files(paths: Sequence[Path]) -> list[Path]:
    """Input files: given files as is, folders searched recursively for ndjson/json files."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and not p.name.startswith(".") and _is_fhir_name(p.name)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise FhirError(f"{path}: no such file or folder")
    return found


def _is_fhir_name(name: str) -> bool:
    return name.endswith((".ndjson", ".ndjson.gz", ".json", ".json.gz"))


def _open_text(path: Path) -> TextIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")  # -sig: tolerate a byte-order mark


def _read_file(path: Path) -> Iterator[_Item]:
    """Resources of one file: ndjson (one per line) or a JSON document (a Bundle or a resource).

    Raises FhirError naming the file, and the 1-based line for malformed JSON.
    """
    try:
        ndjson = path.name.endswith((".ndjson", ".ndjson.gz"))
        with _open_text(path) as fh:
            if ndjson:
                yield from _read_lines(fh, path)
                return
            text = fh.read()
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise FhirError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several documents: ndjson under a .json name
            yield from _read_lines(text.splitlines(), path)
            return
        raise FhirError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(document, dict):
        raise FhirError(f"{path}: expected a JSON object (a FHIR resource or Bundle)")
    yield _Item(document, str(path))


def _read_lines(lines: Iterable[str], path: Path) -> Iterator[_Item]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            resource = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FhirError(f"{path}:{lineno}: malformed JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(resource, dict):
            raise FhirError(f"{path}:{lineno}: expected a JSON object (a FHIR resource)")
        yield _Item(resource, f"{path}:{lineno}")


def _expand(item: _Item) -> Iterator[_Item]:
    """The item itself, or for a Bundle the Bundle and then its entries (recursively)."""
    yield item
    if item.resource.get("resourceType") != "Bundle":
        return
    for index, entry in enumerate(item.resource.get("entry") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue  # e.g. a DELETE in a transaction: no resource, nothing to ingest
        full_url = entry.get("fullUrl")
        yield from _expand(
            _Item(
                entry["resource"],
                f"{item.location} entry[{index}]",
                full_url if isinstance(full_url, str) else None,
            )
        )


# --- references ----------------------------------------------------------------------------------


def _ref_key(reference: Any) -> str | None:
    """Canonical key of a reference: ``Type/id`` for relative or absolute URLs, else as given."""
    if isinstance(reference, dict):
        reference = reference.get("reference")
    if not isinstance(reference, str) or not reference:
        return None
    ref = reference.strip()
    if ref.startswith(("urn:", "#")):
        return ref
    parts = [p for p in ref.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2:
        return f"{parts[-2]}/{parts[-1]}"
    return ref


def _own_id(item: _Item) -> str | None:
    """A resource's logical id, or the one its Bundle ``fullUrl`` implies."""
    rid = item.resource.get("id")
    if isinstance(rid, str) and rid:
        return rid
    if item.full_url:
        if item.full_url.startswith("urn:uuid:"):
            return item.full_url.removeprefix("urn:uuid:")
        if item.full_url.startswith("urn:oid:"):
            return item.full_url.removeprefix("urn:oid:")
        return item.full_url.rstrip("/").rsplit("/", 1)[-1] or None
    return None
