"""Encoder throughput: teacher vs student (torch) vs student (ONNX int8) on the same records.

The same Eunomia records (serialized once, within the budget) go through every encoder at the
same ``--max-tokens``. Each encoder runs in its own process so its peak RSS is its own; records/s
and tokens/s are medians over ``--repeats`` passes after one warm-up pass, measured in one run. The
int8 student's agreement with the torch student is the cosine of their vectors for the same records
(mean and min). Targets: the fastest student ≥ 20× the teacher, int8 ≥ 2× torch at cosine ≥ 0.99.

    python bench/encode.py [--records 64] [--max-tokens 256] [--repeats 3] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb, save, summary

ENCODERS = ("teacher", "student", "student-onnx")


def _records(n: int, max_tokens: int) -> list[str]:
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.ehr.omop import ingest_omop
    from ehrembed.ehr.serialize import Serializer, SerializerConfig
    from ehrembed.ehr.tokens import load_token_counter
    from ehrembed.ehr.vocabulary import Vocabulary

    with tempfile.TemporaryDirectory() as tmp:
        ingest_omop(out=Path(tmp) / "eunomia")
        dataset = MedsDataset.open(Path(tmp) / "eunomia")
        serializer = Serializer(
            Vocabulary.from_dataset(dataset), SerializerConfig(max_tokens=max_tokens), load_token_counter()
        )
        texts = []
        for patient in dataset.iter_patients(dataset.subject_ids()[:n]):
            as_of = max(e.time for e in patient.events if e.time is not None)
            texts.append(serializer.serialize(patient, as_of=as_of or dt.datetime(2019, 1, 1)))
    return texts


def _run(name: str, texts: list[str], max_tokens: int, repeats: int, home: str, queue: Any) -> None:
    import os

    os.environ["EHREMBED_HOME"] = home
    from ehrembed.encoders import load_encoder

    started = time.perf_counter()
    encoder = load_encoder(name, max_tokens=max_tokens)
    load_seconds = time.perf_counter() - started
    tokens = sum(min(n, max_tokens) for n in encoder.count_tokens(texts))
    instruction = "Given a patient's electronic healthcare record, represent the patient's health state"
    encoder.encode(texts[:8], instruction=instruction, batch_size=8)  # warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        vectors = encoder.encode(texts, instruction=instruction, batch_size=16)
        seconds.append(time.perf_counter() - started)
    queue.put(
        {
            "encoder": encoder.spec.name,
            "kind": encoder.spec.kind,
            "dim": encoder.spec.dim,
            "load_seconds": round(load_seconds, 2),
            "seconds": summary(seconds),
            "records_per_second": len(texts) / statistics.median(seconds),
            "tokens_per_second": tokens / statistics.median(seconds),
            "tokens": tokens,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "torch_threads": sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None,
            "vectors": vectors.tolist(),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--encoders", nargs="*", default=list(ENCODERS))
    parser.add_argument("--home", default=None, help="data home for converted models (default: EHREMBED_HOME)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    from ehrembed.settings import get_settings

    home = args.home or str(get_settings().home)
    texts = _records(args.records, args.max_tokens)
    context = mp.get_context("spawn")
    results: dict[str, Any] = {}
    vectors: dict[str, np.ndarray] = {}
    for name in args.encoders:
        queue = context.Queue()
        process = context.Process(target=_run, args=(name, texts, args.max_tokens, args.repeats, home, queue))
        process.start()
        results[name] = queue.get()
        process.join()
        vectors[name] = np.asarray(results[name].pop("vectors"), dtype=np.float32)
        print(f"{name:<14} {results[name]['records_per_second']:8.2f} records/s", file=sys.stderr)
    ratios: dict[str, float] = {}
    if {"teacher", "student"} <= results.keys():
        ratios["student_torch_vs_teacher"] = (
            results["student"]["records_per_second"] / results["teacher"]["records_per_second"]
        )
    if {"teacher", "student-onnx"} <= results.keys():
        ratios["student_onnx_vs_teacher"] = (
            results["student-onnx"]["records_per_second"] / results["teacher"]["records_per_second"]
        )
    if {"student", "student-onnx"} <= results.keys():
        ratios["onnx_int8_vs_torch_student"] = (
            results["student-onnx"]["records_per_second"] / results["student"]["records_per_second"]
        )
    agreement: dict[str, dict[str, float]] = {}
    if {"student", "student-onnx"} <= vectors.keys():
        from ehrembed.encoders.base import l2_normalize

        # row-wise cosine: the same records through both students
        cosines = (l2_normalize(vectors["student-onnx"]) * l2_normalize(vectors["student"])).sum(axis=1)
        agreement["onnx_int8_vs_torch_student"] = {
            "mean": round(float(cosines.mean()), 4),
            "min": round(float(cosines.min()), 4),
        }
        print(f"int8 vs torch student cosine: mean {cosines.mean():.4f}, min {cosines.min():.4f}", file=sys.stderr)
    save(
        "encode",
        {
            "dataset": "eunomia",
            "records": len(texts),
            "max_tokens": args.max_tokens,
            "repeats": args.repeats,
            "encoders": results,
            "ratios": {k: round(v, 2) for k, v in ratios.items()},
            "cosine": agreement,
            "targets": {
                "fastest_student_vs_teacher": 20.0,
                "onnx_int8_vs_torch_student": 2.0,
                "onnx_int8_cosine_to_torch_student": 0.99,
            },
        },
        args.json_out,
    )


if __name__ == "__main__":
    main()
