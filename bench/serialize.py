"""Serializer throughput on one core: Eunomia records per second, with and without a budget.

Each patient is serialized as of its last event (its whole history, the worst case). Reports the
median over repeats of the records/s of a full pass, per configuration, measured in one run.

    python bench/serialize.py [--repeats 3] [--budgets 256 512 2048] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core: keep the tokenizer single-threaded too
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb, save, summary

from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.omop import ingest_omop
from ehrembed.ehr.serialize import Serializer, SerializerConfig
from ehrembed.ehr.tokens import load_token_counter
from ehrembed.ehr.vocabulary import Vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budgets", type=int, nargs="*", default=[256, 512, 2048])
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory() as tmp:
        ingest_omop(out=Path(tmp) / "eunomia")
        dataset = MedsDataset.open(Path(tmp) / "eunomia")
        vocabulary = Vocabulary.from_dataset(dataset)
        patients = list(dataset.iter_patients())
    as_of = {p.subject_id: max(e.time for e in p.events if e.time is not None) for p in patients}
    counter = load_token_counter()
    configs = {"markdown": SerializerConfig(), "list": SerializerConfig(format="list")}
    configs.update({f"markdown_{b}_tokens": SerializerConfig(max_tokens=b) for b in args.budgets})
    results: dict[str, object] = {}
    for name, config in configs.items():
        serializer = Serializer(vocabulary, config, counter if config.max_tokens else None)
        rates: list[float] = []
        truncated = chars = 0
        for _ in range(args.repeats):
            truncated = chars = 0
            started = time.perf_counter()
            for patient in patients:
                result = serializer.serialize_with_stats(patient, as_of=as_of[patient.subject_id])
                truncated += result.truncated
                chars += len(result.text)
            rates.append(len(patients) / (time.perf_counter() - started))
        results[name] = {
            "records_per_second": summary(rates),
            "truncated_records": truncated,
            "mean_chars": round(chars / len(patients)),
        }
        print(f"{name:<24} {summary(rates)['median']:8.0f} records/s", file=sys.stderr)
    save(
        "serialize",
        {
            "dataset": "eunomia",
            "records": len(patients),
            "events_per_record_mean": round(sum(len(p.events) for p in patients) / len(patients), 1),
            "cores": 1,
            "configs": results,
            "target_records_per_second": 200,
            "peak_rss_mb": round(peak_rss_mb(), 1),
        },
        args.json_out,
    )


if __name__ == "__main__":
    main()
