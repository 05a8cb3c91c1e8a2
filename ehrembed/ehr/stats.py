"""Dataset summary for ``ehrembed info`` and the main job: sizes, time span, splits, coverage."""

from __future__ import annotations

from typing import Any

import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.vocabulary import Vocabulary, code_counts, coverage, coverage_by_vocabulary


def dataset_stats(dataset: MedsDataset, vocabulary: Vocabulary | None = None) -> dict[str, Any]:
    """A JSON-ready summary of a MEDS folder (no record content, only counts and code names)."""
    vocabulary = vocabulary or Vocabulary.from_dataset(dataset)
    lazy = dataset.scan()
    totals = (
        lazy.select(
            pl.len().alias("events"),
            pl.col(s.SUBJECT_ID).n_unique().alias("subjects"),
            pl.col(s.CODE).n_unique().alias("codes"),
            pl.col(s.TIME).min().alias("first"),
            pl.col(s.TIME).max().alias("last"),
            pl.col(s.NUMERIC_VALUE).is_not_null().sum().alias("numeric"),
        )
        .collect()
        .row(0, named=True)
    )
    per_subject = (
        lazy.group_by(s.SUBJECT_ID)
        .agg(pl.len().alias("n"))
        .select(pl.col("n").median().alias("median"), pl.col("n").max().alias("max"))
        .collect()
        .row(0, named=True)
    )
    splits = dataset.splits().group_by(s.SPLIT).agg(pl.len().alias("n")).sort(s.SPLIT)
    counts = code_counts(dataset)
    top = counts.sort(["n", s.CODE], descending=[True, False]).head(10)
    domains: dict[str, int] = {}
    for code, n in counts.iter_rows():
        domain = str(vocabulary.domain(code))
        domains[domain] = domains.get(domain, 0) + n
    cov = coverage(dataset, vocabulary, counts=counts)
    return {
        "dataset": dataset.name,
        "path": str(dataset.root),
        "subjects": totals["subjects"],
        "events": totals["events"],
        "codes": totals["codes"],
        "numeric_values": totals["numeric"],
        "events_per_subject": {"median": per_subject["median"], "max": per_subject["max"]},
        "time_range": [
            totals["first"].isoformat() if totals["first"] else None,
            totals["last"].isoformat() if totals["last"] else None,
        ],
        "splits": dict(splits.iter_rows()),
        "events_by_domain": dict(sorted(domains.items(), key=lambda kv: -kv[1])),
        "top_codes": [
            {"code": code, "description": vocabulary.describe(code), "events": n} for code, n in top.iter_rows()
        ],
        "description_coverage": cov.as_dict(),
        "coverage_by_vocabulary": coverage_by_vocabulary(dataset, vocabulary, counts=counts),
    }
