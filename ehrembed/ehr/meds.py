"""Read and write MEDS dataset folders.

Layout (MEDS 0.4): ``data/*.parquet`` (events sorted by subject then time, each subject in one
shard), ``metadata/codes.parquet``, ``metadata/subject_splits.parquet``, ``metadata/dataset.json``.
Folders with nested shards (``data/train/0.parquet``: the split layout, :func:`export_meds`) are
read the same way; ehrembed writes flat shards.
Writes are atomic: a dataset is built in a scratch folder and renamed into place, so a failed
ingest leaves no half-written dataset behind.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from ehrembed import __version__
from ehrembed import schema as s
from ehrembed.ehr.splits import assign_splits
from ehrembed.ehr.text import one_line
from ehrembed.errors import InputError, NotFoundError
from ehrembed.fsutil import atomic_dir, atomic_write_text

MEDS_VERSION = s.MEDS_VERSION
DEFAULT_SHARD_SUBJECTS = 20_000


class MedsError(InputError):
    """A MEDS folder or event table is malformed; the message names the file and the problem."""


class SubjectNotFoundError(NotFoundError, KeyError):
    """The subject is not in the dataset (also a ``KeyError``, as a missing key of a mapping is)."""


@dataclass
class IngestReport:
    """What an ingest did: where it wrote, how much, and what it skipped and why.

    ``counts`` is rows/resources read per source table or resource type; ``skipped`` counts what
    was left out per reason (unknown resource types, unmapped code systems, rows without time...);
    ``warnings`` are human-readable notes. Nothing in here contains record text.
    """

    dataset: Path
    n_subjects: int = 0
    n_events: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": str(self.dataset),
            "n_subjects": self.n_subjects,
            "n_events": self.n_events,
            "counts": dict(sorted(self.counts.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }


_POLARS_DATA_SCHEMA: dict[str, Any] = {
    s.SUBJECT_ID: pl.Int64,
    s.TIME: pl.Datetime("us"),
    s.CODE: pl.String,
    s.NUMERIC_VALUE: pl.Float32,
    s.TEXT_VALUE: pl.String,
    s.UNIT: pl.String,
    s.VISIT_ID: pl.Int64,
    s.REF_LOW: pl.Float32,
    s.REF_HIGH: pl.Float32,
}

_POLARS_CODES_SCHEMA: dict[str, Any] = {
    s.CODE: pl.String,
    s.DESCRIPTION: pl.String,
    s.PARENT_CODES: pl.List(pl.String),
    s.DOMAIN: pl.String,
    s.OMOP_CONCEPT_ID: pl.Int64,
    s.OMOP_ANCESTOR_IDS: pl.List(pl.Int64),
}


def check_output(out: Path, overwrite: bool) -> None:
    """Fail before any work if ``out`` exists and may not be replaced."""
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")


def conform_events(events: pl.DataFrame, *, source: str = "events", check_ranges: bool = True) -> pl.DataFrame:
    """Cast to the event schema (adding missing optional columns), validate, and sort.

    Raises MedsError naming ``source`` and the first offending row for null subjects or codes,
    and (``check_ranges``, on for everything new) for negative ids, times out of bounds and
    numbers that are not finite float32.
    """
    missing = [c for c in (s.SUBJECT_ID, s.CODE) if c not in events.columns]
    if missing:
        raise MedsError(f"{source}: missing required column(s) {missing}")
    if s.TIME not in events.columns:
        raise MedsError(f"{source}: missing required column 'time' (use null for static facts)")
    for col, dtype in _POLARS_DATA_SCHEMA.items():
        if col not in events.columns:
            events = events.with_columns(pl.lit(None, dtype=dtype).alias(col))
    time_dtype = events.schema[s.TIME]
    if isinstance(time_dtype, pl.Datetime) and time_dtype.time_zone is not None:
        events = events.with_columns(pl.col(s.TIME).dt.convert_time_zone("UTC").dt.replace_time_zone(None))
    events = events.select([pl.col(c).cast(dtype, strict=False) for c, dtype in _POLARS_DATA_SCHEMA.items()])
    for col in (s.SUBJECT_ID, s.CODE):
        nulls = events.select(pl.col(col).is_null().arg_true()).to_series()
        if len(nulls):
            raise MedsError(f"{source}: row {int(nulls[0])} has no {col}")
    if check_ranges:
        _check_ranges(events, source)
    return events.sort([s.SUBJECT_ID, s.TIME], nulls_last=False, maintain_order=True)


def _check_ranges(events: pl.DataFrame, source: str) -> None:
    """MedsError naming the first row whose id is negative, time out of bounds, or number not finite float32.

    Runs on every path that writes events (ingest, upsert), so nothing stored is unreadable later:
    a time outside :func:`ehrembed.schema.valid_time`'s bounds, or a value that became ``inf`` in
    the float32 column, is refused here rather than found by a reader.
    """
    latest = s.latest_time()
    checks = {
        s.SUBJECT_ID: (pl.col(s.SUBJECT_ID) < 0, "is negative"),
        s.TIME: (
            (pl.col(s.TIME) < s.EARLIEST_TIME) | (pl.col(s.TIME) > latest),
            f"is outside {s.EARLIEST_TIME:%Y-%m-%d} to {latest:%Y-%m-%d}",
        ),
        **{
            col: (~pl.col(col).is_finite(), "is not a finite float32")
            for col in (s.NUMERIC_VALUE, s.REF_LOW, s.REF_HIGH)
        },
    }
    for col, (bad, problem) in checks.items():
        rows = events.select(bad.fill_null(False).arg_true()).to_series()
        if len(rows):
            value = events.get_column(col).cast(pl.String)[int(rows[0])]  # year 10000 has no Python datetime
            raise MedsError(f"{source}: row {int(rows[0])} {col} {value} {problem} ({len(rows)} such row(s))")


def conform_codes(codes: pl.DataFrame) -> pl.DataFrame:
    """Cast to the codes schema, one row per code, sorted; descriptions neutralised (:func:`one_line`)."""
    for col, dtype in _POLARS_CODES_SCHEMA.items():
        if col not in codes.columns:
            codes = codes.with_columns(pl.lit(None, dtype=dtype).alias(col))
    codes = codes.with_columns(
        pl.col(s.DESCRIPTION).cast(pl.String).map_elements(one_line, return_dtype=pl.String, skip_nulls=True)
    )
    return (
        codes.select([pl.col(c).cast(dtype) for c, dtype in _POLARS_CODES_SCHEMA.items()])
        .unique(subset=[s.CODE], keep="first", maintain_order=True)
        .sort(s.CODE)
    )


def write_dataset(
    out: Path,
    events: pl.DataFrame,
    codes: pl.DataFrame,
    *,
    dataset_name: str,
    etl_name: str,
    source_ids: pl.DataFrame | None = None,
    splits: pl.DataFrame | None = None,
    shard_subjects: int = DEFAULT_SHARD_SUBJECTS,
    overwrite: bool = False,
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a complete MEDS folder at ``out`` atomically and return it.

    ``codes`` gets a row for every code in ``events`` (description null where unknown), as MEDS
    requires. ``splits`` defaults to stable hash-based train/tuning/held_out assignments.
    """
    events = conform_events(events, source=dataset_name)
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        append_shards(tmp, [events], shard_subjects=shard_subjects)
        finish_dataset(
            tmp,
            codes,
            dataset_name=dataset_name,
            etl_name=etl_name,
            source_ids=source_ids,
            splits=splits,
            extra_metadata=extra_metadata,
        )
    return Path(out)


