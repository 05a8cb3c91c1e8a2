"""The command line end to end on Eunomia, and its error messages and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ehrembed.cli import app
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.predict.tasks import resolve_tasks
from ehrembed.store.db import make_engine, session_scope
from ehrembed.store.repository import get_dataset, get_subjects

runner = CliRunner()


@pytest.fixture
def ingested(tmp_path: Path) -> Path:
    out = tmp_path / "eunomia"
    result = runner.invoke(app, ["ingest", "omop", "--eunomia", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_subjects"] == 2694
    return out


def test_ingest_registers_the_dataset(ingested: Path) -> None:
    with session_scope(make_engine()) as session:
        dataset = get_dataset(session, "eunomia")
        assert dataset.n_subjects == 2694 and dataset.path == str(ingested.resolve())
        assert len(get_subjects(session, dataset)) == 2694


def test_info_json(ingested: Path) -> None:
    result = runner.invoke(app, ["info", str(ingested), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["subjects"] == 2694
    assert stats["description_coverage"]["event_coverage"] >= 0.95
    assert sum(stats["splits"].values()) == 2694


def test_serialize(ingested: Path) -> None:
    result = runner.invoke(app, ["serialize", str(ingested), "--subject", "1", "--as-of", "2019-06-01T23:59"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# Electronic Healthcare Record\nCurrent time: 2019-06-01 23:59")
    short = runner.invoke(app, ["serialize", str(ingested), "--subject", "1", "--max-tokens", "60", "--format", "list"])
    assert short.exit_code == 0, short.output
    assert "#" not in short.stdout and short.stdout.strip()  # the reference list: no headings
    assert len(short.stdout) < len(result.stdout)
    dated = runner.invoke(app, ["serialize", str(ingested), "--subject", "1", "--format", "list_dated"])
    assert dated.exit_code == 0 and "## Medical Events (most recent first)" in dated.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subject", "999999"], "subject 999999 is not in dataset"),
        (["--subject", "1", "--as-of", "yesterday"], "is not an ISO time"),
        (["--subject", "1", "--as-of", "1900-01-01"], "before subject 1's birth"),
        (["--subject", "1", "--format", "xml"], "'xml' is not one of 'markdown',"),
    ],
)
def test_serialize_errors(ingested: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["serialize", str(ingested), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


def test_existing_output_needs_overwrite(ingested: Path) -> None:
    result = runner.invoke(app, ["ingest", "omop", "--out", str(ingested)])
    assert result.exit_code == 2 and "already exists; pass --overwrite" in " ".join(result.stderr.split())
    assert runner.invoke(app, ["ingest", "omop", "--out", str(ingested), "--overwrite"]).exit_code == 0


def test_info_on_a_missing_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["info", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such dataset folder" in result.stderr


def test_conflicting_sources(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", "omop", "--eunomia", "--dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "choose one source" in result.stderr


def test_main_job_end_to_end_on_tiny_models(tmp_path: Path, tiny_qwen2_dir: Path, tiny_student_dir: Path) -> None:
    """Every stage of `ehrembed run` on Eunomia: ingest → labels → teacher (± guidelines) → distill → index → report."""
    from ehrembed.retrieval.guidelines import RetrievalModelConfig, build_knowledge_base

    guidelines = tmp_path / "guidelines"
    guidelines.mkdir()
    (guidelines / "gi.md").write_text("# GI bleeding\n\n## Risk\n\nNSAIDs and anticoagulants raise bleeding risk.\n")
    (guidelines / "stroke.md").write_text("# Stroke\n\n## Prevention\n\nTreat hypertension and atrial fibrillation.\n")
    build_knowledge_base(guidelines, RetrievalModelConfig.minilm(tiny_student_dir)).save(tmp_path / "kb")
    out = tmp_path / "out"
    args = [
        "run", "--out", str(out), "--teacher", str(tiny_qwen2_dir), "--student", str(tiny_student_dir),
        "--retrieval-model", str(tiny_student_dir), "--guidelines-kb", str(tmp_path / "kb"),
        "--max-tokens", "400", "--tasks", "new_gi_bleed,new_stroke,long_los", "--guidelines",
        "--sample-positives", "25", "--sample-background", "60", "--k", "1,4,all", "--replicates", "1", "--epochs", "1",
        "--distill-records", "all",
    ]  # fmt: skip
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    record = next(out.glob("record_*.md")).read_text()  # printed as the encoders read it: the list layout
    assert record in first.stdout and "#" not in record and "Current time" not in record
    for stage in (
        "ingest",
        "label",
        "pretrain",
        "teacher",
        "guidelines",
        "teacher+guidelines",
        "distill",
        "student",
        "index",
        "benchmark",
    ):
        assert f"\n{stage} " in first.stdout, stage
    report = (out / "report" / "report.md").read_text()
    for encoder in (
        "count", "student", "teacher", "teacher+guidelines", "distilled", "prognosis", "count+student",
        "count+teacher", "count+distilled", "count+prognosis",
    ):  # fmt: skip
        assert f"| {encoder} |" in report, encoder
    # the prognostic encoder, pretrained on the train split, answers the new-diagnosis tasks zero-shot (k=0)
    assert (out / "models" / "prognosis" / "prognosis.json").is_file()
    zero = pl.read_parquet(out / "report" / "results.parquet").filter(pl.col("k") == "0")
    assert set(zero.get_column("encoder")) == {"prognosis"} and set(zero.get_column("head")) == {"zero-shot"}
    assert "long_los: 1037 labels but no positives" in report
    assert (out / "stats.json").exists() and list(out.glob("record_*.md"))
    stages = json.loads((out / "report" / "run.json").read_text())["main_job_seconds"]
    assert {"ingest", "teacher", "distill", "student", "index", "benchmark"} <= set(stages), stages
    assert (out / "models" / "student" / "modules.json").exists() and (
        out / "index" / "distilled" / "index.faiss"
    ).exists()
    # the teacher embeds each task's times with the task's question; the students once for all tasks
    for task in ("new_gi_bleed", "new_stroke"):
        card = json.loads((out / "embeddings" / "teacher" / task / "embedding.json").read_text())
        assert card["instruction"].endswith(resolve_tasks([task])[0].question)
        assert "guidelines" in (out / "embeddings" / "teacher+guidelines" / task / "embedding.json").read_text()
    assert json.loads((out / "embeddings" / "distilled" / "embedding.json").read_text())["instruction"] is None
    assert "held-out retention" in first.stderr and "undistilled student" in first.stderr
    # --distill-records all: every patient's whole record, each with one task's question, taught the student
    assert "2,694 whole records for distillation" in first.stderr
    parts = sorted((out / "embeddings" / "distill-teacher").glob("*/embedding.json"))
    assert [p.parent.name for p in parts] == ["new_gi_bleed", "new_stroke"]
    assert sum(len(EmbeddingSet.load(p.parent)) for p in parts) == 2694
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "reusing" in second.stderr and "distill: reusing" in second.stderr and "pretrain: reusing" in second.stderr
    assert "from cache" in (out / "report" / "report.md").read_text()
    # the soft-label (CKD-EHR) recipe: a new student (other recipe), taught the sample's train labels too
    soft = runner.invoke(app, [*args[:-2], "--distill-records", "sample", "--distill-recipe", "soft-labels"])
    assert soft.exit_code == 0, soft.output
    assert "distill: reusing" not in soft.stderr and "labelled train records" in soft.stderr
    card = json.loads((out / "models" / "student.teacher.json").read_text())
    assert card["recipe"]["train"]["weight_soft_label"] == 1.0
    assert (out / "models" / "student" / "soft_label_head.json").exists()
    mixed = runner.invoke(app, [*args, "--distill-recipe", "soft-labels"])
    assert mixed.exit_code == 2 and "--distill-records sample" in mixed.stderr


@pytest.mark.parametrize(
    ("observation_time", "value"),
    [("9999-12-31T23:59:59-12:00", 1.0), ("2020-01-02T10:00:00Z", "NaN"), ("2020-01-02T10:00:00Z", 1e39)],
)
def test_ingest_fhir_refuses_unstorable_times_and_numbers_with_exit_2(
    tmp_path: Path, observation_time: str, value: object
) -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"}},
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "o1",
                    "subject": {"reference": "Patient/p1"},
                    "effectiveDateTime": observation_time,
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
                    "valueQuantity": {"value": value},
                }
            },
        ],
    }
    source = tmp_path / "bundle.json"
    source.write_text(json.dumps(bundle))
    result = runner.invoke(app, ["ingest", "fhir", str(source), "--out", str(tmp_path / "meds")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "Observation" in result.output
    assert not (tmp_path / "meds").exists()


def test_as_of_out_of_range_is_exit_2(ingested: Path) -> None:
    result = runner.invoke(app, ["serialize", str(ingested), "--subject", "1", "--as-of", "0001-01-01T00:00:00+01:00"])
    assert result.exit_code == 2
    assert "outside the supported range" in result.output


@pytest.mark.parametrize(
    ("command", "spelling"),
    [
        (["similar"], "--top"),
        (["guidelines", "search"], "--top"),
        (["benchmark"], "--shots"),
        (["run"], "--shots"),
        (["embed"], "--kb"),
        (["run"], "--kb"),
    ],
)
def test_one_name_per_concept(command: list[str], spelling: str) -> None:
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0 and spelling in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "create", "--name", "x", "--scope", "root"],
        ["guidelines", "search", "q", "--mode", "fuzzy"],
        ["serialize", "DIR", "--subject", "1", "--max-tokens", "8"],
    ],
)
def test_enums_and_bounds_refuse_bad_values_with_exit_2(args: list[str]) -> None:
    assert runner.invoke(app, args).exit_code == 2


def test_key_and_schema_commands_speak_json() -> None:
    created = json.loads(runner.invoke(app, ["keys", "create", "--name", "j", "--json"]).stdout)
    revoked = runner.invoke(app, ["keys", "revoke", str(created["id"]), "--json"])
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["name"] == "j"
    current = runner.invoke(app, ["db", "current", "--json"])
    assert current.exit_code == 0 and "revision" in json.loads(current.stdout)


def test_repeatable_options_take_several_values_after_one_flag() -> None:
    import typer

    from ehrembed.cli.common import MultiValueCommand

    demo = typer.Typer()
    seen: dict[str, object] = {}

    @demo.command(cls=MultiValueCommand)
    def cmd(
        dataset: str,
        tasks: list[str] = typer.Option([], "--tasks"),
        out: str = typer.Option("o", "--out"),
        flag: bool = typer.Option(False, "--flag"),
    ) -> None:
        seen.update(dataset=dataset, tasks=tasks, out=out, flag=flag)

    ok = runner.invoke(demo, ["DIR", "--tasks", "a.yaml", "b.yaml", "c.yaml", "--flag", "--out", "-x"])
    assert ok.exit_code == 0, ok.output
    assert seen == {"dataset": "DIR", "tasks": ["a.yaml", "b.yaml", "c.yaml"], "out": "-x", "flag": True}
    runner.invoke(demo, ["DIR", "--tasks", "a", "--tasks", "b"])
    assert seen["tasks"] == ["a", "b"]  # the repeated spelling still works
    late = runner.invoke(demo, ["--tasks", "a", "DIR"])  # positional not yet given: DIR stays positional
    assert late.exit_code == 0 and seen["dataset"] == "DIR" and seen["tasks"] == ["a"]
