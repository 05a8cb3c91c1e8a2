"""The one instruction rule: which instruction an encoder gets for a record, given the task and layout.

Every front end (CLI ``embed``, the benchmark, fitted heads, ``/v1/embeddings``, the main job) asks
:func:`instruction_for`; nothing else decides. The rule:

- an encoder without an ``{instruction}`` slot in its template (a plain student, an ONNX student, a
  sentence-transformers model with a fixed prompt) gets ``None``: its vectors do not depend on the
  task, so one vector per record serves every task;
- an explicit instruction (``--instruction``) is used as given;
- otherwise the reference wording (Hegselmann et al., ../shared/DESIGN.md section 4)::

      Given a patient's electronic healthcare record (EHR) {as a newline separated list | in Markdown
      format}, retrieve relevant passages that answer the query: {question}

  with the task's question (:attr:`ehrembed.predict.tasks.TaskSpec.question`), or, with no task
  (similar-patient search, export, a generic-instruction benchmark run), :data:`GENERIC_QUESTION`.

The resolved instruction enters every cache key and is saved with every embedding set, index and
fitted head, so vectors made under different instructions are never mixed.
"""

from __future__ import annotations

from ehrembed.ehr.serialize import EMBED_FORMAT
from ehrembed.encoders.base import EncoderSpec

GENERIC_QUESTION = "what is the patient's current state of health"
"""The question for records embedded without a task (search, export) and for generic-instruction runs."""

_LAYOUT = {
    "list": "as a newline separated list",
    "list_dated": "as a newline separated list",
    "markdown": "in Markdown format",
}


def record_instruction(question: str, serializer_format: str = EMBED_FORMAT) -> str:
    """The reference instruction for a record in ``serializer_format`` and a task ``question``."""
    layout = _LAYOUT.get(serializer_format, "in Markdown format")
    question = " ".join(question.split())
    return (
        f"Given a patient's electronic healthcare record (EHR) {layout}, "
        f"retrieve relevant passages that answer the query: {question}"
    )


def instruction_for(
    spec: EncoderSpec,
    question: str | None = None,
    *,
    serializer_format: str = EMBED_FORMAT,
    override: str | None = None,
) -> str | None:
    """The instruction ``spec``'s encoder gets for a record (see the module docstring for the rule)."""
    if not spec.takes_instruction:
        return None
    if override is not None:
        return override
    if question is None or not question.strip():
        question = GENERIC_QUESTION
    return record_instruction(question, serializer_format)
