"""bench/late_fusion.py: the count head's and an embedding head's ranks averaged per cell, scored like any cell."""

from __future__ import annotations

import datetime as dt
import importlib
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture()
def late_fusion() -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("late_fusion")
    finally:
        sys.path.remove(str(BENCH))


def _cell(root: Path, encoder: str, labels: list[bool], probabilities: list[float]) -> None:
    path = root / "task_a" / encoder / "logistic" / "k1_r0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "subject_id": list(range(len(labels))),
            "prediction_time": [dt.datetime(2020, 1, 1)] * len(labels),
            "boolean_value": labels,
            "predicted_boolean_probability": probabilities,
        }
    ).write_parquet(path)


def test_ranks_are_averaged_per_cell(late_fusion: Any, tmp_path: Path) -> None:
    labels = [False, True, False, True, False, True]
    _cell(tmp_path, "count", labels, [0.1, 0.9, 0.6, 0.4, 0.2, 0.8])  # AUROC 8/9: 0.4 sits below 0.6
    _cell(tmp_path, "student", labels, [0.3, 0.5, 0.1, 0.9, 0.7, 0.2])  # AUROC 6/9
    # count ranks 1 6 4 3 2 5 + student ranks 3 4 1 6 5 2 = 4 10 5 9 7 7: positives 10, 9, 7 against 4, 5, 7
    table = late_fusion.macro_table(late_fusion.cell_scores(tmp_path, ["student"]))
    auroc = {row["encoder"]: row["auroc"] for row in table.to_dicts()}
    assert auroc == {
        "count": pytest.approx(8 / 9, abs=1e-3),
        "student": pytest.approx(6 / 9, abs=1e-3),
        "count|student": pytest.approx(8.5 / 9, abs=1e-3),  # the tie at 7 counts a half
    }
    assert set(table["tasks"].to_list()) == {1}


def test_an_empty_folder_is_an_error(late_fusion: Any, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no predictions"):
        late_fusion.cell_scores(tmp_path, ["student"])
