"""The teacher on a GPU, measured without its weights: a GTE-Qwen2-7B-shaped model built from its config with
random weights (speed does not depend on weight values) embeds the main job's records at 2k and 4k tokens.

Standalone on purpose: the GPU host needs only torch and transformers (no ehrembed, no model files, nothing
downloaded). Two steps:

1. Here, with ehrembed installed: ``python bench/gpu.py prepare records.jsonl`` serializes the main job's
   Eunomia records (one per patient, as of its last event, no token budget) and writes, per record, its
   length in the teacher's tokens and in the student's (``{"teacher_tokens": n, "student_tokens": m}``
   per line; no record text leaves this machine, the file is a few KB). ``--tokenizer DIR`` counts with a
   GTE-Qwen2 tokenizer folder if you have one; otherwise the local teacher's (SmolLM2), an approximation.
2. On the GPU host: ``python gpu.py run records.jsonl [--json-out gpu.json]``. For each window (2048, 4096
   teacher tokens) it feeds random token ids of each record's length (cut at the window), sorted by length
   and batched under a token budget (little padding), through the teacher in bf16 (SDPA attention, last-token
   pooling, as GTE-Qwen2 embeds), then the student (a MiniLM-L6-shaped BERT, its 256-token window) the same
   way. Reported: records/s and tokens/s (real tokens, medians over ``--repeats`` after a warm-up), padding
   share, peak GPU memory, the student / teacher ratio, and the projection for 1M patients × tasks (device hours
   at the measured rate, one record per patient and task).

``--tiny`` swaps in two-layer configs and runs on the CPU in float32: what the test suite runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

TEACHER_7B = {  # GTE-Qwen2-7B-instruct's config.json (Qwen2 architecture)
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 151646,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
}
STUDENT_MINILM = {  # all-MiniLM-L6-v2 (BERT)
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
}
TINY_TEACHER = {**TEACHER_7B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}  # fmt: skip
TINY_STUDENT = {**STUDENT_MINILM, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "vocab_size": 1000}  # fmt: skip
WINDOWS = (2048, 4096)
STUDENT_WINDOW = 256


def prepare(out: Path, tokenizer: Path | None, limit: int | None) -> dict[str, Any]:
    """Token lengths of the main job's records (Eunomia, no budget), written as JSON lines to ``out``."""
    import tempfile

    from transformers import AutoTokenizer

    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.ehr.omop import ingest_omop
    from ehrembed.ehr.serialize import Serializer, SerializerConfig
    from ehrembed.ehr.vocabulary import Vocabulary
    from ehrembed.encoders.smollm import default_teacher_folder
    from ehrembed.encoders.student import default_student_folder

    teacher_tok = AutoTokenizer.from_pretrained(str(tokenizer or default_teacher_folder()))
    student_tok = AutoTokenizer.from_pretrained(str(default_student_folder()))
    with tempfile.TemporaryDirectory() as tmp:
        ingest_omop(out=Path(tmp) / "eunomia")
        dataset = MedsDataset.open(Path(tmp) / "eunomia")
        serializer = Serializer(Vocabulary.from_dataset(dataset), SerializerConfig())
        rows = []
        for patient in dataset.iter_patients(dataset.subject_ids()[:limit] if limit else None):
            times = [e.time for e in patient.events if e.time is not None]
            if not times:
                continue
            text = serializer.serialize(patient, as_of=max(times))
            rows.append(
                {
                    "teacher_tokens": len(teacher_tok(text, add_special_tokens=False)["input_ids"]),
                    "student_tokens": len(student_tok(text, add_special_tokens=False)["input_ids"]),
                }
            )
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    lengths = sorted(r["teacher_tokens"] for r in rows)
    return {"records": len(rows), "teacher_tokens_median": lengths[len(lengths) // 2], "out": str(out)}


def _batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches whose padded size (rows × longest) stays within ``budget``."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _measure(
    model: Any, lengths: list[int], budget: int, repeats: int, device: Any, vocab: int, last: bool
) -> dict[str, Any]:
    import torch

    batches = _batches(lengths, budget)
    generator = torch.Generator().manual_seed(0)
    inputs = []
    padded = 0
    for batch in batches:
        width = max(lengths[i] for i in batch)
        ids = torch.randint(1, vocab, (len(batch), width), generator=generator)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            if last:  # left padding: the last position is every record's own last token
                mask[row, width - lengths[i] :] = 1
            else:
                mask[row, : lengths[i]] = 1
        padded += len(batch) * width
        inputs.append((ids.to(device), mask.to(device)))

    def one_pass() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            for ids, mask in inputs:
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
                pooled = hidden[:, -1] if last else (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    one_pass()  # warm-up: kernels, allocator
    seconds = statistics.median(one_pass() for _ in range(repeats))
    tokens = sum(lengths)
    return {
        "records": len(lengths),
        "batches": len(batches),
        "tokens": tokens,
        "padding_share": round(1 - tokens / padded, 4),
        "seconds": round(seconds, 4),
        "records_per_second": round(len(lengths) / seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    }


def run(records: Path, *, tiny: bool, repeats: int, budget: int, tasks: int, limit: int | None) -> dict[str, Any]:
    import torch
    from transformers import BertConfig, BertModel, Qwen2Config, Qwen2Model

    rows = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    if not rows:
        raise SystemExit(f"{records} holds no records; make it with `python bench/gpu.py prepare FILE`")
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    teacher_config = Qwen2Config(**(TINY_TEACHER if tiny else TEACHER_7B), attn_implementation="sdpa")
    student_config = BertConfig(**(TINY_STUDENT if tiny else STUDENT_MINILM), attn_implementation="sdpa")
    started = time.perf_counter()
    with torch.device(device):
        teacher = Qwen2Model(teacher_config).to(dtype).eval()
    built = time.perf_counter() - started
    parameters = sum(p.numel() for p in teacher.parameters())
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "teacher": {
            "config": "tiny" if tiny else "GTE-Qwen2-7B",
            "parameters": parameters,
            "build_seconds": round(built, 1),
        },
        "records": len(rows),
        "token_budget_per_batch": budget,
        "windows": {},
    }
    for window in WINDOWS:
        lengths = [max(1, min(r["teacher_tokens"], window)) for r in rows]
        figures = _measure(teacher, lengths, budget, repeats, device, teacher_config.vocab_size, last=True)
        figures["cut_at_window"] = sum(r["teacher_tokens"] > window for r in rows)
        out["windows"][str(window)] = figures
    del teacher
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with torch.device(device):
        student = BertModel(student_config, add_pooling_layer=False).to(dtype).eval()
    student_lengths = [max(1, min(r["student_tokens"], STUDENT_WINDOW)) for r in rows]
    out["student"] = _measure(student, student_lengths, budget, repeats, device, student_config.vocab_size, last=False)
    patients = 1_000_000
    for figures in out["windows"].values():
        rate = figures["records_per_second"]
        figures["student_ratio"] = round(out["student"]["records_per_second"] / rate, 1)
        figures["projection"] = {
            "patients": patients,
            "tasks": tasks,
            "device_hours": round(patients * tasks / rate / 3600, 1),
            "device_hours_student": round(patients * tasks / out["student"]["records_per_second"] / 3600, 2),
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="token lengths of the main job's records (needs ehrembed)")
    prep.add_argument("out", type=Path)
    prep.add_argument("--tokenizer", type=Path, default=None, help="a GTE-Qwen2 tokenizer folder, if at hand")
    prep.add_argument("--limit", type=int, default=None)
    go = sub.add_parser("run", help="embed them with random-weight models (torch + transformers only)")
    go.add_argument("records", type=Path)
    go.add_argument("--tiny", action="store_true", help="two-layer configs on the CPU (the test)")
    go.add_argument("--repeats", type=int, default=3)
    go.add_argument("--token-budget", type=int, default=32768, help="padded tokens per batch")
    go.add_argument("--tasks", type=int, default=15, help="tasks per patient in the projection")
    go.add_argument("--limit", type=int, default=None, help="use the first N records")
    go.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        result = prepare(args.out, args.tokenizer, args.limit)
    else:
        result = run(
            args.records, tiny=args.tiny, repeats=args.repeats, budget=args.token_budget, tasks=args.tasks,
            limit=args.limit,
        )  # fmt: skip
        result = {"benchmark": "gpu", "command": "python bench/gpu.py " + " ".join(argv or sys.argv[1:]), **result}
        if args.json_out is not None:
            args.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
