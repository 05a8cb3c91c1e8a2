"""Add or replace patients in a MEDS folder in place, crash-safely.

A MEDS folder keeps each subject in one shard. :func:`upsert_patients` writes the new patients'
events as a new shard, rewrites the shards that held older versions of them without those rows,
and merges ``codes.parquet``, ``subject_splits.parquet`` (new subjects get their stable hash split)
and ``subject_source_ids.parquet``. Past :data:`COMPACT_AT` shards, the smallest are merged into
one (:func:`compact_shards`), so many small upserts do not slow every later read. Every file is
first written beside its target (``*.tmp``), then a journal naming the renames is written and
fsynced, then the renames happen and the journal is removed. A crash before the journal leaves
the old dataset (stray ``*.tmp`` files are removed the next time it is opened); a crash after it
is finished by :func:`recover` (which ``MedsDataset.open`` runs), so a reader never sees a patient
twice or half-replaced after a crash. Writers are serialised with a lock file; in-process readers
should hold the caller's own read lock while a write runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset, MedsError, conform_codes, conform_events
from ehrembed.ehr.splits import assign_splits
from ehrembed.fsutil import atomic_write_text, file_lock, fsync_dir

JOURNAL = ".ehrembed-upsert.json"
LOCK = ".ehrembed-upsert.lock"
GATE = ".ehrembed-upsert.gate"
_TMP = ".tmp"
COMPACT_AT = 16
"""Shards an upsert-heavy dataset may reach before the smallest are merged (each upsert adds one)."""
COMPACT_ROWS = 2_000_000
"""At most this many event rows are merged at once (bounds the memory compaction needs)."""


@dataclass
class UpsertReport:
    """What an upsert changed."""

    added: list[int] = field(default_factory=list)
    replaced: list[int] = field(default_factory=list)
    n_events: int = 0
    new_codes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "replaced": self.replaced,
            "n_events": self.n_events,
            "new_codes": self.new_codes,
            "seconds": round(self.seconds, 3),
        }


@contextlib.contextmanager
def read_lock(root: Path) -> Iterator[None]:
    """Hold while reading a MEDS folder that another process may upsert into.

    Upserts wait for the readers in progress; a waiting upsert holds the gate, so new readers queue
    behind it instead of starving it. Within one process, pair it with a thread-level lock.
    """
    with contextlib.ExitStack() as held:
        with file_lock(root / GATE, shared=True):
            held.enter_context(file_lock(root / LOCK, shared=True))
        yield


class SharedReadLock:
    """:func:`read_lock` shared by the threads of one process: the process holds the folder's shared lock
    while any of its readers is in, so a reader costs a lock file opened only when the process had none.

    A new reader joins the readers in progress only while no upsert waits at the gate (a non-blocking
    probe); when one waits, the reader queues behind it as with :func:`read_lock`, so a busy server
    cannot starve another process's upsert. An in-process writer must first wait for this process's
    readers to leave (the caller's thread-level lock does that): the file lock goes with the last of them.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._mutex = threading.Lock()
        self._readers = 0
        self._held: contextlib.ExitStack | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self._enter()
        try:
            yield
        finally:
            with self._mutex:
                self._readers -= 1
                if not self._readers and self._held is not None:
                    self._held.close()
                    self._held = None

    def _enter(self) -> None:
        with self._mutex:
            if self._readers and not _gate_closed(self.root / GATE):
                self._readers += 1
                return
        # Through the gate first: behind any upsert waiting there.
        with file_lock(self.root / GATE, shared=True), self._mutex:
            if not self._readers:
                held = contextlib.ExitStack()
                held.enter_context(file_lock(self.root / LOCK, shared=True))
                self._held = held
            self._readers += 1


def _gate_closed(gate: Path) -> bool:
    """Whether an upsert holds (or waits at) the gate: a non-blocking shared probe that fails."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locks at all
        return False
    try:
        fd = os.open(gate, os.O_RDONLY)
    except OSError:  # no gate file yet (no upsert ever ran) or an unreadable folder
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor drops the probe's lock
    return False


@contextlib.contextmanager
def write_lock(root: Path) -> Iterator[None]:
    """Exclusive: one upsert at a time, and no reader (in any process) while it runs."""
    with file_lock(root / GATE), file_lock(root / LOCK):
        yield


def recover(root: Path) -> bool:
    """Finish an upsert that was interrupted after its journal was written; drop stray temp files.

    Returns True when a journal was replayed. Safe to call at any time and more than once.
    """
    root = Path(root)
    journal = root / JOURNAL
    replayed = False
    if journal.exists():
        plan = json.loads(journal.read_text())
        for tmp, final in plan["renames"]:
            if (root / tmp).exists():
                os.replace(root / tmp, root / final)
        for gone in plan["deletes"]:
            (root / gone).unlink(missing_ok=True)
        fsync_dir(root / s.DATA_DIR)
        fsync_dir(root / "metadata")
        journal.unlink()
        fsync_dir(root)
        replayed = True
    for stray in [*root.glob(f"{s.DATA_DIR}/*{_TMP}"), *root.glob(f"metadata/*{_TMP}")]:
        stray.unlink(missing_ok=True)
    return replayed


def _write_tmp(root: Path, relative: str, frame: pl.DataFrame, schema: Any, plan: list[list[str]]) -> None:
    tmp = relative + _TMP
    with open(root / tmp, "wb") as fh:
        pq.write_table(frame.to_arrow().cast(schema), fh)
        fh.flush()
        os.fsync(fh.fileno())
    plan.append([tmp, relative])


def _next_shard(dataset: MedsDataset) -> int:
    numbers = [int(p.stem) for p in dataset.shards if p.stem.isdigit()]
    return max(numbers, default=-1) + 1


def upsert_patients(
    dataset: MedsDataset,
    events: pl.DataFrame,
    *,
    codes: pl.DataFrame | None = None,
    source_ids: pl.DataFrame | None = None,
) -> UpsertReport:
    """Add the subjects in ``events`` or replace them wholesale (all their old events go).

    ``events`` follows the MEDS event schema (``subject_id``, ``time``, ``code`` required). ``codes``
    adds descriptions for codes the dataset does not describe yet; ``source_ids`` maps new subjects
    to source-system ids. Everything is validated before anything is written.
    """
    started = time.perf_counter()
    events = conform_events(events, source="patients")
    if events.is_empty():
        raise MedsError("patients: no events given")
    root = dataset.root
    subjects = events.get_column(s.SUBJECT_ID).unique().sort()
    report = UpsertReport(n_events=events.height)
    with write_lock(root):
        recover(root)
        plan: list[list[str]] = []
        deletes: list[str] = []
        touched: list[Path] = []
        for shard in dataset.shards:
            held = pl.read_parquet(shard, columns=[s.SUBJECT_ID]).get_column(s.SUBJECT_ID)
            if held.is_in(subjects.implode()).any():
                touched.append(shard)
        replaced: set[int] = set()
        for shard in touched:
            frame = pl.read_parquet(shard)
            keep = frame.filter(~pl.col(s.SUBJECT_ID).is_in(subjects.implode()))
            replaced.update(
                frame.filter(pl.col(s.SUBJECT_ID).is_in(subjects.implode()))[s.SUBJECT_ID].unique().to_list()
            )
            relative = str(shard.relative_to(root))
            if keep.is_empty():
                deletes.append(relative)
            else:
                _write_tmp(root, relative, conform_events(keep, check_ranges=False), s.DATA_SCHEMA, plan)
        _write_tmp(root, f"{s.DATA_DIR}/{_next_shard(dataset)}.parquet", events, s.DATA_SCHEMA, plan)

        old_codes = dataset.codes()
        used = pl.DataFrame({s.CODE: events.get_column(s.CODE).unique()})
        given = conform_codes(codes) if codes is not None else conform_codes(used)
        new = given.join(old_codes.select(s.CODE), on=s.CODE, how="anti")
        new = pl.concat([new, used.join(old_codes.select(s.CODE), on=s.CODE, how="anti")], how="diagonal_relaxed")
        merged = conform_codes(pl.concat([old_codes, new], how="diagonal_relaxed"))
        report.new_codes = merged.height - old_codes.height
        _write_tmp(root, s.CODES_FILE, merged, s.CODES_SCHEMA, plan)

        splits = dataset.splits()
        fresh = [int(i) for i in subjects.to_list() if int(i) not in set(splits.get_column(s.SUBJECT_ID).to_list())]
        if fresh:
            splits = pl.concat([splits.select(s.SUBJECT_ID, s.SPLIT), assign_splits(fresh)]).sort(s.SUBJECT_ID)
            _write_tmp(root, s.SPLITS_FILE, splits, s.SPLITS_SCHEMA, plan)
        if source_ids is not None and not source_ids.is_empty():
            old = dataset.source_ids()
            merged_ids = source_ids.select(pl.col(s.SUBJECT_ID).cast(pl.Int64), pl.col(s.SOURCE_ID).cast(pl.String))
            if old is not None:
                merged_ids = pl.concat([old.join(merged_ids, on=s.SUBJECT_ID, how="anti"), merged_ids])
            _write_tmp(root, s.SOURCE_IDS_FILE, merged_ids.sort(s.SUBJECT_ID), s.SOURCE_IDS_SCHEMA, plan)

        atomic_write_text(root / JOURNAL, json.dumps({"renames": plan, "deletes": deletes}))
        recover(root)
        compact_shards(MedsDataset(root))
    report.replaced = sorted(replaced)
    report.added = [int(i) for i in subjects.to_list() if int(i) not in replaced]
    report.seconds = time.perf_counter() - started
    return report


def compact_shards(dataset: MedsDataset, *, max_shards: int = COMPACT_AT, max_rows: int = COMPACT_ROWS) -> bool:
    """Merge the smallest shards into one when there are more than ``max_shards`` (every upsert adds one).

    Takes the smallest shards while their rows add up to at most ``max_rows`` (at least two), writes
    them as one new shard and deletes them through the same journal as an upsert, so a crash at any
    step leaves either the old shards or the merged one. Call under :func:`write_lock` (an upsert
    does). Returns whether it merged anything.
    """
    root = dataset.root
    shards = dataset.shards
    if len(shards) <= max_shards:
        return False
    sized = sorted(shards, key=lambda p: pq.ParquetFile(p).metadata.num_rows)
    chosen: list[Path] = []
    rows = 0
    for shard in sized:
        n = pq.ParquetFile(shard).metadata.num_rows
        if len(chosen) >= 2 and rows + n > max_rows:
            break
        chosen.append(shard)
        rows += n
    if len(chosen) < 2:
        return False
    merged = conform_events(pl.concat([pl.read_parquet(p) for p in chosen]), check_ranges=False)
    plan: list[list[str]] = []
    _write_tmp(root, f"{s.DATA_DIR}/{_next_shard(dataset)}.parquet", merged, s.DATA_SCHEMA, plan)
    deletes = [str(p.relative_to(root)) for p in chosen]
    atomic_write_text(root / JOURNAL, json.dumps({"renames": plan, "deletes": deletes}))
    recover(root)
    return True


def events_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """MEDS event rows (dicts with the event schema's fields) as a frame ready for :func:`upsert_patients`."""
    frame = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()
    return conform_events(frame, source="events")


def bundle_frames(bundle: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """A FHIR R4 Bundle (or one resource) as MEDS ``(events, codes, source_ids)``; FhirError if it holds no Patient."""
    from ehrembed.ehr.fhir import fhir_to_events
    from ehrembed.ehr.meds import IngestReport

    return fhir_to_events([bundle], IngestReport(dataset=Path("bundle")), source="bundle")
