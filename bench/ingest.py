"""Eunomia OMOP CDM → MEDS: wall time (median of repeats) and description coverage.

python bench/ingest.py [--repeats 5] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb, save, summary

from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.omop import ingest_omop
from ehrembed.ehr.vocabulary import coverage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            started = time.perf_counter()
            report = ingest_omop(out=Path(tmp) / f"run{i}")
            seconds.append(time.perf_counter() - started)
        cov = coverage(MedsDataset.open(Path(tmp) / "run0"))
    save(
        "ingest",
        {
            "dataset": "eunomia",
            "subjects": report.n_subjects,
            "events": report.n_events,
            "seconds": summary(seconds),
            "events_per_second": report.n_events / summary(seconds)["median"],
            "event_description_coverage": round(cov.event_coverage, 4),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        },
        args.json_out,
    )


if __name__ == "__main__":
    main()
