"""The conversion: resources in, de-duplicated and resolved, MEDS events, codes and source ids out."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.fhir.base import ETL_NAME, FhirError, subject_id_for, visit_id_for
from ehrembed.ehr.fhir.files import _expand, _files, _Item, _own_id, _read_file
from ehrembed.ehr.fhir.resources import HANDLERS
from ehrembed.ehr.fhir.rows import _Rows
from ehrembed.ehr.fhir.vocab import SPECIAL_CODES
from ehrembed.ehr.meds import IngestReport, conform_events, write_dataset

log = logging.getLogger(__name__)


# --- the conversion ------------------------------------------------------------------------------


def _digest(resource: dict[str, Any]) -> bytes:
    """Content fingerprint ignoring id and server bookkeeping (meta, narrative)."""
    body = {k: v for k, v in resource.items() if k not in ("id", "meta", "text")}
    return hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).digest()


def _take(rows: _Rows, item: _Item) -> None:
    """Count, de-duplicate and convert one resource (Bundles were already expanded)."""
    res = item.resource
    rtype = res.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        rows.report.counts["(no resourceType)"] = rows.report.counts.get("(no resourceType)", 0) + 1
        rows.report.skip("not a FHIR resource (no resourceType)")
        return
    rows.report.counts[rtype] = rows.report.counts.get(rtype, 0) + 1
    if rtype == "Bundle":
        return
    rows.n_resources += 1
    rid = _own_id(item)
    if rid is not None:
        key = f"{rtype}/{rid}"
        if item.full_url:
            rows.urls[item.full_url] = key
        earlier = rows.seen.get(key)
        if earlier is not None:
            if rtype != "Patient":
                rows.report.skip(f"duplicate {rtype} id (first kept)")
                return
            if earlier[0] != _digest(res):
                raise FhirError(
                    f"Patient id {rid!r} appears twice with different content: at {earlier[1]} and at {item.location}"
                )
            rows.report.skip("duplicate Patient (identical)")
            return
        # Only Patients keep a content fingerprint: a conflicting copy of one is fatal, while a
        # second copy of anything else is skipped whatever it holds (fingerprints are costly).
        rows.seen[key] = (_digest(res) if rtype == "Patient" else b"", item.location)
    if res.get("status") == "entered-in-error":
        rows.report.skip(f"{rtype}: entered-in-error")
        return
    handler = HANDLERS.get(rtype)
    if handler is None:
        rows.report.skip(f"unsupported resource type {rtype}")
        return
    try:
        handler(rows, item)
    except s.InputRangeError as exc:
        raise FhirError(f"{item.location}: {rtype} {exc}") from None


def _resolve(key: str | None, kind: str, urls: dict[str, str]) -> str | None:
    """``kind/id`` for a reference key, following ``urn:uuid`` fullUrls; None if not a ``kind``."""
    if key is None:
        return None
    if key.startswith("urn:"):
        key = urls.get(key) or (f"{kind}/{key.removeprefix('urn:uuid:')}" if key.startswith("urn:uuid:") else key)
    return key if key.startswith(f"{kind}/") else None


def _finish(rows: _Rows, source: str) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Resolve references, drop (and count) what cannot be placed, and build the three frames."""
    report = rows.report
    if not rows.patients:
        raise FhirError(f"no Patient resources found in {source}")

    for row, key in rows.pending_medications:
        found = rows.medications.get(key) or rows.medications.get(_resolve(key, "Medication", rows.urls) or "")
        if found is not None:
            rows.code[row] = found[0]
            rows.describe(found[0], found[1], s.Domain.DRUG)

    subject_of: dict[str, int] = {}
    for key, (pid, _location) in rows.patients.items():
        subject_of[key] = subject_id_for(pid)
    if len(set(subject_of.values())) != len(subject_of):
        raise FhirError(f"two Patient ids in {source} hash to the same subject_id; rename one")
    urls = rows.urls
    subject_ids: list[int | None] = []
    visit_ids: list[int | None] = []
    dropped: dict[str, set[int]] = {}
    n_missing_visits = 0
    for i, (sref, vref) in enumerate(zip(rows.subject_ref, rows.visit_ref, strict=True)):
        patient_key = _resolve(sref, "Patient", urls)
        sid = subject_of.get(patient_key) if patient_key is not None else None
        subject_ids.append(sid)
        if sid is None:
            dropped.setdefault("no subject" if sref is None else "unknown patient", set()).add(rows.resource_no[i])
        elif rows.code[i] is None:
            dropped.setdefault("unresolved medication reference", set()).add(rows.resource_no[i])
        encounter_key = _resolve(vref, "Encounter", urls)
        visit_ids.append(visit_id_for(encounter_key.split("/", 1)[1]) if encounter_key else None)
        if encounter_key is not None and encounter_key not in rows.seen:
            n_missing_visits += 1
    for reason, resources in sorted(dropped.items()):
        report.skip(reason, len(resources))
    if n_missing_visits:
        report.warnings.append(
            f"{n_missing_visits} event(s) name an Encounter that is not in the input; their visit_id is kept"
        )

    events = pl.DataFrame(
        {
            s.SUBJECT_ID: subject_ids,
            s.TIME: rows.time,
            s.CODE: rows.code,
            s.NUMERIC_VALUE: rows.numeric_value,
            s.TEXT_VALUE: rows.text_value,
            s.UNIT: rows.unit,
            s.VISIT_ID: visit_ids,
            s.REF_LOW: rows.ref_low,
            s.REF_HIGH: rows.ref_high,
        },
        schema={
            s.SUBJECT_ID: pl.Int64,
            s.TIME: pl.Datetime("us"),
            s.CODE: pl.String,
            s.NUMERIC_VALUE: pl.Float64,
            s.TEXT_VALUE: pl.String,
            s.UNIT: pl.String,
            s.VISIT_ID: pl.Int64,
            s.REF_LOW: pl.Float64,
            s.REF_HIGH: pl.Float64,
        },
    ).filter(pl.col(s.SUBJECT_ID).is_not_null() & pl.col(s.CODE).is_not_null())
    # Ties in time are ordered by content, not by file order, so ndjson and Bundle copies of one
    # dataset give identical frames; a visit's start event leads its other events at that time.
    rank = (
        pl.when(pl.col(s.CODE).str.starts_with("Visit/"))
        .then(0)
        .when(pl.col(s.CODE) == s.VISIT_END_CODE)
        .then(2)
        .otherwise(1)
    )
    events = events.sort(
        [
            pl.col(s.SUBJECT_ID),
            pl.col(s.TIME),
            rank,
            pl.col(s.CODE),
            pl.col(s.NUMERIC_VALUE),
            pl.col(s.TEXT_VALUE),
        ],
        nulls_last=False,
        maintain_order=True,
    )
    events = conform_events(events, source=source)

    present = set(events.get_column(s.SUBJECT_ID).unique().to_list())
    silent = [pid for key, (pid, _) in rows.patients.items() if subject_of[key] not in present]
    if silent:
        report.skip("Patient without events", len(silent))
    source_ids = pl.DataFrame(
        {
            s.SUBJECT_ID: [subject_of[key] for key in rows.patients if subject_of[key] in present],
            s.SOURCE_ID: [pid for key, (pid, _) in rows.patients.items() if subject_of[key] in present],
        },
        schema={s.SUBJECT_ID: pl.Int64, s.SOURCE_ID: pl.String},
    ).sort(s.SUBJECT_ID)

    used = set(events.get_column(s.CODE).unique().to_list())
    descriptions = {**{c: (d, str(dom)) for c, (d, dom) in SPECIAL_CODES.items()}, **rows.codes}
    code_list = sorted(used)
    codes = pl.DataFrame(
        {
            s.CODE: code_list,
            s.DESCRIPTION: [descriptions.get(c, (None, ""))[0] for c in code_list],
            s.DOMAIN: [str(descriptions.get(c, (None, s.Domain.OTHER))[1]) for c in code_list],
        },
        schema={s.CODE: pl.String, s.DESCRIPTION: pl.String, s.DOMAIN: pl.String},
    )
    report.n_events = events.height
    report.n_subjects = len(present)
    return events, codes, source_ids