def append_shards(root: Path, batches: Iterable[pl.DataFrame], *, shard_subjects: int) -> int:
    """Write conformed, subject-sorted event batches as ``data/{n}.parquet`` shards.

    Each batch must hold whole subjects (none split across batches). Returns shards written.
    """
    data_dir = root / s.DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(data_dir.glob("*.parquet")))
    for batch in batches:
        if batch.is_empty():
            continue
        subjects = batch.get_column(s.SUBJECT_ID).unique(maintain_order=True)
        for start in range(0, len(subjects), shard_subjects):
            chunk_ids = subjects.slice(start, shard_subjects)
            shard = batch.filter(pl.col(s.SUBJECT_ID).is_in(chunk_ids.implode()))
            pq.write_table(shard.to_arrow().cast(s.DATA_SCHEMA), data_dir / f"{n}.parquet")
            n += 1
    return n


def finish_dataset(
    root: Path,
    codes: pl.DataFrame,
    *,
    dataset_name: str,
    etl_name: str,
    source_ids: pl.DataFrame | None = None,
    splits: pl.DataFrame | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> None:
    """Write the metadata folder for the shards already under ``root/data``."""
    meta = root / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    lazy = pl.scan_parquet(sorted((root / s.DATA_DIR).rglob("*.parquet")))
    used = lazy.select(pl.col(s.CODE).unique()).collect().get_column(s.CODE)
    codes = conform_codes(codes)
    missing = pl.DataFrame({s.CODE: used}).join(codes.select(s.CODE), on=s.CODE, how="anti")
    codes = conform_codes(pl.concat([codes, missing], how="diagonal_relaxed"))
    pq.write_table(codes.to_arrow().cast(s.CODES_SCHEMA), meta / "codes.parquet")

    subject_ids = lazy.select(pl.col(s.SUBJECT_ID).unique().sort()).collect().get_column(s.SUBJECT_ID)
    if splits is None:
        splits = assign_splits(subject_ids.to_numpy())
    pq.write_table(
        splits.select(s.SUBJECT_ID, s.SPLIT).to_arrow().cast(s.SPLITS_SCHEMA), meta / "subject_splits.parquet"
    )
    if source_ids is not None:
        pq.write_table(
            source_ids.select(s.SUBJECT_ID, s.SOURCE_ID).to_arrow().cast(s.SOURCE_IDS_SCHEMA),
            meta / "subject_source_ids.parquet",
        )
    info: dict[str, Any] = {
        "dataset_name": dataset_name,
        "dataset_version": dt.date.today().isoformat(),
        "etl_name": etl_name,
        "etl_version": __version__,
        "meds_version": MEDS_VERSION,
        "created_at": dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(),
        "code_modifier_columns": [s.UNIT],
        "other_extension_columns": [s.VISIT_ID, s.REF_LOW, s.REF_HIGH],
    }
    if extra_metadata:
        info["ehrembed"] = extra_metadata
    atomic_write_text(meta / "dataset.json", json.dumps(info, indent=2, default=str) + "\n")


@dataclass(frozen=True)
class MedsDataset:
    """A MEDS folder on disk. Cheap to construct; reads happen on demand."""

    root: Path

    @classmethod
    def open(cls, root: Path | str) -> MedsDataset:
        """Open and check the layout; raises MedsError naming what is missing."""
        root = Path(root)
        if not root.is_dir():
            raise MedsError(f"{root}: no such dataset folder")
        interrupted = (root / ".ehrembed-upsert.json").exists() or any(
            next(root.glob(f"{folder}/*.tmp"), None) is not None for folder in (s.DATA_DIR, "metadata")
        )
        if interrupted:  # an upsert that crashed (journal or stray temp files), or one running in another process
            from ehrembed.ehr.upsert import recover, write_lock

            with write_lock(root):  # waits for a live upsert to end; then only a crashed one is left to finish
                recover(root)
        if not any((root / s.DATA_DIR).rglob("*.parquet")):
            raise MedsError(f"{root}: no data/**/*.parquet shards; is this a MEDS dataset folder?")
        return cls(root)

    @property
    def shards(self) -> list[Path]:
        """``data/*.parquet`` (ehrembed's layout) and ``data/**/*.parquet`` (e.g. ``data/train/0.parquet``, the
        split layout meds-tab and many MEDS releases use), in a stable order."""
        data = self.root / s.DATA_DIR
        return sorted(data.rglob("*.parquet"), key=lambda p: (*_shard_key(p), str(p.relative_to(data).parent)))

    @property
    def metadata(self) -> dict[str, Any]:
        path = self.root / s.DATASET_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def name(self) -> str:
        return str(self.metadata.get("dataset_name") or self.root.name)

    def scan(self) -> pl.LazyFrame:
        """All events as a lazy frame (columns absent from older files come back null)."""
        return pl.scan_parquet(self.shards, missing_columns="insert", extra_columns="ignore")

    def codes(self) -> pl.DataFrame:
        path = self.root / s.CODES_FILE
        if not path.exists():
            return conform_codes(pl.DataFrame({s.CODE: []}, schema={s.CODE: pl.String}))
        return conform_codes(pl.read_parquet(path))

    def splits(self) -> pl.DataFrame:
        path = self.root / s.SPLITS_FILE
        if not path.exists():
            ids = self.scan().select(pl.col(s.SUBJECT_ID).unique().sort()).collect().get_column(s.SUBJECT_ID)
            return assign_splits(ids.to_numpy())
        return pl.read_parquet(path)

    def source_ids(self) -> pl.DataFrame | None:
        path = self.root / s.SOURCE_IDS_FILE
        return pl.read_parquet(path) if path.exists() else None

    def subject_ids(self) -> list[int]:
        return self.splits().get_column(s.SUBJECT_ID).sort().to_list()

    def patient(self, subject_id: int) -> s.Patient:
        """One patient's events; raises KeyError if the subject is not in the dataset."""
        frame = self.scan().filter(pl.col(s.SUBJECT_ID) == subject_id).collect()
        if frame.is_empty():
            raise SubjectNotFoundError(f"subject {subject_id} is not in dataset {self.name}")
        return next(iter(patients_from_frame(frame)))

    def iter_patients(self, subject_ids: Iterable[int] | None = None) -> Iterator[s.Patient]:
        """Patients shard by shard, in subject order within each shard."""
        wanted = None if subject_ids is None else pl.Series(list(subject_ids), dtype=pl.Int64)
        for shard in self.shards:
            frame = pl.scan_parquet(shard, missing_columns="insert")
            if wanted is not None:
                frame = frame.filter(pl.col(s.SUBJECT_ID).is_in(wanted.implode()))
            yield from patients_from_frame(frame.collect())


def patients_from_frame(frame: pl.DataFrame, block_events: int = 65_536) -> Iterator[s.Patient]:
    """Group a subject-sorted event frame into Patient objects, about ``block_events`` events at a time."""
    if frame.is_empty():
        return
    for col, dtype in _POLARS_DATA_SCHEMA.items():
        if col not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=dtype).alias(col))
    ids = frame.get_column(s.SUBJECT_ID).to_numpy()
    bounds = np.flatnonzero(np.diff(ids)) + 1
    starts = np.concatenate([[0], bounds]).tolist()
    ends = np.concatenate([bounds, [len(ids)]])
    names = [c for c in _POLARS_DATA_SCHEMA if c != s.SUBJECT_ID]
    first = 0
    while first < len(starts):  # Python objects for one block of subjects at a time, not the whole shard
        last = min(int(np.searchsorted(ends, starts[first] + block_events)), len(starts) - 1)
        offset = starts[first]
        block = frame.slice(offset, int(ends[last]) - offset)
        rows = list(zip(*(block.get_column(c).to_list() for c in names), strict=True))
        for k in range(first, last + 1):
            events = [s.Event(*row) for row in rows[starts[k] - offset : int(ends[k]) - offset]]
            yield s.Patient(int(ids[starts[k]]), events)
        first = last + 1


