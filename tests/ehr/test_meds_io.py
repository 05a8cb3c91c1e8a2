"""MEDS folder writing and reading, atomic output, and stable hash splits."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset, MedsError, conform_events, write_dataset
from ehrembed.ehr.splits import assign_splits


def _events() -> pl.DataFrame:
    return pl.DataFrame(
        {
            s.SUBJECT_ID: [2, 1, 1, 2, 3],
            s.TIME: [dt.datetime(2020, 1, 2), dt.datetime(2020, 1, 3), None, None, dt.datetime(2019, 1, 1)],
            s.CODE: ["B", "A", "Gender/F", "Gender/M", "C"],
            s.NUMERIC_VALUE: [1.5, None, None, None, None],
        }
    )


def test_round_trip_sorted_and_sharded(tmp_path: Path) -> None:
    write_dataset(
        tmp_path / "d",
        _events(),
        pl.DataFrame({s.CODE: ["A"], s.DESCRIPTION: ["Alpha"]}),
        dataset_name="toy",
        etl_name="test",
        shard_subjects=2,
    )
    ds = MedsDataset.open(tmp_path / "d")
    assert len(ds.shards) == 2
    patients = list(ds.iter_patients())
    assert [p.subject_id for p in patients] == [1, 2, 3]
    assert [e.code for e in patients[0].events] == ["Gender/F", "A"], "static events sort first"
    assert patients[1].events[1].numeric_value == pytest.approx(1.5)
    assert set(ds.codes().get_column(s.CODE)) == {"A", "B", "C", "Gender/F", "Gender/M"}
    assert ds.patient(3).events[0].code == "C"
    with pytest.raises(KeyError, match="subject 99"):
        ds.patient(99)
    assert ds.name == "toy" and ds.metadata["meds_version"]


def test_null_code_names_the_row() -> None:
    frame = _events().with_columns(pl.when(pl.col(s.CODE) == "C").then(None).otherwise(pl.col(s.CODE)).alias(s.CODE))
    with pytest.raises(MedsError, match="row 4 has no code"):
        conform_events(frame, source="upload.parquet")


def test_aware_times_become_utc() -> None:
    frame = pl.DataFrame(
        {
            s.SUBJECT_ID: [1],
            s.TIME: [dt.datetime(2020, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=5)))],
            s.CODE: ["A"],
        }
    )
    assert conform_events(frame).item(0, s.TIME) == dt.datetime(2020, 1, 1, 7)


def test_open_rejects_non_meds_folders(tmp_path: Path) -> None:
    with pytest.raises(MedsError, match="no such dataset folder"):
        MedsDataset.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsError, match=r"no data/\*\*/\*\.parquet"):
        MedsDataset.open(tmp_path / "empty")


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    bad = _events().drop(s.TIME)
    with pytest.raises(MedsError, match="time"):
        write_dataset(tmp_path / "d", bad, pl.DataFrame({s.CODE: []}), dataset_name="t", etl_name="t")
    assert list(tmp_path.iterdir()) == []


def test_splits_are_stable_and_proportional() -> None:
    ids = list(range(1, 20_001))
    first = assign_splits(ids)
    counts = dict(first.group_by(s.SPLIT).len().iter_rows())
    assert abs(counts["train"] / 20_000 - 0.70) < 0.02 and abs(counts["held_out"] / 20_000 - 0.15) < 0.02
    more = assign_splits([*ids, *range(50_000, 60_000)])
    assert more.head(20_000).equals(first), "adding subjects never moves existing ones"
    with pytest.raises(ValueError, match="summing to 1"):
        assign_splits(ids, fractions=(0.5, 0.2, 0.2))


@pytest.mark.parametrize("block_events", [1, 2, 3, 4, 1000])
def test_patients_are_the_same_whatever_the_block_size(tmp_path: Path, block_events: int) -> None:
    """Shards become Python objects a block of subjects at a time; the patients must not depend on the block."""
    from ehrembed.ehr.meds import patients_from_frame

    write_dataset(tmp_path / "d", _events(), pl.DataFrame({s.CODE: ["A"]}), dataset_name="toy", etl_name="test")
    frame = pl.concat([pl.read_parquet(shard) for shard in MedsDataset.open(tmp_path / "d").shards])
    whole = list(patients_from_frame(frame, block_events=10**9))
    assert [p.subject_id for p in whole] == [1, 2, 3] and sum(len(p.events) for p in whole) == 5
    assert list(patients_from_frame(frame, block_events=block_events)) == whole
