"""Vocabulary lookups (metadata → packages → raw) and coverage reporting."""

from __future__ import annotations

import polars as pl
import pytest

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset, write_dataset
from ehrembed.ehr.vocabulary import Vocabulary, coverage, package_description


def test_lookup_order_metadata_then_packages_then_raw() -> None:
    vocab = Vocabulary(descriptions={"ICD10CM/E11.9": "Diabetes (site wording)"})
    assert vocab.lookup("ICD10CM/E11.9") == ("Diabetes (site wording)", "metadata")
    assert vocab.lookup("ICD10CM/I10") == ("Essential (primary) hypertension", "package")
    assert vocab.lookup("LOINC/0000-0") == (None, "raw")
    assert vocab.label("LOINC/0000-0") == "LOINC/0000-0"
    assert Vocabulary(use_packages=False).lookup("ICD10CM/I10") == (None, "raw")


def test_offline_packages_cover_icd9_and_icd10_pcs() -> None:
    assert package_description("ICD10CM/E119") == "Type 2 diabetes mellitus without complications"
    assert package_description("ICD9CM/250.00") is not None and "Diabetes" in package_description("ICD9CM/250.00")
    assert package_description("ICD9Proc/00.01") == "Therapeutic ultrasound of vessels of head and neck"
    assert package_description("ICD10PCS/0016070") is not None
    assert package_description("ICD10CM/NOT-A-CODE") is None
    assert package_description("no-prefix") is None


def test_domains_from_metadata_then_prefix() -> None:
    vocab = Vocabulary(domains={"SNOMED/1": "Procedure"})
    assert vocab.domain("SNOMED/1") == s.Domain.PROCEDURE
    assert vocab.domain("SNOMED/2") == s.Domain.OTHER
    assert vocab.domain("RxNorm/1") == s.Domain.DRUG
    assert vocab.domain("LOINC/2160-0") == s.Domain.MEASUREMENT
    assert vocab.domain(s.VISIT_END_CODE) == s.Domain.VISIT


def test_coverage_counts_events_and_codes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    events = pl.DataFrame(
        {
            s.SUBJECT_ID: [1, 1, 1, 2],
            s.TIME: [None, None, None, None],
            s.CODE: ["ICD10CM/I10", "ICD10CM/I10", "X/unknown", "SITE/1"],
        },
        schema={s.SUBJECT_ID: pl.Int64, s.TIME: pl.Datetime("us"), s.CODE: pl.String},
    )
    codes = pl.DataFrame({s.CODE: ["SITE/1"], s.DESCRIPTION: ["Local code"]})
    write_dataset(tmp_path / "d", events, codes, dataset_name="t", etl_name="test")
    cov = coverage(MedsDataset.open(tmp_path / "d"))
    assert cov.events_by_source == {"metadata": 1, "package": 2, "raw": 1}
    assert cov.event_coverage == 0.75 and cov.code_coverage == pytest.approx(2 / 3)
    assert cov.top_undescribed == [("X/unknown", 1)]
