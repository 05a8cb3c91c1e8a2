"""Write a synthetic MEDS cohort, shard by shard, so memory does not grow with its size."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ehrembed.ehr.meds import IngestReport, append_shards, conform_events, finish_dataset
from ehrembed.fsutil import atomic_dir

from .config import ETL_NAME, SynthConfig
from .shard import Shard
from .tables import synth_codes


def generate_cohort(
    config: SynthConfig,
    out: Path,
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Write a synthetic MEDS dataset at ``out`` (atomically) and report what was written.

    Subjects are numbered 1..n; visit ids are unique across the dataset. ``progress`` is called
    with the number of subjects done after each shard.
    """
    began = time.perf_counter()
    out = Path(out)
    report = IngestReport(dataset=out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        next_vid = 1
        for shard_index, first in enumerate(range(0, config.n_subjects, config.shard_subjects)):
            n = min(config.shard_subjects, config.n_subjects - first)
            shard = Shard(config, shard_index, first + 1, next_vid, n)
            frame = shard.run()
            next_vid += len(shard.v)
            counts = shard.counts
            del shard
            frame = conform_events(frame, source=config.dataset_name)
            append_shards(tmp, [frame], shard_subjects=config.shard_subjects)
            report.n_events += frame.height
            for key, value in counts.items():
                report.counts[key] = report.counts.get(key, 0) + value
            del frame
            if progress is not None:
                progress(first + n)
        finish_dataset(
            tmp,
            synth_codes(),
            dataset_name=config.dataset_name,
            etl_name=ETL_NAME,
            extra_metadata={"synth_config": config.as_dict()},
        )
    report.n_subjects = config.n_subjects
    report.counts["subjects"] = config.n_subjects
    report.seconds = time.perf_counter() - began
    return report
