"""Count baseline features: bins, ontology expansion, pruning — and only the past is counted."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset, write_dataset
from ehrembed.encoders.embeddings import PREDICTION_TIME
from ehrembed.predict.features import count_features
from ehrembed.predict.ontology import Ontology

T = dt.datetime(2020, 6, 1, 23, 59)


def _dataset(tmp_path: Path, rows: list[tuple[int, dt.datetime | None, str]]) -> MedsDataset:
    events = pl.DataFrame(
        {s.SUBJECT_ID: [r[0] for r in rows], s.TIME: [r[1] for r in rows], s.CODE: [r[2] for r in rows]},
        schema={s.SUBJECT_ID: pl.Int64, s.TIME: pl.Datetime("us"), s.CODE: pl.String},
    )
    codes = pl.DataFrame({s.CODE: ["ICD10CM/E11.9", "ICD10CM/E11.65"], s.DESCRIPTION: ["t2dm", "t2dm hyperglycemia"]})
    return MedsDataset.open(write_dataset(tmp_path / "meds", events, codes, dataset_name="t", etl_name="test"))


def _keys(*pairs: tuple[int, dt.datetime]) -> pl.DataFrame:
    return pl.DataFrame(
        {s.SUBJECT_ID: [p[0] for p in pairs], PREDICTION_TIME: [p[1] for p in pairs]},
        schema={s.SUBJECT_ID: pl.Int64, PREDICTION_TIME: pl.Datetime("us")},
    )


def test_counts_by_bin_with_icd_stems_and_age(tmp_path: Path) -> None:
    days = dt.timedelta(days=1)
    rows = [(1, None, "Gender/F"), (1, dt.datetime(1970, 6, 1), s.BIRTH_CODE)]
    rows += [
        (1, T - 0.5 * days, "ICD10CM/E11.9"),
        (1, T - 3 * days, "ICD10CM/E11.9"),
        (1, T - 400 * days, "ICD10CM/E11.65"),
    ]
    rows += [(1, T + 5 * days, "ICD10CM/E11.9")]  # the future: never counted
    rows += [(2, dt.datetime(1980, 1, 1), s.BIRTH_CODE), (2, T - 10 * days, "ICD10CM/E11.9")]
    rows += [(3, T - 2 * days, "ICD10CM/E11.65")]
    ds = _dataset(tmp_path, rows)
    feats = count_features(ds, _keys((1, T), (2, T), (3, T)), ontology=Ontology.from_dataset(ds), min_rows=1)
    dense = np.asarray(feats.matrix.todense())
    col = {name: i for i, name in enumerate(feats.columns or ())}
    assert dense[0, col["ICD10CM/E11.9@<1d"]] == 1
    assert dense[0, col["ICD10CM/E11.9@<7d"]] == 1
    assert dense[0, col["ICD10CM/E11.65@>=365d"]] == 1
    assert dense[0, col["Gender/F@static"]] == 1
    # the ICD stem counts every E11 code; it is kept only where it differs from each single code
    assert dense[:, col["ICD10CM/E11@<7d"]].tolist() == [1, 0, 1]
    assert "ICD10CM/E11@<30d" not in col  # only subject 2's E11.9: a copy of ICD10CM/E11.9@<30d
    assert dense[1, col["ICD10CM/E11.9@<30d"]] == 1
    assert abs(dense[0, col["age_years"]] - 50.0) < 0.01
    assert feats.positions([2, 1, 4], [T, T, T]).tolist() == [1, 0, -1]


def test_pruning_drops_rare_and_duplicate_columns(tmp_path: Path) -> None:
    rows = [(i, T - dt.timedelta(days=2), "ICD10CM/E11.9") for i in range(1, 8)] + [
        (1, T - dt.timedelta(days=2), "X/rare")
    ]
    ds = _dataset(tmp_path, rows)
    keys = _keys(*[(i, T) for i in range(1, 8)])
    feats = count_features(ds, keys, min_rows=5)
    names = set(feats.columns or ())
    assert "X/rare@<7d" not in names
    assert "ICD10CM/E11.9@<7d" in names and "ICD10CM/E11@<7d" not in names  # the ancestor copies the code
    assert "age_years" in names


def test_future_events_never_change_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = [
        (1, T - dt.timedelta(days=float(d)), str(c))
        for d, c in zip(rng.uniform(0, 900, 40), rng.choice(["A/1", "B/2", "C/3"], 40), strict=True)
    ]
    future = [(1, T + dt.timedelta(days=float(d)), "A/1") for d in rng.uniform(0.001, 300, 25)]
    a = count_features(
        _dataset(tmp_path / "a", [*base, (1, T + dt.timedelta(days=1), "B/2")]), _keys((1, T)), min_rows=1
    )
    b = count_features(_dataset(tmp_path / "b", base + future), _keys((1, T)), min_rows=1)
    as_dict = lambda f: {c: v for c, v in zip(f.columns, np.asarray(f.matrix.todense())[0], strict=True) if v}  # noqa: E731
    assert as_dict(a) == as_dict(b)
