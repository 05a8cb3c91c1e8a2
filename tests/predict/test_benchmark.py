"""The benchmark job on a synthetic cohort: cells, missing reasons, report files, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ehrembed.cli import app
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.synth import SynthConfig, generate_cohort
from ehrembed.encoders.job import embed_dataset
from ehrembed.errors import InputError
from ehrembed.predict.benchmark import BenchmarkConfig, run_benchmark
from ehrembed.predict.features import count_features, embedding_features
from ehrembed.predict.job import (
    BenchmarkJobConfig,
    benchmark_dataset,
    case_cohort_keys,
    label_keys,
    label_tasks,
    parse_encoder,
    restrict,
    times_by_subject,
)
from ehrembed.predict.report import macro_auroc
from ehrembed.predict.report_summary import report_summary
from ehrembed.predict.tasks import TaskError, parse_task, resolve_tasks
from ehrembed.services.reports import recorded_report, recorded_reports
from ehrembed.store.db import catalog
from tests.helpers import HashEncoder

runner = CliRunner()


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> MedsDataset:
    out = tmp_path_factory.mktemp("synth") / "meds"
    generate_cohort(SynthConfig(n_subjects=500, seed=11), out)
    return MedsDataset.open(out)


def test_label_tasks_skips_what_the_data_cannot_support(synth: MedsDataset) -> None:
    tasks = resolve_tasks(["new_hypertension", "new_celiac", "lab_hyperkalemia", "icu_transfer"])
    labelsets, skipped = label_tasks(synth, tasks)
    assert [ls.task.name for ls in labelsets] == ["new_hypertension", "lab_hyperkalemia"]
    assert "none of its outcome codes" in skipped["new_celiac"]
    assert "icu_transfer" in skipped
    assert all(ls.n_positive > 0 for ls in labelsets)


def test_case_cohort_sample_keeps_positives_and_is_stable(synth: MedsDataset) -> None:
    labelsets, _ = label_tasks(synth, resolve_tasks(["new_hypertension", "new_diabetes"]))
    keys = case_cohort_keys(labelsets, positives=20, background=50, seed=0)
    again = case_cohort_keys(labelsets, positives=20, background=50, seed=0)
    assert keys.equals(again)
    kept = [restrict(ls, keys) for ls in labelsets]
    for before, after in zip(labelsets, kept, strict=True):
        assert min(20, len({lab.subject_id for lab in before.labels if lab.value})) <= after.n_positive
        assert after.skipped["not in the case-cohort sample"] == len(before) - len(after)
    assert label_keys(kept).height <= keys.height


def test_cells_results_and_missing_reasons(synth: MedsDataset, tmp_path: Path) -> None:
    tasks = resolve_tasks(["new_hypertension", "lab_hyperkalemia"])
    labelsets, _ = label_tasks(synth, tasks)
    keys = case_cohort_keys(labelsets, positives=60, background=150, seed=0)
    labelsets = [restrict(ls, keys) for ls in labelsets]
    keys = label_keys(labelsets)
    embed_dataset(synth, HashEncoder(), tmp_path / "hash", as_of=times_by_subject(keys))
    from ehrembed.encoders.embeddings import EmbeddingSet

    features = {
        "count": count_features(synth, keys),
        "hash": embedding_features("hash", EmbeddingSet.load(tmp_path / "hash")),
    }
    config = BenchmarkConfig(ks=(1, 4, 1000, "all"), replicates=2, n_bootstrap=20)
    result = run_benchmark(labelsets, features, synth.splits(), config)
    frame = result.results
    assert set(frame.get_column("encoder").unique()) == {"count", "hash"}
    assert frame.filter(pl.col("encoder") == "count").get_column("head").unique().sort().to_list() == [
        "lightgbm",
        "logistic",
    ]
    assert set(frame.get_column("head").unique()) == {"lightgbm", "logistic", "knn"}
    assert frame.filter(pl.col("k") == "all").get_column("replicate").unique().to_list() == [0]
    assert frame.filter(pl.col("k") == "4").height == 2 * (2 + 3) * 2  # tasks × heads × replicates
    assert frame.get_column("auroc").is_between(0, 1).all()
    assert (frame.get_column("auroc_lo") <= frame.get_column("auroc_hi")).all()
    assert (frame.filter(pl.col("k") == "4").get_column("n_train") == 8).all()
    reasons = result.missing.get_column("reason").to_list()
    assert reasons and all("fewer than k=1000" in r for r in reasons)
    counts = macro_auroc(frame, "lightgbm")
    assert counts.filter(pl.col("k") == "all").get_column("tasks").to_list() == [2, 2]
    hyp = frame.filter((pl.col("task") == "new_hypertension") & (pl.col("k") == "all") & (pl.col("encoder") == "count"))
    assert hyp.get_column("auroc").max() > 0.6  # the planted signal is learnable


def test_benchmark_job_writes_the_report(synth: MedsDataset, tmp_path: Path) -> None:
    bad = parse_task({"name": "new_unicorn", "outcome": {"codes": ["SNOMED/123456789"]}})
    tasks = [*resolve_tasks(["new_hypertension"]), bad]
    config = BenchmarkJobConfig(
        encoders=("count",), benchmark=BenchmarkConfig(ks=(2, "all"), replicates=2, n_bootstrap=10),
        sample_positives=40, sample_background=100,
    )  # fmt: skip
    result = benchmark_dataset(synth, tasks, tmp_path / "report", config)
    names = {p.name for p in (tmp_path / "report").iterdir()}
    assert {
        "report.md",
        "results.parquet",
        "results.csv",
        "missing.csv",
        "tasks.json",
        "auroc_vs_k_new_diagnosis.png",
        "run.json",
    } <= names
    card = json.loads((tmp_path / "report" / "run.json").read_text())
    assert card["config"]["sample_positives"] == 40 and card["dataset"]["sha256"] and "lightgbm" in card["versions"]
    text = result.report.read_text()
    assert "## Macro AUROC by encoder and k" in text and "new_unicorn" in text
    assert result.skipped_tasks.keys() == {"new_unicorn"}
    assert pl.read_parquet(tmp_path / "report" / "results.parquet").height == result.result.results.height
    with pytest.raises(TaskError, match="no task has labels"):
        benchmark_dataset(synth, [bad], tmp_path / "none", config)


def test_parse_encoder() -> None:
    assert parse_encoder("count").is_count
    choice = parse_encoder("teacher+guidelines")
    assert (choice.name, choice.source, choice.guidelines) == ("teacher+guidelines", "teacher", True)
    assert parse_encoder("mine=/models/x").name == "mine"
    with pytest.raises(ValueError, match="NAME=SPEC"):
        parse_encoder("=x")
    fused = parse_encoder("count+teacher+guidelines")
    assert (fused.name, fused.fuse, fused.is_count) == ("count+teacher+guidelines", "teacher+guidelines", False)
    with pytest.raises(ValueError, match="needs NAME"):
        parse_encoder("count+")


def test_fusion_runs_beside_its_partner_and_names_a_missing_one(synth: MedsDataset, tmp_path: Path) -> None:
    from ehrembed.encoders.embeddings import EmbeddingSet

    tasks = resolve_tasks(["new_hypertension"])
    labelsets, _ = label_tasks(synth, tasks)
    keys = label_keys([restrict(ls, case_cohort_keys(labelsets, positives=30, background=80)) for ls in labelsets])
    embed_dataset(synth, HashEncoder(), tmp_path / "hash", as_of=times_by_subject(keys))
    config = BenchmarkJobConfig(
        encoders=("count", "hash", "count+hash"),
        benchmark=BenchmarkConfig(ks=(4, "all"), replicates=2, n_bootstrap=20),
        sample_positives=30, sample_background=80,
    )  # fmt: skip
    result = benchmark_dataset(
        synth, tasks, tmp_path / "report", config, embeddings={"hash": EmbeddingSet.load(tmp_path / "hash")}
    )
    frame = result.result.results
    fused = frame.filter(pl.col("encoder") == "count+hash")
    assert set(fused.get_column("head")) == {"lightgbm", "logistic"}  # sparse: no kNN
    assert fused.height == frame.filter(pl.col("encoder") == "count").height
    report = result.report.read_text()
    for section in ("Macro AUROC with 95% CI", "Wins / ties / losses against count", "neighbour outcome lift"):
        assert section in report, section
    wtl = pl.read_csv(tmp_path / "report" / "wins_ties_losses.csv")
    assert set(wtl.get_column("encoder")) == {"hash", "count+hash"} and (wtl.get_column("tasks") == 1).all()
    lift = pl.read_csv(tmp_path / "report" / "neighbours.csv")
    assert lift.get_column("encoder").to_list() == ["hash"] and lift.item(0, "queries") > 0
    ci = pl.read_csv(tmp_path / "report" / "macro_auroc_ci.csv")
    assert (ci.get_column("auroc_lo") <= ci.get_column("auroc_hi")).all()
    with pytest.raises(ValueError, match="'student' is not an encoder of this run"):
        benchmark_dataset(
            synth, tasks, tmp_path / "x", dataclasses.replace(config, encoders=("count", "hash", "count+student"))
        )
    failed = runner.invoke(
        app, ["benchmark", str(synth.root), "--encoders", "count,count+teacher", "--out", str(tmp_path / "y")]
    )
    assert failed.exit_code == 2 and "'teacher' is not an encoder of this run" in failed.output


def test_cli_benchmark_and_tasks(synth: MedsDataset, tmp_path: Path) -> None:
    task_file = tmp_path / "htn.yaml"
    task_file.write_text(
        "name: htn\ngroup: new_diagnosis\noutcome: {codes: [ICD10CM/I10]}\nhorizon: {end_days: 365}\n"
        "exclude_if_prior_outcome: true\n"
    )
    shown = runner.invoke(app, ["tasks", "show", str(task_file), "--dataset", str(synth.root), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["labels"]["positives"] > 0
    out = tmp_path / "bench"
    result = runner.invoke(
        app,
        ["benchmark", str(synth.root), "--tasks", str(task_file), "--encoders", "count", "--k", "2,all",
         "--replicates", "1", "--bootstrap", "0", "--sample-positives", "30", "--sample-background", "80",
         "--out", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["cells"] > 0 and (out / "report.md").exists()
    with catalog() as session:  # recorded for the console's report page; read back without a bootstrap CI
        [recorded] = recorded_reports(session)
        assert recorded.spec["tasks"] == ["htn"] and Path(recorded.path) == out.resolve()
        _, numbers = recorded_report(session, recorded.name)
    assert numbers["ks"] == ["2", "all"] and numbers["encoders"] == ["count"] and numbers["wins_ties_losses"] == []
    assert all(r["auroc_lo"] is None and 0 <= r["auroc"] <= 1 for r in numbers["macro_auroc"])
    with pytest.raises(InputError, match="not a benchmark report folder"):
        report_summary(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\noutcome: {codes: [nope]}\n")
    failed = runner.invoke(app, ["benchmark", str(synth.root), "--tasks", str(bad), "--out", str(tmp_path / "x")])
    assert failed.exit_code == 2 and "VOCABULARY/CODE" in failed.output
    wrong_k = runner.invoke(app, ["benchmark", str(synth.root), "--k", "zero", "--out", str(tmp_path / "y")])
    assert wrong_k.exit_code == 2 and "positive integer" in wrong_k.output
    listed = runner.invoke(app, ["tasks", "list", "--json"])
    assert listed.exit_code == 0 and len(json.loads(listed.stdout)) >= 15
