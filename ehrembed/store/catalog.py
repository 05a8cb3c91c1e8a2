"""Record a MEDS folder in the store: its size, fingerprint and every subject's split."""

from __future__ import annotations

import polars as pl
from sqlalchemy.orm import Session

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.fsutil import sha256_file
from ehrembed.store.repository import register_dataset
from ehrembed.store.tables import Dataset, DatasetSource


def register_meds(
    session: Session, dataset: MedsDataset, source: DatasetSource | str, name: str | None = None
) -> Dataset:
    """Upsert ``dataset`` under ``name`` (default: its metadata name) with its subjects and splits."""
    splits = dataset.splits()
    source_ids = dataset.source_ids()
    if source_ids is not None:
        splits = splits.join(source_ids, on=s.SUBJECT_ID, how="left")
    else:
        splits = splits.with_columns(pl.lit(None, dtype=pl.String).alias(s.SOURCE_ID))
    n_events = dataset.scan().select(pl.len()).collect().item()
    return register_dataset(
        session,
        name=name or dataset.name,
        path=str(dataset.root.resolve()),
        source=source,
        n_subjects=splits.height,
        n_events=int(n_events),
        fingerprint=sha256_file(dataset.root),
        meta=dataset.metadata,
        splits=splits,
    )
