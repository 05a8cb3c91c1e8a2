from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ehrembed.distill.losses.soft_label import head_probabilities
from ehrembed.distill.train import (
    DistillConfig,
    DistillError,
    DistillEvent,
    distill,
    encode_texts,
    teacher_agreement,
)

from .conftest import build_student

FAST = DistillConfig(epochs=4, batch_size=8, lr=1e-3, warmup_ratio=0.1, patience=None, eval_batch_size=32)
TEACHER = {"name": "synthetic-bow-teacher", "spec_fingerprint": "0123456789abcdef", "data_fingerprint": "feedface"}


def run(student: Any, data: dict[str, Any], out: Path, config: DistillConfig = FAST, **kwargs: Any) -> Any:
    return distill(
        student,
        data["train_texts"],
        data["train_teacher"],
        data["val_texts"],
        data["val_teacher"],
        out,
        config,
        teacher_info=TEACHER,
        **kwargs,
    )


def test_distillation_lowers_heldout_mse_and_saves_a_plain_st_folder(
    student: Any, toy_data: dict[str, Any], tmp_path: Path
) -> None:
    events: list[DistillEvent] = []
    result = run(student, toy_data, tmp_path / "student", progress=events.append)

    assert result.final.mse < result.initial.mse
    assert result.final.cosine > result.initial.cosine
    assert result.best_epoch >= 1 and len(result.history) == 4 and result.steps == 4 * 6
    assert result.n_train == 48 and result.n_val == 16
    assert {e.kind for e in events} == {"start", "step", "eval", "checkpoint", "done"}

    out = result.out_dir
    assert not (out / ".checkpoints").exists()  # removed after success unless keep_checkpoints
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no scratch left behind
    modules = json.loads((out / "modules.json").read_text())
    assert all(m["type"].startswith("sentence_transformers.") for m in modules)
    readme = (out / "README.md").read_text()
    assert "synthetic-bow-teacher" in readme and "0123456789abcdef" in readme and "sentence-transformers" in readme
    card = json.loads((out / "distill.json").read_text())
    assert card["teacher"]["name"] == "synthetic-bow-teacher"
    assert card["data"]["train_records"] == 48 and card["data"]["teacher_data_fingerprint"] == "feedface"
    assert card["metrics"]["final"]["mse"] == pytest.approx(result.final.mse)
    assert {"torch", "transformers", "sentence-transformers", "ehrembed"} <= set(card["versions"])

    from sentence_transformers import SentenceTransformer

    reloaded = SentenceTransformer(str(out), device="cpu")
    again = teacher_agreement(encode_texts(reloaded, toy_data["val_texts"]), toy_data["val_teacher"])
    assert again.mse == pytest.approx(result.final.mse, rel=1e-4)  # the saved weights are the best epoch's


