"""Descriptions from an OMOP vocabulary export (Athena's CONCEPT.csv) for codes a dataset leaves raw."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from ehrembed import schema as s
from ehrembed.cli import app
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.synth import SynthConfig, generate_cohort
from ehrembed.ehr.vocabulary import Vocabulary, coverage_by_vocabulary

runner = CliRunner()
HEADER = "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\tstandard_concept\tconcept_code\n"


def test_a_vocabulary_export_fills_what_the_dataset_lacks(tmp_path: Path) -> None:
    generate_cohort(SynthConfig(n_subjects=50, seed=3), tmp_path / "meds")
    dataset = MedsDataset.open(tmp_path / "meds")
    codes = dataset.codes()
    loinc = codes.filter(pl.col(s.CODE).str.starts_with("LOINC/")).get_column(s.CODE).to_list()
    kept = "LOINC/2160-0"
    blanked = codes.with_columns(  # like EHRSHOT's MEDS release: no LOINC descriptions but one
        pl.when(pl.col(s.CODE).str.starts_with("LOINC/") & (pl.col(s.CODE) != kept))
        .then(None)
        .otherwise(pl.col(s.DESCRIPTION))
        .alias(s.DESCRIPTION)
    )
    blanked.write_parquet(dataset.root / s.CODES_FILE)
    assert coverage_by_vocabulary(dataset)["LOINC"]["codes_described"] == 1
    rows = [
        f'{i}\tName of {c} "quoted"\tMeasurement\tLOINC\tLab Test\tS\t{c.removeprefix("LOINC/")}\n'
        for i, c in enumerate(loinc)
    ]
    rows.append("99\tSomething else\tCondition\tSNOMED\tClinical Finding\tS\t123\n")
    concept = tmp_path / "CONCEPT.csv"
    concept.write_text(HEADER + "".join(rows))

    result = runner.invoke(app, ["describe-codes", str(dataset.root), "--concepts", str(concept), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["filled"] == len(loinc) - 1
    assert report["after"]["LOINC"]["codes_described"] == report["after"]["LOINC"]["codes"]
    vocabulary = Vocabulary.from_dataset(dataset)
    other = next(c for c in loinc if c != kept)
    assert vocabulary.describe(other) == f'Name of {other} "quoted"'
    assert vocabulary.describe(kept) == codes.filter(pl.col(s.CODE) == kept).get_column(s.DESCRIPTION).item()


def test_an_export_without_the_concept_columns_is_refused(tmp_path: Path) -> None:
    generate_cohort(SynthConfig(n_subjects=5, seed=3), tmp_path / "meds")
    bad = tmp_path / "CONCEPT.csv"
    bad.write_text("concept_id\tname\n1\tx\n")
    before = (tmp_path / "meds" / s.CODES_FILE).read_bytes()
    result = runner.invoke(app, ["describe-codes", str(tmp_path / "meds"), "--concepts", str(bad)])
    assert result.exit_code == 2 and "concept_name" in result.output
    assert (tmp_path / "meds" / s.CODES_FILE).read_bytes() == before  # nothing stored changes
