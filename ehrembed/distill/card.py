"""Run cards for distilled students: ``distill.json`` and the ``README.md`` model card.

The card names the teacher (name, spec fingerprint), the data (fingerprints, record counts), the
losses and their weights, teacher agreement before and after, per-epoch history and the package
versions. It is plain Markdown with a Hugging Face YAML header; nothing in it needs ehrembed.
"""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, Any]], header: tuple[str, str] = ("", "")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in rows]
    return "\n".join(lines)


def render_model_card(card: dict[str, Any]) -> str:
    """Markdown model card for a distilled sentence-transformers student, from the ``distill.json`` dict."""
    teacher = card.get("teacher", {})
    data = card.get("data", {})
    metrics = card.get("metrics", {})
    losses = card.get("losses", {})
    student = card.get("student", {})
    teacher_name = teacher.get("name") or "unnamed teacher"
    parts = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags:",
        "- sentence-transformers",
        "- feature-extraction",
        "- knowledge-distillation",
        "- ehr",
        "- ehrembed",
        "---",
        "",
        f"# Distilled EHR student of {teacher_name}",
        "",
        "A sentence-transformers model distilled by ehrembed from the teacher vectors of serialized "
        "(Markdown) patient records. It is a standard sentence-transformers folder: no ehrembed needed.",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("path/to/this/folder")',
        "vectors = model.encode(records)  # records: Markdown patient records, as at training time",
        "```",
        "",
        "## Teacher",
        "",
        _table([(k, v) for k, v in teacher.items() if not isinstance(v, dict)], ("field", "value")),
        "",
        "## Student",
        "",
        _table(list(student.items()), ("field", "value")),
        "",
        "## Data",
        "",
        _table(list(data.items()), ("field", "value")),
        "",
        "## Losses",
        "",
        _table(list(losses.items()), ("term", "weight / setting")),
        "",
        "## Teacher agreement on held-out records",
        "",
        "MSE is the mean squared difference per element between student output and teacher vector; "
        "cosine is the mean row-wise cosine similarity.",
        "",
        "| | before | after (best epoch) |",
        "|---|---|---|",
        f"| val MSE | {_fmt(metrics.get('initial', {}).get('mse'))} | {_fmt(metrics.get('final', {}).get('mse'))} |",
        f"| val cosine | {_fmt(metrics.get('initial', {}).get('cosine'))} "
        f"| {_fmt(metrics.get('final', {}).get('cosine'))} |",
        "",
        f"Best epoch: {_fmt(metrics.get('best_epoch'))}; steps: {_fmt(metrics.get('steps'))}; "
        f"stopped early: {_fmt(metrics.get('stopped_early'))}.",
        "",
        "| epoch | step | train loss | val MSE | val cosine | val overlap@10 |",
        "|---|---|---|---|---|---|",
    ]
    for row in card.get("history", []):
        parts.append(
            f"| {row['epoch']} | {row['step']} | {_fmt(row.get('train_loss'))} "
            f"| {_fmt(row['val_mse'])} | {_fmt(row['val_cosine'])} | {_fmt(row.get('val_overlap'))} |"
        )
    config = card.get("config", {})
    parts += [
        "",
        "## Training configuration",
        "",
        _table(list(config.items()), ("setting", "value")),
        "",
        "## Versions",
        "",
        _table(list(card.get("versions", {}).items()), ("package", "version")),
        "",
    ]
    return "\n".join(parts)
