"""Benchmark the synthetic cohort generator: time, events/s, size on disk and peak memory.

Run ``.venv/bin/python bench/synth.py --n 100000``; figures go to stdout and bench/results/synth.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb, save

from ehrembed.ehr.synth import SynthConfig, generate_cohort


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="subjects to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-subjects", type=int, default=SynthConfig.shard_subjects)
    parser.add_argument("--out", type=Path, default=None, help="dataset folder (default: a temp dir, removed)")
    parser.add_argument("--json-out", type=Path, default=None, help="default: bench/results/synth.json")
    args = parser.parse_args(argv)

    scratch = None
    out = args.out
    if out is None:
        scratch = Path(tempfile.mkdtemp(prefix="ehrembed-synth-"))
        out = scratch / "cohort"
    try:
        config = SynthConfig(n_subjects=args.n, seed=args.seed, shard_subjects=args.shard_subjects)
        report = generate_cohort(config, out, overwrite=True)
        result = {
            "n_subjects": report.n_subjects,
            "n_events": report.n_events,
            "events_per_subject": round(report.n_events / report.n_subjects, 1),
            "seconds": round(report.seconds, 2),
            "events_per_s": round(report.n_events / report.seconds),
            "subjects_per_s": round(report.n_subjects / report.seconds),
            "size_mb": round(_size_mb(out), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "shard_subjects": config.shard_subjects,
            "seed": config.seed,
            "counts": report.counts,
        }
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    save("synth", result, args.json_out)
    return result


if __name__ == "__main__":
    main()
