"""In-place patient upserts: add, replace wholesale, and survive a crash at any step."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from ehrembed import schema as s
from ehrembed.ehr import upsert as up
from ehrembed.ehr.meds import MedsDataset, MedsError
from ehrembed.ehr.synth import SynthConfig, generate_cohort
from ehrembed.fsutil import sha256_file


@pytest.fixture
def dataset(tmp_path: Path) -> MedsDataset:
    generate_cohort(SynthConfig(n_subjects=30, seed=1, shard_subjects=10), tmp_path / "meds")
    return MedsDataset.open(tmp_path / "meds")


def _events(subject: int, code: str) -> pl.DataFrame:
    return up.events_frame(
        [
            {"subject_id": subject, "time": None, "code": "Gender/M"},
            {"subject_id": subject, "time": dt.datetime(1970, 1, 1), "code": s.BIRTH_CODE},
            {"subject_id": subject, "time": dt.datetime(2021, 1, 1), "code": code},
        ]
    )


def _consistent(ds: MedsDataset) -> pl.DataFrame:
    per_shard = [
        pl.read_parquet(p, columns=[s.SUBJECT_ID]).unique().with_columns(pl.lit(p.name).alias("shard"))
        for p in ds.shards
    ]
    owners = pl.concat(per_shard).group_by(s.SUBJECT_ID).agg(pl.len().alias("shards"))
    assert owners.get_column("shards").max() == 1  # every subject in exactly one shard
    return owners


def test_add_then_replace(dataset: MedsDataset) -> None:
    existing = dataset.subject_ids()[4]
    report = up.upsert_patients(
        dataset, pl.concat([_events(10_001, "ICD10CM/I10"), _events(existing, "ICD10CM/E11.9")])
    )
    assert report.added == [10_001] and report.replaced == [existing]
    ds = MedsDataset.open(dataset.root)
    _consistent(ds)
    assert [e.code for e in ds.patient(existing).events][-1] == "ICD10CM/E11.9"
    assert len(ds.patient(existing).events) == 3  # the old history is gone: replaced wholesale
    assert 10_001 in ds.subject_ids()
    assert ds.splits().filter(pl.col(s.SUBJECT_ID) == 10_001).height == 1
    assert "ICD10CM/I10" in ds.codes().get_column(s.CODE).to_list()


def test_bad_input_writes_nothing(dataset: MedsDataset) -> None:
    before = sha256_file(dataset.root)
    with pytest.raises(MedsError):
        up.upsert_patients(dataset, pl.DataFrame({s.SUBJECT_ID: [1], s.TIME: [None]}))
    assert sha256_file(dataset.root) == before


def test_crash_before_the_journal_keeps_the_old_dataset(dataset: MedsDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    before = sha256_file(dataset.root / "data")
    target = dataset.subject_ids()[0]

    def boom(*_a: object, **_k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(up, "atomic_write_text", boom)
    with pytest.raises(OSError):
        up.upsert_patients(dataset, _events(target, "ICD10CM/I10"))
    monkeypatch.undo()
    ds = MedsDataset.open(dataset.root)
    up.recover(ds.root)  # drops the stray temp files
    assert sha256_file(ds.root / "data") == before
    assert not list(ds.root.rglob("*.tmp"))


def test_crash_during_the_renames_is_finished_on_open(dataset: MedsDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    target = dataset.subject_ids()[0]
    real_replace = up.os.replace
    calls = {"n": 0}

    def crash_after_one(src: object, dst: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("power cut")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(up.os, "replace", crash_after_one)
    with pytest.raises(OSError, match="power cut"):
        up.upsert_patients(dataset, _events(target, "ICD10CM/I48.91"))
    monkeypatch.undo()
    assert (dataset.root / up.JOURNAL).exists()
    ds = MedsDataset.open(dataset.root)  # replays the journal
    assert not (ds.root / up.JOURNAL).exists()
    _consistent(ds)
    assert [e.code for e in ds.patient(target).events][-1] == "ICD10CM/I48.91"


def test_out_of_range_values_are_refused_before_anything_is_written(dataset: MedsDataset) -> None:
    before = sha256_file(dataset.root)
    far = pl.DataFrame(
        {s.SUBJECT_ID: [1], s.TIME: [dt.datetime(9999, 12, 31)], s.CODE: ["X/1"]},
        schema_overrides={s.TIME: pl.Datetime("us")},
    ).with_columns(pl.col(s.TIME).dt.offset_by("1d"))  # year 10000: polars holds it, Python cannot
    with pytest.raises(MedsError, match=r"row 0 time \+10000-01-01.* is outside 1800-01-01"):
        up.upsert_patients(dataset, far)
    with pytest.raises(MedsError, match=r"numeric_value .* not a finite float32"):
        up.upsert_patients(dataset, _events(5, "X/1").with_columns(pl.lit(1e39).alias(s.NUMERIC_VALUE)))
    with pytest.raises(MedsError, match="subject_id -3 is negative"):
        up.upsert_patients(dataset, _events(-3, "X/1"))
    assert sha256_file(dataset.root) == before


def test_many_upserts_are_compacted_into_few_shards(dataset: MedsDataset) -> None:
    start = len(dataset.shards)
    for i in range(up.COMPACT_AT + 4):
        up.upsert_patients(dataset, _events(20_000 + i, "ICD10CM/I10"))
    ds = MedsDataset.open(dataset.root)
    assert len(ds.shards) <= up.COMPACT_AT < start + up.COMPACT_AT + 4
    owners = _consistent(ds)
    assert owners.height == 30 + up.COMPACT_AT + 4
    assert [e.code for e in ds.patient(20_003).events][-1] == "ICD10CM/I10"


def test_a_crash_during_compaction_is_finished_on_open(dataset: MedsDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        up.upsert_patients(dataset, _events(30_000 + i, "ICD10CM/I10"))
    before = _consistent(MedsDataset.open(dataset.root)).sort(s.SUBJECT_ID)
    n = len(dataset.shards)

    def boom(*_a: object, **_k: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(up.os, "unlink", boom, raising=False)
    monkeypatch.setattr(Path, "unlink", boom)  # the renames are done, the deletes of the merged shards are not
    with pytest.raises(OSError, match="power cut"):
        up.compact_shards(dataset, max_shards=2)
    monkeypatch.undo()
    assert (dataset.root / up.JOURNAL).exists()
    ds = MedsDataset.open(dataset.root)  # replays the journal: the merged shard stays, the small ones go
    assert not (ds.root / up.JOURNAL).exists()
    assert len(ds.shards) < n
    assert _consistent(ds).sort(s.SUBJECT_ID).equals(before)


def test_stray_temp_files_are_removed_on_open(dataset: MedsDataset) -> None:
    (dataset.root / "data" / "99.parquet.tmp").write_bytes(b"")
    (dataset.root / "metadata" / "codes.parquet.tmp").write_bytes(b"")
    ds = MedsDataset.open(dataset.root)
    assert not list(ds.root.rglob("*.tmp"))


def _gate_closed_soon(root: Path) -> None:
    deadline = time.monotonic() + 30
    while not up._gate_closed(root / up.GATE):
        assert time.monotonic() < deadline, "the writer never reached the gate"
        time.sleep(0.01)


def test_a_process_shares_one_read_lock_and_an_upsert_waiting_at_the_gate_goes_first(tmp_path: Path) -> None:
    """Readers of one process share the folder's lock; a writer (flock treats another descriptor of this
    process like another process) waits for them, and a reader arriving after it waits for the writer."""
    shared = up.SharedReadLock(tmp_path)
    order: list[str] = []
    first_in, first_out = threading.Event(), threading.Event()

    def reader(name: str, entered: threading.Event | None = None, leave: threading.Event | None = None) -> None:
        with shared.hold():
            order.append(f"{name} in")
            if entered is not None and leave is not None:
                entered.set()
                assert leave.wait(30)
            order.append(f"{name} out")

    def writer() -> None:
        with up.write_lock(tmp_path):
            order.append("writer")

    first = threading.Thread(target=reader, args=("a", first_in, first_out))
    first.start()
    assert first_in.wait(30)
    reader("b")  # joins the reader in progress at once
    write = threading.Thread(target=writer)
    write.start()
    _gate_closed_soon(tmp_path)
    late = threading.Thread(target=reader, args=("c",))
    late.start()
    time.sleep(0.2)
    assert order == ["a in", "b in", "b out"]  # the writer waits for a; c waits behind the writer
    first_out.set()
    for thread in (first, write, late):
        thread.join(30)
    assert order == ["a in", "b in", "b out", "a out", "writer", "c in", "c out"]
    with up.write_lock(tmp_path):  # the last reader let go of the file lock
        pass
