"""The model commands end to end on tiny real models: embed → distill → export-onnx → embed again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from sentence_transformers import SentenceTransformer
from typer.testing import CliRunner

from ehrembed.cli import app
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.encoders.instructions import instruction_for
from ehrembed.predict.tasks import resolve_tasks
from ehrembed.store.db import create_all, make_engine, session_scope
from ehrembed.store.repository import list_artifacts

runner = CliRunner()


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_embed_distill_export(tmp_path: Path, tiny_qwen2_dir: Path, tiny_student_dir: Path) -> None:
    data = tmp_path / "meds"
    _ok(["synth", "--n", "60", "--seed", "5", "--out", str(data)])
    teacher_out = tmp_path / "teacher"
    report = json.loads(
        _ok(
            [
                "embed",
                str(data),
                "--encoder",
                str(tiny_qwen2_dir),
                "--max-tokens",
                "400",
                "--out",
                str(teacher_out),
                "--json",
            ]
        )
    )
    assert report["rows"] == 60 and report["encoded"] == 60
    again = json.loads(
        _ok(
            [
                "embed",
                str(data),
                "--encoder",
                str(tiny_qwen2_dir),
                "--max-tokens",
                "400",
                "--out",
                str(tmp_path / "teacher2"),
                "--json",
            ]
        )
    )
    assert again["encoded"] == 0 and again["cached"] == 60, "a re-run only reads the cache"
    teacher = EmbeddingSet.load(teacher_out)
    assert teacher.instruction == instruction_for(teacher.spec)  # no task: the generic question
    limited = ["embed", str(data), "--encoder", str(tiny_qwen2_dir), "--max-tokens", "400", "--limit", "3"]
    _ok([*limited, "--task", "new_afib", "--out", str(tmp_path / "afib")])
    (afib,) = resolve_tasks(["new_afib"])
    assert EmbeddingSet.load(tmp_path / "afib").instruction == instruction_for(teacher.spec, afib.question)
    failed = runner.invoke(app, [*limited, "--task", "no_such_task", "--out", str(tmp_path / "x")])
    assert failed.exit_code == 2 and "no_such_task" in failed.output
    assert teacher.vectors.shape == (60, 32)

    model = tmp_path / "student"
    summary = json.loads(
        _ok(
            [
                "distill",
                str(data),
                "--teacher-embeddings",
                str(teacher_out),
                "--out",
                str(model),
                "--base",
                str(tiny_student_dir),
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--lr",
                "1e-3",
                "--monitor",
                "mse",
                "--json",
            ]
        )
    )
    assert summary["held_out_after"]["mse"] < summary["held_out_before"]["mse"]
    assert (model / "README.md").exists() and (model / "retention.json").exists()
    assert SentenceTransformer(str(model)).encode(["a record"]).shape == (1, 32)

    # soft labels (CKD-EHR): labels on the teacher's rows teach a head on the student; on rows they miss, a clear error
    from ehrembed.distill.job import DistillJobConfig, distill_dataset
    from ehrembed.distill.train import DistillConfig
    from ehrembed.ehr.meds import MedsDataset

    rows = pl.DataFrame(
        {
            "subject_id": teacher.subject_ids,
            "prediction_time": teacher.as_of,
            "task": "even",
            "value": teacher.subject_ids % 2 == 0,
        }
    )
    job = DistillJobConfig(
        base=tiny_student_dir, train=DistillConfig.keeping_base(epochs=1, batch_size=8, weight_soft_label=1.0)
    )
    soft = distill_dataset(MedsDataset.open(data), teacher, tmp_path / "soft", job, labels=rows)
    assert soft.labels is not None and soft.labels["even"]["labelled"] == soft.rows["train"]
    assert (tmp_path / "soft" / "soft_label_head.json").exists()
    missed = runner.invoke(
        app,
        ["distill", str(data), "--teacher-embeddings", str(teacher_out), "--out", str(tmp_path / "soft2"),
         "--base", str(tiny_student_dir), "--epochs", "1", "--soft-labels", "new_hypertension,new_afib,long_los"],
    )  # fmt: skip
    assert missed.exit_code == 2 and "none of" in missed.stderr, missed.output

    _ok(["export-onnx", str(model), "--out", str(tmp_path / "onnx")])
    onnx_out = tmp_path / "student.parquet"
    _ok(["embed", str(data), "--encoder", str(tmp_path / "onnx"), "--out", str(onnx_out), "--limit", "10"])
    vectors = EmbeddingSet.load(onnx_out)
    assert vectors.vectors.shape == (10, 32) and np.allclose(np.linalg.norm(vectors.vectors, axis=1), 1, atol=1e-4)

    with session_scope(make_engine()) as session:
        kinds = sorted(a.kind for a in list_artifacts(session))
    assert kinds == ["embeddings", "embeddings", "embeddings", "embeddings", "model"]


def test_embed_errors(tmp_path: Path) -> None:
    data = tmp_path / "meds"
    _ok(["synth", "--n", "5", "--out", str(data)])
    result = runner.invoke(
        app, ["embed", str(data), "--encoder", str(tmp_path / "no-model"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "not found" in result.stderr
    result = runner.invoke(app, ["distill", str(data), "--teacher-embeddings", str(tmp_path / "nope"), "--out", "x"])
    assert result.exit_code == 2 and "not found" in result.stderr


def test_embed_links_its_set_to_the_name_the_store_knows_the_folder_by(tmp_path: Path, tiny_student_dir: Path) -> None:
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.ehr.synth import SynthConfig, generate_cohort
    from ehrembed.store.catalog import register_meds

    data = tmp_path / "meds"
    generate_cohort(SynthConfig(n_subjects=12, seed=2), data)
    engine = make_engine()
    create_all(engine)
    with session_scope(engine) as session:  # served under another name than the folder's own
        register_meds(session, MedsDataset.open(data), "synth", name="ward7")
    _ok(["embed", str(data), "--encoder", str(tiny_student_dir), "--out", str(tmp_path / "s.parquet")])
    with session_scope(engine) as session:
        [artifact] = [a for a in list_artifacts(session, "embeddings") if a.name == "s.parquet"]
        assert artifact.dataset is not None and artifact.dataset.name == "ward7"
        assert artifact.spec["encoder"] == str(tiny_student_dir)  # what export's `encoder=` matches
    engine.dispose()
