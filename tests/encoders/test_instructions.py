"""The one instruction rule: reference wording, per-task questions, and every front end asking it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.serialize import SerializerConfig
from ehrembed.ehr.synth import SynthConfig, generate_cohort
from ehrembed.encoders.base import GTE_INSTRUCTION_TEMPLATE, EncoderSpec
from ehrembed.encoders.instructions import GENERIC_QUESTION, instruction_for, record_instruction
from ehrembed.encoders.job import EmbedConfig, embed_records
from ehrembed.predict.tasks import parse_task, resolve_tasks


def _spec(template: str | None) -> EncoderSpec:
    return EncoderSpec(
        name="x", kind="teacher", model_path="/x", revision="0", pooling="last", dim=4, max_tokens=64,
        instruction_template=template,
    )  # fmt: skip


def test_reference_wording_per_layout_and_task() -> None:
    teacher = _spec(GTE_INSTRUCTION_TEMPLATE)
    assert instruction_for(teacher, "has the patient anemia", serializer_format="list") == (
        "Given a patient's electronic healthcare record (EHR) as a newline separated list, retrieve relevant "
        "passages that answer the query: has the patient anemia"
    )
    assert instruction_for(teacher, "has the patient anemia", serializer_format="markdown") == (
        "Given a patient's electronic healthcare record (EHR) in Markdown format, retrieve relevant passages "
        "that answer the query: has the patient anemia"
    )
    assert instruction_for(teacher, "x") == instruction_for(teacher, "x", serializer_format="list")  # the default
    assert instruction_for(teacher) == record_instruction(GENERIC_QUESTION)
    assert instruction_for(teacher, "  ") == record_instruction(GENERIC_QUESTION)
    assert instruction_for(teacher, "anemia?", override="Represent this record") == "Represent this record"
    # encoders without a template never get an instruction, whatever is asked
    assert instruction_for(_spec(None), "anemia?", override="Represent this record") is None


def test_task_questions_explicit_or_derived() -> None:
    (afib,) = resolve_tasks(["new_afib"])
    assert afib.question == "will the patient be diagnosed with atrial fibrillation within the next year"
    derived = parse_task(
        {"name": "gi_bleed", "description": "GI bleeding within a year (our protocol).", "outcome": {"codes": ["X/1"]}}
    )
    assert derived.question == "will the patient have: GI bleeding within a year"
    assert parse_task({"name": "new_gout", "outcome": {"codes": ["X/1"]}}).question == "will the patient have: new gout"
    assert all(t.question for t in resolve_tasks(["all"]))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> MedsDataset:
    out = tmp_path_factory.mktemp("instr") / "meds"
    generate_cohort(SynthConfig(n_subjects=6, seed=5), out)
    return MedsDataset.open(out)


def test_embed_job_resolves_the_rule(small: MedsDataset, tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    from ehrembed.encoders.teacher import TeacherEncoder

    teacher = TeacherEncoder.from_folder(tiny_qwen2_dir, max_tokens=256)
    ids = small.subject_ids()[:3]
    list_config = SerializerConfig(format="list")
    task = EmbedConfig(question="will it rain", serializer=list_config, cache_dir=tmp_path / "c")
    generic = EmbedConfig(serializer=list_config, cache_dir=tmp_path / "c")
    a, _ = embed_records(small, teacher, task, subject_ids=ids)
    b, _ = embed_records(small, teacher, generic, subject_ids=ids)
    assert a.instruction == instruction_for(teacher.spec, "will it rain", serializer_format="list")
    assert b.instruction == instruction_for(teacher.spec, serializer_format="list")
    assert not np.allclose(a.vectors, b.vectors)  # different instruction, different vectors (and cache keys)


def test_benchmark_embeds_teachers_per_task_and_students_once(
    small: MedsDataset, tiny_qwen2_dir: Path, tiny_student_dir: Path, tmp_path: Path
) -> None:
    from ehrembed.encoders.embeddings import EmbeddingSet
    from ehrembed.predict.job import embed_tasks, parse_encoder
    from ehrembed.predict.labelers import LabelSet
    from ehrembed.schema import Label

    patients = {p.subject_id: p for p in small.iter_patients()}
    labels = [Label(sid, max(e.time for e in p.events if e.time is not None), True) for sid, p in patients.items()]
    tasks = resolve_tasks(["new_afib", "new_stroke"])
    labelsets = [LabelSet(task=t, labels=labels[i::2] + labels[1 - i :: 2]) for i, t in enumerate(tasks)]
    per_task, info = embed_tasks(
        small, parse_encoder(f"t={tiny_qwen2_dir}"), labelsets, tmp_path / "t", max_tokens=256, batch_size=4
    )
    assert isinstance(per_task, dict) and set(per_task) == {"new_afib", "new_stroke"}
    assert info["instructions"]["new_afib"] == instruction_for(per_task["new_afib"].spec, tasks[0].question)
    assert info["plan"] == "per task"
    assert per_task["new_stroke"].instruction != per_task["new_afib"].instruction
    generic, generic_info = embed_tasks(
        small, parse_encoder(f"t={tiny_qwen2_dir}"), labelsets, tmp_path / "g", max_tokens=256, batch_size=4,
        generic=True,
    )  # fmt: skip
    assert isinstance(generic, EmbeddingSet) and generic.instruction == instruction_for(generic.spec)
    assert generic_info["plan"] == "once"
    once, once_info = embed_tasks(
        small, parse_encoder(f"s={tiny_student_dir}"), labelsets, tmp_path / "s", max_tokens=None, batch_size=4
    )
    assert isinstance(once, EmbeddingSet) and once.instruction is None
    assert once_info["plan"] == "once"


def test_fitted_heads_keep_the_task_instruction(small: MedsDataset, tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    from ehrembed.encoders.teacher import TeacherEncoder
    from ehrembed.predict.fitted import embed_for_head, fit_head
    from ehrembed.schema import Label

    teacher = TeacherEncoder.from_folder(tiny_qwen2_dir, max_tokens=256)
    ids = small.subject_ids()
    examples = [
        Label(sid, max(e.time for e in small.patient(sid).events if e.time is not None), i % 2 == 0)
        for i, sid in enumerate(ids)
    ]
    (afib,) = resolve_tasks(["new_afib"])
    fitted = fit_head(small, teacher, examples, "logistic", tmp_path / "heads", task="new_afib", question=afib.question)
    assert fitted.card["instruction"] == instruction_for(teacher.spec, afib.question)
    vectors, _, _ = embed_for_head(fitted, teacher, small, subject_ids=ids[:2], as_of=examples[0].prediction_time)
    direct, _ = embed_records(
        small, teacher, EmbedConfig(question=afib.question), subject_ids=ids[:2], as_of=examples[0].prediction_time
    )
    np.testing.assert_allclose(vectors, direct.vectors, atol=1e-6)


def test_replaying_a_stored_layout_and_instruction() -> None:
    """Indexes and heads record how their vectors were made; queries against them are made the same way."""
    stored = EmbedConfig.replaying({"instruction": "x", "serializer": {"format": "list", "max_tokens": 90}})
    assert stored.instruction == "x" and stored.serializer.format == "list"
    assert stored.serializer.max_tokens is None  # the budget is the encoder's window again, not a stale number
    legacy = EmbedConfig.replaying({"instruction": None})  # made before layouts were recorded: old Markdown
    assert legacy.serializer.format == "markdown_compact" and legacy.instruction is None
    before = EmbedConfig.replaying({"serializer": {"format": "markdown", "max_labs": 24, "recent_values": 3}})
    assert before.serializer.format == "markdown_compact"  # recorded before Markdown followed the reference
    now = EmbedConfig.replaying({"serializer": {"format": "markdown", "recent_values": 3, "shift_dates": True}})
    assert now.serializer.format == "markdown" and now.serializer.shift_dates
    assert EmbedConfig().serializer.format == "list"  # records are embedded in the reference list by default