def _shard_key(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 60, path.stem)


Layout = Literal["flat", "split"]


def export_meds(
    dataset: MedsDataset, out: Path, *, layout: Layout = "split", overwrite: bool = False
) -> dict[str, int]:
    """Copy a dataset to ``out`` (atomically): ``split`` puts each split's subjects under
    ``data/{train,tuning,held_out}/{n}.parquet`` (what meds-tab reads), ``flat`` keeps ``data/{n}.parquet``.
    The metadata folder is copied as is. Returns the shards written per split (or ``{"all": n}``)."""
    splits = dataset.splits().select(s.SUBJECT_ID, s.SPLIT)
    written: dict[str, int] = {}
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        for shard in dataset.shards:
            frame = pl.read_parquet(shard)
            parts = frame.join(splits, on=s.SUBJECT_ID, how="left") if layout == "split" else None
            groups = (
                [("all", frame)]
                if parts is None
                else [
                    (str(name), part.drop(s.SPLIT))
                    for (name,), part in parts.with_columns(pl.col(s.SPLIT).fill_null("unassigned"))
                    .partition_by(s.SPLIT, as_dict=True, maintain_order=True)
                    .items()
                ]
            )
            for name, part in groups:
                folder = tmp / s.DATA_DIR if name == "all" else tmp / s.DATA_DIR / name
                folder.mkdir(parents=True, exist_ok=True)
                n = written.get(name, 0)
                pq.write_table(part.to_arrow(), folder / f"{n}.parquet")
                written[name] = n + 1
        shutil.copytree(dataset.root / "metadata", tmp / "metadata")
    return written