def fhir_to_events(
    resources: Iterable[dict[str, Any]], report: IngestReport, *, source: str = "input"
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """MEDS ``(events, codes, source_ids)`` frames from FHIR resources (Bundles are expanded).

    For resources that did not come from files, e.g. a Bundle posted to the API. ``events`` is
    conformed to the MEDS schema and sorted; ``codes`` has code, description and domain for every
    code used; ``source_ids`` maps ``subject_id`` to ``Patient.id``. Fills ``report``'s counts,
    skips, ``n_subjects`` and ``n_events``. Raises FhirError when there is no Patient at all or
    one Patient id comes twice with different content.
    """
    items = (_Item(r, f"{source} resource[{i}]") for i, r in enumerate(resources))
    return _convert(items, report, source)


def _convert(
    items: Iterable[_Item], report: IngestReport, source: str
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rows = _Rows(report)
    for item in items:
        if not isinstance(item.resource, dict):
            raise FhirError(f"{item.location}: expected a JSON object (a FHIR resource)")
        for expanded in _expand(item):
            _take(rows, expanded)
    return _finish(rows, source)


def ingest_fhir(
    paths: Sequence[Path],
    out: Path,
    *,
    overwrite: bool = False,
    dataset_name: str | None = None,
) -> IngestReport:
    """Read FHIR R4 files or folders and write a MEDS dataset at ``out``; return what happened.

    ``paths`` may be bulk-export ndjson files (``.ndjson``, ``.ndjson.gz``), Bundle or single
    resource ``.json`` files, or folders searched recursively for those. The resource type is
    read from each resource, never from the file name. The dataset is written atomically: on any
    error nothing is left at ``out``. Raises FhirError for malformed JSON (naming file and line),
    conflicting duplicate Patients, or an input without any Patient.
    """
    started = time.perf_counter()
    out = Path(out)
    if isinstance(paths, str | Path):
        paths = [Path(paths)]
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
    files = _files(paths)
    source = ", ".join(str(p) for p in paths) if len(paths) <= 3 else f"{len(paths)} paths"
    if not files:
        raise FhirError(f"no FHIR files (*.ndjson, *.json) found in {source}")
    report = IngestReport(dataset=out)
    items = (item for path in files for item in _read_file(path))
    events, codes, source_ids = _convert(items, report, source)
    write_dataset(
        out,
        events,
        codes,
        dataset_name=dataset_name or out.name,
        etl_name=ETL_NAME,
        source_ids=source_ids,
        overwrite=overwrite,
        extra_metadata={"source": "FHIR R4", "files": len(files)},
    )
    report.seconds = time.perf_counter() - started
    log.info(
        "FHIR ingest: %d files, %d subjects, %d events, %d skipped, %.1fs",
        len(files),
        report.n_subjects,
        report.n_events,
        sum(report.skipped.values()),
        report.seconds,
    )
    return report
