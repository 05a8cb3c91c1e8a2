"""``export meds --layout split``: each split's subjects under data/{split}/, read back by our own reader."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from ehrembed import schema as s
from ehrembed.cli import app
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.synth import SynthConfig, generate_cohort

runner = CliRunner()


def test_split_layout_holds_each_split_and_reads_back_the_same(tmp_path: Path) -> None:
    generate_cohort(SynthConfig(n_subjects=240, seed=2, shard_subjects=100), tmp_path / "flat")
    flat = MedsDataset.open(tmp_path / "flat")
    result = runner.invoke(app, ["export", "meds", str(flat.root), "--out", str(tmp_path / "split"), "--json"])
    assert result.exit_code == 0, result.output
    split = MedsDataset.open(tmp_path / "split")
    splits = dict(flat.splits().select(s.SUBJECT_ID, s.SPLIT).iter_rows())
    for shard in split.shards:  # data/{split}/{n}.parquet, every subject in its own split's folder
        folder = shard.parent.name
        assert folder in {"train", "tuning", "held_out"}
        assert {splits[i] for i in pl.read_parquet(shard).get_column(s.SUBJECT_ID).unique()} == {folder}
    assert split.subject_ids() == flat.subject_ids()
    assert split.scan().select(pl.len()).collect().item() == flat.scan().select(pl.len()).collect().item()
    for sid in flat.subject_ids()[::37]:
        assert split.patient(sid) == flat.patient(sid)
    again = runner.invoke(app, ["export", "meds", str(flat.root), "--out", str(tmp_path / "split")])
    assert again.exit_code == 2 and "exists" in again.output  # nothing already there is replaced unasked
