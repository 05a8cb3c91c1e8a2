"""A sentence-transformers LLM embedder folder (Qwen3-Embedding / EmbeddingGemma style) as a teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ehrembed.encoders import encoder_kind, load_encoder
from ehrembed.encoders.instructions import instruction_for
from ehrembed.encoders.student import prompt_template

QWEN3_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"


def _st_folder(tmp_path: Path, tiny_qwen2_dir: Path, prompts: dict[str, str]) -> Path:
    """A tiny decoder with last-token pooling, a Dense layer, normalisation and named prompts."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    transformer = Transformer(str(tiny_qwen2_dir), max_seq_length=256)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    dense = Dense(transformer.get_embedding_dimension(), 16)
    model = SentenceTransformer(modules=[transformer, pooling, dense, Normalize()], prompts=prompts, device="cpu")
    folder = tmp_path / "st-teacher"
    model.save(str(folder))
    return folder


def test_prompt_shapes() -> None:
    assert prompt_template(QWEN3_PROMPT) == "Instruct: {instruction}\nQuery:"
    assert prompt_template("task: search result | query: ") == "task: {instruction} | query: "
    assert prompt_template("Represent this record: ") == "Represent this record: "  # fixed prompt, no slot


def test_st_teacher_carries_the_task_instruction_in_its_prompt(tmp_path: Path, tiny_qwen2_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    folder = _st_folder(tmp_path, tiny_qwen2_dir, {"query": QWEN3_PROMPT, "document": ""})
    assert encoder_kind(str(folder)) == "teacher"
    teacher = load_encoder(str(folder))
    assert teacher.spec.kind == "teacher" and teacher.spec.dim == 16 and teacher.spec.pooling == "last"
    assert teacher.spec.instruction_template == "Instruct: {instruction}\nQuery:"
    record = "Atrial fibrillation\nWarfarin 5 MG Oral Tablet"
    afib = instruction_for(teacher.spec, "will the patient have a stroke")
    assert afib is not None
    ours = teacher.encode([record], instruction=afib)
    reference = SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(
        [record], prompt=f"Instruct: {afib}\nQuery:"
    )
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    other = teacher.encode([record], instruction=instruction_for(teacher.spec, "will the patient bleed"))
    assert not np.allclose(ours, other)


def test_st_model_with_a_fixed_prompt_gets_no_instruction(tmp_path: Path, tiny_qwen2_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    folder = _st_folder(tmp_path, tiny_qwen2_dir, {"query": "Represent this record: "})
    encoder = load_encoder(str(folder))
    assert instruction_for(encoder.spec, "will the patient have a stroke") is None
    reference = SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(
        ["a record"], prompt_name="query"
    )
    np.testing.assert_allclose(encoder.encode(["a record"]), reference, atol=1e-5)


def test_unknown_teacher_folder_says_what_it_expected(tmp_path: Path) -> None:
    from ehrembed.encoders.base import EncoderError

    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.bin").write_bytes(b"0")
    with pytest.raises(EncoderError, match=r"config\.json"):
        load_encoder(str(tmp_path / "odd"))