def test_saved_folder_loads_without_ehrembed(student: Any, toy_data: dict[str, Any], tmp_path: Path) -> None:
    out = run(student, toy_data, tmp_path / "student", replace(FAST, epochs=1)).out_dir
    code = (
        "import sys; sys.modules['ehrembed'] = None\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"m = SentenceTransformer({str(out)!r}, device='cpu')\n"
        "print(m.encode(['diabetes glucose high']).shape)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(1, 16)" in done.stdout


def test_contrastive_and_soft_label_terms(student: Any, toy_data: dict[str, Any], tmp_path: Path) -> None:
    n = len(toy_data["train_texts"])
    rng = np.random.default_rng(0)
    hard = (toy_data["train_teacher"][:, 0] > 0).astype(np.float32)
    hard[::7] = np.nan  # missing labels are skipped
    soft = rng.uniform(size=n).astype(np.float32)
    config = replace(FAST, epochs=2, weight_contrastive=0.5, temperature=0.1, weight_soft_label=0.5)
    result = run(student, toy_data, tmp_path / "student", config, hard_labels=hard, soft_labels=soft)

    for record in result.history:
        assert set(record.train_terms) == {"mse", "cosine", "contrastive", "soft_label"}
        assert all(np.isfinite(v) for v in record.train_terms.values())
        assert np.isfinite(record.train_loss)
    head_path = result.out_dir / "soft_label_head.json"
    head = json.loads(head_path.read_text())
    assert np.asarray(head["weight"]).shape == (1, 16) and head["alpha"] == 0.9
    probs = head_probabilities(encode_texts(student, toy_data["val_texts"]), head_path)
    assert probs.shape == (16, 1) and ((probs > 0) & (probs < 1)).all()
    readme = (result.out_dir / "README.md").read_text()
    assert "InfoNCE" in readme and "soft label" in readme

    with pytest.raises(DistillError, match="soft_labels"):
        run(build_student_like(student), toy_data, tmp_path / "x", replace(FAST, weight_soft_label=1.0))


def build_student_like(student: Any) -> Any:
    return student  # validation fails before any training, so reusing the fixture is fine


def test_resume_extends_a_finished_run(student: Any, toy_data: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "student"
    first = run(student, toy_data, out, replace(FAST, epochs=1, keep_checkpoints=True))
    assert first.steps == 6 and (out / ".checkpoints" / "last" / "state.json").exists()
    assert (out / "modules.json").exists()

    second = run(student, toy_data, out, replace(FAST, epochs=2, keep_checkpoints=True), resume=True)
    assert second.resumed_from_step == first.steps
    assert second.steps == 2 * first.steps
    assert [r.epoch for r in second.history] == [1, 2]
    assert second.history[0] == first.history[0]
    assert second.initial == first.initial


def test_resume_after_interruption_matches_an_uninterrupted_run(
    tiny_bert_dir: Path, toy_data: dict[str, Any], tmp_path: Path
) -> None:
    config = replace(FAST, epochs=2, checkpoint_every_steps=2)
    reference = run(build_student(tiny_bert_dir), toy_data, tmp_path / "reference", config)

    def crash_at_step_9(event: DistillEvent) -> None:
        if event.kind == "step" and event.step == 9:
            raise KeyboardInterrupt

    out = tmp_path / "student"
    with pytest.raises(KeyboardInterrupt):
        run(build_student(tiny_bert_dir), toy_data, out, config, progress=crash_at_step_9)
    assert not (out / "modules.json").exists()  # an unfinished run never looks like a model
    with pytest.raises(DistillError, match="resume=True"):
        run(build_student(tiny_bert_dir), toy_data, out, config)
    with pytest.raises(DistillError, match="lr"):
        run(build_student(tiny_bert_dir), toy_data, out, replace(config, lr=1e-4), resume=True)

    resumed = run(build_student(tiny_bert_dir), toy_data, out, config, resume=True)
    assert resumed.resumed_from_step == 8  # the last every-2-steps checkpoint before the crash
    assert resumed.steps == reference.steps == 12
    assert resumed.final.mse == pytest.approx(reference.final.mse, rel=1e-4)
    assert not (out / ".checkpoints").exists()


def test_bad_inputs_fail_early(tiny_bert_dir: Path, toy_data: dict[str, Any], tmp_path: Path) -> None:
    narrow = build_student(tiny_bert_dir, out_dim=8)
    with pytest.raises(DistillError, match="Dense projection"):
        run(narrow, toy_data, tmp_path / "narrow")
    with pytest.raises(DistillError, match="texts"):
        distill(narrow, ["a b"], np.zeros((2, 16)), None, None, tmp_path / "bad", FAST)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "file.txt").write_text("x")
    with pytest.raises(FileExistsError):
        run(build_student(tiny_bert_dir), toy_data, existing)


def test_val_fraction_split(student: Any, toy_data: dict[str, Any], tmp_path: Path) -> None:
    texts = toy_data["train_texts"] + toy_data["val_texts"]
    teacher = np.concatenate([toy_data["train_teacher"], toy_data["val_teacher"]])
    config = replace(FAST, epochs=1, val_fraction=0.25)
    result = distill(student, texts, teacher, None, None, tmp_path / "student", config, teacher_info=TEACHER)
    assert (result.n_train, result.n_val) == (48, 16)


def test_rich_progress_bar(student: Any, toy_data: dict[str, Any], tmp_path: Path) -> None:
    from ehrembed.distill.train import rich_progress

    with rich_progress() as bar:
        result = run(student, toy_data, tmp_path / "student", replace(FAST, epochs=1), progress=bar)
    assert result.steps == 6


def test_end_to_end_with_the_encoders(tiny_bert_dir: Path, tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    """Teacher vectors from TeacherEncoder, student from build_student_for_distillation, then retention."""
    from ehrembed.distill.retention import retention_report
    from ehrembed.encoders.student import build_student_for_distillation
    from ehrembed.encoders.teacher import TeacherEncoder

    from .conftest import make_texts

    texts = make_texts(64, seed=3)
    teacher = TeacherEncoder.from_folder(tiny_qwen2_dir, pooling="mean", max_tokens=64, name="tiny-qwen2")
    vectors = teacher.encode(texts, instruction="will the patient stay in the hospital")
    student = build_student_for_distillation(tiny_bert_dir, teacher.spec.dim)
    info = {"name": teacher.spec.name, "spec_fingerprint": teacher.spec.fingerprint()}
    result = distill(
        student, texts[:48], vectors[:48], texts[48:], vectors[48:], tmp_path / "student", FAST, teacher_info=info
    )
    assert result.final.mse < result.initial.mse
    assert teacher.spec.fingerprint() in (result.out_dir / "README.md").read_text()
    report = retention_report(vectors[48:], encode_texts(student, texts[48:]), k=5)
    assert report["student"]["cosine_mean"] == pytest.approx(result.final.cosine, abs=1e-4)


def test_projection_fit_and_base_retention(tiny_bert_dir: Path, toy_data: dict[str, Any], tmp_path: Path) -> None:
    """The ridge-initialised projection starts closer to the teacher; the base term keeps the body near the base."""
    from ehrembed.distill.train import encode_body, fit_projection

    texts, teacher = toy_data["train_texts"], toy_data["train_teacher"]
    fresh = build_student(tiny_bert_dir)
    base_body = encode_body(fresh, texts)
    before = teacher_agreement(encode_texts(fresh, texts), teacher)
    assert fit_projection(fresh, base_body, teacher, ridge=1e-3)
    after = teacher_agreement(encode_texts(fresh, texts), teacher)
    assert after.mse < before.mse and after.cosine > before.cosine
    np.testing.assert_allclose(encode_body(fresh, texts), base_body, atol=1e-6)  # only the projection changed
    assert not fit_projection(fresh, base_body, teacher[:, :3], ridge=1e-3)  # wrong shape: left alone

    config = replace(FAST, init_projection=True)
    # a negligible base weight records how far the body drifts without holding it back
    free = run(build_student(tiny_bert_dir), toy_data, tmp_path / "free", replace(config, weight_base=1e-9))
    kept = run(build_student(tiny_bert_dir), toy_data, tmp_path / "kept", replace(config, weight_base=5.0))
    assert set(kept.history[0].train_terms) == {"mse", "cosine", "base_mse", "base_cosine"}
    assert kept.history[-1].train_terms["base_mse"] < free.history[-1].train_terms["base_mse"]
    by_overlap = run(build_student(tiny_bert_dir), toy_data, tmp_path / "o", replace(config, monitor="overlap"))
    assert by_overlap.initial.overlap is not None
    overlaps = [by_overlap.initial.overlap, *(r.val_overlap for r in by_overlap.history)]
    assert by_overlap.final.overlap == max(o for o in overlaps if o is not None)


def test_the_train_state_is_typed_and_versioned() -> None:
    from ehrembed.distill.checkpoint import STATE_VERSION, TrainState
    from ehrembed.errors import InputError

    state = TrainState(
        config={"lr": 1e-4}, data_fingerprint="abc", n_train=4, n_val=1, initial={"cosine": 0.5},
        best_score=0.5, best_agreement={"cosine": 0.5}, best_dir="best-e000",
    )  # fmt: skip
    state.step += 3
    again = TrainState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state and again.version == STATE_VERSION
    legacy = {k: v for k, v in state.to_dict().items() if k not in ("version", "lr")}  # written before versioning
    assert TrainState.from_dict(legacy).step == 3
    with pytest.raises(InputError, match="version 99"):
        TrainState.from_dict({**state.to_dict(), "version": 99})
    with pytest.raises(InputError, match="lacks data_fingerprint"):
        TrainState.from_dict({k: v for k, v in state.to_dict().items() if k != "data_fingerprint"})
