"""The ecosystem's formats: ACES / MEDS-DEV task configs in (labelled by es-aces), MEDS label files in and
out, and benchmark predictions out, scored by meds-evaluation."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ehrembed.cli import app
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.synth import SynthConfig, generate_cohort
from ehrembed.predict.aces import PREDICATES_DIR, meds_dev_task
from ehrembed.predict.benchmark import BenchmarkConfig
from ehrembed.predict.job import BenchmarkJobConfig, benchmark_dataset, label_tasks
from ehrembed.predict.labelers import label_dataset
from ehrembed.predict.meds_labels import cell_path, read_labels, write_labels
from ehrembed.predict.tasks import TaskError, resolve_tasks

runner = CliRunner()
READMISSION = "meds-dev:readmission/general_hospital/30d"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> MedsDataset:
    out = tmp_path_factory.mktemp("synth") / "meds"
    generate_cohort(SynthConfig(n_subjects=600, seed=4, shard_subjects=300), out)  # two shards
    return MedsDataset.open(out)


def test_meds_dev_task_needs_its_dataset_predicates_and_names_them(synth: MedsDataset) -> None:
    (task,) = resolve_tasks([READMISSION])  # shown and stored without them; labelled only with them
    with pytest.raises(TaskError, match="hospital_admission, hospital_discharge"):
        label_dataset(task, synth)
    with pytest.raises(TaskError, match=r"predicates file nope\.yaml not found"):
        resolve_tasks([READMISSION], predicates="nope.yaml")
    listed = runner.invoke(app, ["tasks", "list", "--meds-dev", "--json"])
    assert listed.exit_code == 0 and READMISSION in listed.stdout
    with pytest.raises(TaskError, match="no MEDS-DEV task 'nope'"):
        resolve_tasks(["meds-dev:nope"])


def test_aces_labels_are_what_aces_cli_gives(synth: MedsDataset, tmp_path: Path) -> None:
    """Our run of an ACES config equals ACES's own command line, shard by shard."""
    (task,) = resolve_tasks([READMISSION], predicates="omop")
    assert task.name == "readmission-general_hospital-30d" and task.outcome.rule == "aces"
    ours = label_dataset(task, synth)
    assert len(ours) > 100 and 0 < ours.n_positive < len(ours)
    cli = shutil.which("aces-cli", path=str(Path(sys.executable).parent))
    assert cli is not None
    frames = []
    for shard in synth.shards:
        out = tmp_path / f"{shard.stem}.parquet"
        subprocess.run(
            [
                cli,
                f"config_path={meds_dev_task(READMISSION)}",
                f"predicates_path={PREDICATES_DIR / 'omop.yaml'}",
                "data.standard=meds",
                f"data.path={shard}",
                f"output_filepath={out}",
                f"log_dir={tmp_path / 'logs'}",
            ],
            check=True,
            capture_output=True,
        )
        frames.append(pl.read_parquet(out).select("subject_id", "prediction_time", "boolean_value"))
    theirs = pl.concat(frames).sort("subject_id", "prediction_time")
    mine = ours.frame().rename({"value": "boolean_value"}).sort("subject_id", "prediction_time")
    assert mine.equals(theirs.cast(mine.schema))  # type: ignore[arg-type]


def test_meds_dev_readmission_agrees_with_our_readmission_task(synth: MedsDataset) -> None:
    """Two definitions of 30-day readmission (ACES at the discharge time, ours at 23:59 that day)."""
    aces, ours = (
        ls.frame().with_columns(day=pl.col("prediction_time").dt.date())
        for ls in label_tasks(synth, resolve_tasks([READMISSION, "readmission_30d"], predicates="omop"))[0]
    )
    shared = aces.join(ours, on=["subject_id", "day"], suffix="_ours")
    assert shared.height >= 0.95 * min(aces.height, ours.height)
    agree = (shared.get_column("value") == shared.get_column("value_ours")).mean()
    assert agree is not None and float(agree) >= 0.98


