"""Shared fixtures: an isolated data home for every test, and Eunomia ingested once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrembed.ehr.meds import IngestReport, MedsDataset
from ehrembed.ehr.omop import ingest_omop


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's ~/.ehrembed or a configured database."""
    monkeypatch.setenv("EHREMBED_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EHREMBED_DATABASE_URL", raising=False)


@pytest.fixture(scope="session")
def eunomia_ingest(tmp_path_factory: pytest.TempPathFactory) -> tuple[MedsDataset, IngestReport]:
    out = tmp_path_factory.mktemp("eunomia") / "meds"
    report = ingest_omop(out=out)
    return MedsDataset.open(out), report


@pytest.fixture(scope="session")
def eunomia(eunomia_ingest: tuple[MedsDataset, IngestReport]) -> MedsDataset:
    return eunomia_ingest[0]
