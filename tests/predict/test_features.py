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


def _brute_force_counts(rows: list[tuple[int, dt.datetime | None, str]], keys: pl.DataFrame) -> dict:
    """Every event paired with every key: the definition the streaming counts must equal (no ontology)."""
    edges = [1.0, 7.0, 30.0, 365.0]
    names = ["<1d", "<7d", "<30d", "<365d", ">=365d"]
    out: dict = {}
    for i, (sid, when) in enumerate(keys.iter_rows()):
        for subject, time, code in rows:
            if subject != sid:
                continue
            if time is None:
                name = "static"
            elif time > when:
                continue
            else:
                days = (when - time).total_seconds() / 86_400
                name = next((n for n, e in zip(names, edges, strict=False) if days < e), ">=365d")
            out[(i, f"{code}@{name}")] = out.get((i, f"{code}@{name}"), 0) + 1
    return out


def test_streaming_counts_equal_the_definition_whatever_the_chunking(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    rows: list[tuple[int, dt.datetime | None, str]] = [(sid, None, "Gender/F") for sid in (1, 2, 3)]
    for sid in (1, 2, 3):
        rows.append((sid, dt.datetime(1960, 1, 1), s.BIRTH_CODE))
        for d in rng.uniform(-200, 800, 60):
            rows.append((sid, T - dt.timedelta(days=float(round(d, 1))), str(rng.choice(["A/1", "B/2", "C/3"]))))
    rows += [(1, T - dt.timedelta(days=1), "A/1")] * 3  # ties at one time, exactly on a bin edge
    keys = _keys(*[(sid, T + dt.timedelta(days=int(k))) for sid in (1, 2, 3) for k in (-300, -30, -1, 0, 90)])
    ds = _dataset(tmp_path, rows)
    expected = _brute_force_counts(rows, keys)
    for chunk_rows in (1, 4, 1000):
        feats = count_features(ds, keys, expand_ontology=False, min_rows=1, chunk_rows=chunk_rows)
        dense = np.asarray(feats.matrix.todense())
        got = {
            (i, name): v
            for i in range(keys.height)
            for name, v in zip(feats.columns or (), dense[i], strict=True)
            if v and name != "age_years"
        }
        assert got == expected, chunk_rows


def test_fused_features_align_rows_and_scale_the_dense_block(tmp_path: Path) -> None:
    from ehrembed.predict.features import FeatureError, Features, fused_features

    rows = [(i, T - dt.timedelta(days=d), "ICD10CM/E11.9") for i in range(1, 7) for d in (2, 40, 400)]
    ds = _dataset(tmp_path, rows)
    keys = _keys(*[(i, T) for i in range(1, 7)])
    counts = count_features(ds, keys, min_rows=1)
    # vectors for subjects 6..2 only (shuffled order), none for subject 1
    vec_keys = _keys(*[(i, T) for i in (6, 5, 4, 3, 2)])
    vectors = np.eye(5, 4, dtype=np.float32)[::-1].copy()
    vectors[:, 3] += 1.0
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    dense = Features("vec", vec_keys, vectors)
    fused = fused_features(counts, dense, "count+vec", components=None)
    assert fused.keys.get_column(s.SUBJECT_ID).to_list() == [2, 3, 4, 5, 6]  # rows both have, in count order
    assert fused.matrix.shape == (5, counts.dim + 4) and not fused.dense
    assert fused.columns is not None and fused.columns[-1] == "vec[3]" and fused.columns[: counts.dim] == counts.columns
    m = fused.matrix.toarray()
    np.testing.assert_array_equal(m[:, : counts.dim], counts.matrix.toarray()[1:])
    block = m[:, counts.dim :]
    aligned = vectors[[4, 3, 2, 1, 0]]  # subject 2's vector is the last row of ``vectors``
    scale = block[aligned != 0] / aligned[aligned != 0]
    assert np.allclose(scale, scale[0]) and scale[0] > 0
    np.testing.assert_array_equal(block[aligned == 0], 0)
    logged = np.log1p(np.maximum(counts.matrix.toarray(), 0))
    assert np.isclose(np.median(np.linalg.norm(block, axis=1)), np.median(np.linalg.norm(logged[1:], axis=1)))
    # principal components, fitted on the given subjects' rows only (no labels involved)
    pcs = fused_features(counts, dense, "count+vec", components=2, fit_subjects=np.array([3, 4, 5]))
    assert pcs.columns is not None and pcs.columns[-2:] == ("vec:pc1", "vec:pc2")
    projected = pcs.matrix.toarray()[:, counts.dim :]
    np.testing.assert_allclose(projected[1:4].mean(axis=0), 0, atol=1e-5)  # centred on subjects 3-5
    assert abs(projected[[0, 4]].mean()) > 1e-3  # the other subjects' rows are not
    try:
        fused_features(counts, counts, "count+count")
    except FeatureError as exc:
        assert "sparse" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("fusing two sparse blocks must fail")
    assert isinstance(fused, Features)


def test_fused_features_ignore_the_future(tmp_path: Path) -> None:
    from ehrembed.predict.features import Features, fused_features

    base = [(i, T - dt.timedelta(days=3 * i), "ICD10CM/E11.9") for i in range(1, 6)]
    keys = _keys(*[(i, T) for i in range(1, 6)])
    dense = Features("vec", keys, np.full((5, 3), 0.5, dtype=np.float32))
    a = fused_features(count_features(_dataset(tmp_path / "a", base), keys, min_rows=1), dense, "f")
    later = base + [(i, T + dt.timedelta(days=1), "ICD10CM/E11.65") for i in range(1, 6)]
    b = fused_features(count_features(_dataset(tmp_path / "b", later), keys, min_rows=1), dense, "f")
    assert a.columns == b.columns
    np.testing.assert_array_equal(a.matrix.toarray(), b.matrix.toarray())


def test_counts_in_a_given_layout(tmp_path: Path) -> None:
    rows = [(i, T - dt.timedelta(days=2), "ICD10CM/E11.9") for i in range(1, 8)]
    ds = _dataset(tmp_path, rows)
    keys = _keys(*[(i, T) for i in range(1, 8)])
    first = count_features(ds, keys)
    assert first.columns is not None
    wanted = ("X/unseen@<7d", *reversed(first.columns))
    again = count_features(ds, keys[2:4], columns=wanted)
    assert again.columns == wanted and again.matrix.shape == (2, len(wanted))
    dense = again.matrix.toarray()
    assert (dense[:, 0] == 0).all()  # a column this dataset cannot have
    np.testing.assert_array_equal(dense[:, 1:], first.matrix.toarray()[2:4, ::-1])