def test_labels_are_written_in_the_meds_schema_and_read_back_as_a_task(synth: MedsDataset, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["tasks", "label", str(synth.root), "--out", str(tmp_path / "labels"), "--tasks", "new_hypertension"]
    )
    assert result.exit_code == 0, result.output
    path = tmp_path / "labels" / "new_hypertension" / "labels.parquet"
    schema = pq.read_schema(path)
    assert schema.names == ["subject_id", "prediction_time", "boolean_value"]
    assert schema.field("prediction_time").type == pa.timestamp("us")
    (task,) = resolve_tasks([tmp_path / "labels"])  # a labels root: one task per folder
    assert task.name == "new_hypertension" and task.outcome.rule == "labels"
    again = label_dataset(task, synth)
    (original,) = label_tasks(synth, resolve_tasks(["new_hypertension"]))[0]
    assert again.frame().equals(original.frame().sort("subject_id", "prediction_time"))
    assert task.question == "will the patient have: new hypertension"


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pl.DataFrame({"subject_id": [1], "prediction_time": [dt.datetime(2020, 1, 1)]}), "boolean_value"),
        (pl.DataFrame({"subject_id": [1], "prediction_time": [None], "boolean_value": [True]}), "prediction_time"),
        (
            pl.DataFrame({"subject_id": [1], "prediction_time": ["yesterday"], "boolean_value": [True]}),
            "prediction_time",
        ),
        (pl.DataFrame({"subject_id": [1], "when": [1], "boolean_value": [True]}), "prediction_time"),
    ],
)
def test_bad_label_files_name_the_file_and_column(tmp_path: Path, frame: pl.DataFrame, message: str) -> None:
    path = tmp_path / "task" / "part-0.parquet"
    path.parent.mkdir()
    frame.write_parquet(path)
    with pytest.raises(TaskError, match=rf"part-0\.parquet.*{message}|{message}.*part-0\.parquet"):
        read_labels(path.parent)


def test_labels_round_trip(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {"subject_id": [2, 1], "prediction_time": [dt.datetime(2020, 1, 2), dt.datetime(2020, 1, 1)], "value": [1, 0]}
    ).with_columns(pl.col("prediction_time").cast(pl.Datetime("us")), pl.col("value").cast(pl.Boolean))
    (path,) = write_labels([("a/b", frame)], tmp_path).values()
    assert path == tmp_path / "a" / "b" / "labels.parquet"  # a task name with "/" is a nested folder
    assert read_labels(path.parent).equals(frame.sort("subject_id"))


def test_benchmark_predictions_score_the_same_with_meds_evaluation(synth: MedsDataset, tmp_path: Path) -> None:
    from meds_evaluation.evaluate import evaluate_binary_classification

    config = BenchmarkJobConfig(
        encoders=("count",),
        benchmark=BenchmarkConfig(ks=(8, "all"), replicates=2, heads=("logistic",), n_bootstrap=0),
        predictions=tmp_path / "predictions",
    )
    result = benchmark_dataset(synth, resolve_tasks(["new_hypertension"]), tmp_path / "report", config)
    rows = result.result.results.filter(pl.col("head") == "logistic")
    assert rows.height >= 3  # k=8 twice; k=all once (its replicates would be the same fit)
    for row in rows.iter_rows(named=True):
        path = cell_path(tmp_path / "predictions", row["task"], "count", "logistic", row["k"], row["replicate"])
        predictions = pl.read_parquet(path)
        assert predictions.columns == [
            "subject_id",
            "prediction_time",
            "boolean_value",
            "predicted_boolean_probability",
            "predicted_boolean_value",
        ]
        scored = evaluate_binary_classification(predictions)["samples_equally_weighted"]
        # the files hold float32 probabilities (the schema's type): rounding may tie a few pairs
        assert np.isclose(scored["roc_auc_score"], row["auroc"], atol=1e-4), (row, scored)
