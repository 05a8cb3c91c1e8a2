"""MEDS label files in and out, and meds-evaluation prediction files out (../shared/DESIGN.md section 6).

Labels (the MEDS label schema, checked with the ``meds`` package's ``LabelSchema``)::

    LABELS/TASK_NAME/*.parquet      subject_id int64, prediction_time timestamp[us], boolean_value bool
                                    (no other column; a task name may contain "/": nested folders)

Predictions (what ``meds-evaluation`` scores): the label columns plus ``predicted_boolean_probability``
(float32) and ``predicted_boolean_value`` (left null: thresholds are the reader's), one file per benchmark cell::

    PREDICTIONS/TASK/ENCODER/HEAD/k{K}_r{REPLICATE}.parquet

A labels folder can stand in for a task anywhere tasks are read (``--tasks LABELS/TASK``): its
prediction times and labels are used as given.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ehrembed import schema as s
from ehrembed.fsutil import atomic_write_bytes
from ehrembed.predict.tasks import TaskError

PREDICTION_TIME = "prediction_time"
BOOLEAN_VALUE = "boolean_value"
PROBABILITY = "predicted_boolean_probability"
PREDICTED_VALUE = "predicted_boolean_value"
LABEL_FILE = "labels.parquet"
_LABEL_SCHEMA = pa.schema(
    [
        pa.field(s.SUBJECT_ID, pa.int64(), nullable=False),
        pa.field(PREDICTION_TIME, pa.timestamp("us"), nullable=False),
        pa.field(BOOLEAN_VALUE, pa.bool_(), nullable=False),
    ]
)


def _validate(table: pa.Table, where: str) -> pa.Table:
    """The table checked (and cast) by the ``meds`` package's label schema; errors name the file and column."""
    from meds import LabelSchema

    try:
        return LabelSchema.align(table)
    except Exception as exc:
        raise TaskError(f"{where}: not a MEDS label file ({exc})") from None


def labels_table(frame: pl.DataFrame) -> pa.Table:
    """subject_id, prediction_time, value|boolean_value → a MEDS label table (boolean labels)."""
    value = BOOLEAN_VALUE if BOOLEAN_VALUE in frame.columns else "value"
    out = frame.select(
        pl.col(s.SUBJECT_ID).cast(pl.Int64),
        pl.col(PREDICTION_TIME).cast(pl.Datetime("us")),
        pl.col(value).cast(pl.Boolean).alias(BOOLEAN_VALUE),
    ).sort(s.SUBJECT_ID, PREDICTION_TIME)
    return _validate(out.to_arrow().cast(_LABEL_SCHEMA), "labels")


def _write_parquet(table: pa.Table, path: Path) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def write_labels(labelsets: Iterable[tuple[str, pl.DataFrame]], root: Path) -> dict[str, Path]:
    """Write each (task name, label frame) as ``root/TASK/labels.parquet`` (atomically); the paths written."""
    written: dict[str, Path] = {}
    for name, frame in labelsets:
        target = Path(root) / name / LABEL_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_parquet(labels_table(frame), target)
        written[name] = target
    return written


def label_files(path: Path) -> list[Path]:
    """The parquet files of one task's labels folder (or the file itself)."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise TaskError(f"{path}: no label files (*.parquet) found")
    return files


def read_labels(path: Path) -> pl.DataFrame:
    """One task's labels (subject_id, prediction_time, value), each file checked against the MEDS label schema."""
    frames = []
    for file in label_files(path):
        table = _validate(pq.read_table(file), str(file))
        if BOOLEAN_VALUE not in table.column_names:
            raise TaskError(f"{file}: column {BOOLEAN_VALUE} is missing (ehrembed's tasks are binary)")
        for column in (s.SUBJECT_ID, PREDICTION_TIME, BOOLEAN_VALUE):
            if table.column(column).null_count:
                raise TaskError(f"{file}: column {column} has {table.column(column).null_count} null value(s)")
        frame = pl.DataFrame(pl.from_arrow(table.select([s.SUBJECT_ID, PREDICTION_TIME, BOOLEAN_VALUE])))
        frames.append(frame.cast({PREDICTION_TIME: pl.Datetime("us")}).rename({BOOLEAN_VALUE: "value"}))
    return pl.concat(frames).sort(s.SUBJECT_ID, PREDICTION_TIME)


def labels_of(frame: pl.DataFrame, subject_ids: Sequence[int] | None = None) -> list[s.Label]:
    """The frame's rows as :class:`~ehrembed.schema.Label` (optionally only some subjects)."""
    if subject_ids is not None:
        frame = frame.filter(pl.col(s.SUBJECT_ID).is_in(list(subject_ids)))
    return [
        s.Label(int(i), t if isinstance(t, dt.datetime) else dt.datetime.fromisoformat(str(t)), bool(v))
        for i, t, v in frame.select(s.SUBJECT_ID, PREDICTION_TIME, "value").iter_rows()
    ]


def is_labels_folder(path: Path) -> bool:
    """A folder (or parquet file) whose parquet files look like MEDS labels (a ``prediction_time`` column)."""
    path = Path(path)
    try:
        files = label_files(path) if path.exists() else []
    except TaskError:
        return False
    return bool(files) and PREDICTION_TIME in pq.read_schema(files[0]).names


def task_folders(root: Path) -> list[Path]:
    """The task folders under a labels root: every folder that holds parquet files directly."""
    root = Path(root)
    return sorted({f.parent for f in root.rglob("*.parquet")})


def predictions_table(labels: pl.DataFrame, probabilities: np.ndarray) -> pa.Table:
    """Labels (subject_id, prediction_time, value) beside probabilities, in meds-evaluation's columns.

    ``predicted_boolean_value`` is written empty (null): a benchmark head gives probabilities, and which
    threshold makes them decisions is the reader's choice (meds-evaluation then skips threshold metrics).
    """
    if len(labels) != len(probabilities):
        raise ValueError(f"{len(labels)} labels but {len(probabilities)} probabilities")
    order = labels.with_row_index("__row").sort(s.SUBJECT_ID, PREDICTION_TIME).get_column("__row").to_numpy()
    table = labels_table(labels)  # sorted by subject and time: the probabilities follow the same order
    p = np.asarray(probabilities, dtype=np.float32)[order]
    table = table.append_column(pa.field(PROBABILITY, pa.float32(), nullable=False), pa.array(p))
    return table.append_column(pa.field(PREDICTED_VALUE, pa.bool_()), pa.nulls(len(p), pa.bool_()))


def write_predictions(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_parquet(table, path)
    return path


def cell_path(root: Path, task: str, encoder: str, head: str, k: str, replicate: int) -> Path:
    """Where one benchmark cell's held-out predictions go (names made safe for a file system)."""

    def safe(part: str) -> str:
        return part.replace("/", "_").replace("\\", "_")

    return Path(root) / safe(task) / safe(encoder) / safe(head) / f"k{safe(k)}_r{replicate}.parquet"
