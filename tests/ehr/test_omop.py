"""OMOP CDM → MEDS: Eunomia end to end, hand-made CSV extracts, and bad input."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest
from meds import CodeMetadataSchema, DataSchema, SubjectSplitSchema

from ehrembed import schema as s
from ehrembed.ehr.meds import IngestReport, MedsDataset
from ehrembed.ehr.omop import OmopError, ingest_omop
from ehrembed.ehr.vocabulary import coverage

CODE_RE = re.compile(r"^(MEDS_[A-Z_]+|[A-Za-z0-9]+/\S.*)$")


def test_eunomia_ingests_all_persons_with_descriptions(
    eunomia_ingest: tuple[MedsDataset, IngestReport],
) -> None:
    dataset, report = eunomia_ingest
    events = dataset.scan().collect()
    assert report.n_subjects == 2694 == events.get_column(s.SUBJECT_ID).n_unique()
    assert report.n_events == events.height > 200_000
    assert coverage(dataset).event_coverage >= 0.95
    assert all(CODE_RE.match(c) for c in events.get_column(s.CODE).unique().to_list())
    births = events.filter(pl.col(s.CODE) == s.BIRTH_CODE)
    assert births.height == 2694 and births.get_column(s.SUBJECT_ID).n_unique() == 2694
    assert events.filter(pl.col(s.CODE).str.starts_with("Gender/")).get_column(s.TIME).is_null().all()
    assert "SNOMED/" in " ".join(events.get_column(s.CODE).unique().to_list())


def test_eunomia_files_follow_the_meds_schema(eunomia: MedsDataset) -> None:
    for shard in eunomia.shards:
        DataSchema.validate(pq.read_table(shard))
    CodeMetadataSchema.validate(pq.read_table(eunomia.root / s.CODES_FILE))
    SubjectSplitSchema.validate(pq.read_table(eunomia.root / s.SPLITS_FILE))
    assert eunomia.metadata["etl_name"] == "ehrembed.omop"
    frame = eunomia.scan().collect()
    ordered = frame.sort([s.SUBJECT_ID, s.TIME], nulls_last=False, maintain_order=True)
    assert frame.select(s.SUBJECT_ID, s.TIME).equals(ordered.select(s.SUBJECT_ID, s.TIME))


def test_eunomia_visits_have_start_and_end(eunomia: MedsDataset) -> None:
    events = eunomia.scan().collect()
    starts = events.filter(pl.col(s.CODE).str.starts_with("Visit/")).select(s.VISIT_ID, pl.col(s.TIME).alias("start"))
    ends = events.filter(pl.col(s.CODE) == s.VISIT_END_CODE).select(s.VISIT_ID, pl.col(s.TIME).alias("end"))
    joined = starts.join(ends, on=s.VISIT_ID)
    assert joined.height == starts.height == 1037
    assert (joined["end"] >= joined["start"]).all()


def test_eunomia_codes_carry_domains_and_ancestors(eunomia: MedsDataset) -> None:
    codes = eunomia.codes()
    bleed = codes.filter(pl.col(s.CODE) == "SNOMED/74474003").row(0, named=True)  # GI hemorrhage
    assert bleed[s.DESCRIPTION] == "Gastrointestinal hemorrhage"
    assert bleed[s.DOMAIN] == "Condition"
    assert bleed[s.OMOP_CONCEPT_ID] == 192671
    assert len(bleed[s.OMOP_ANCESTOR_IDS]) > 0
    assert codes.filter(pl.col(s.CODE) == "Gender/F").item(0, s.DOMAIN) == "Demographic"


def _write_csv(folder: Path, name: str, rows: list[dict[str, object]]) -> None:
    pl.DataFrame(rows).write_csv(folder / f"{name}.csv")


@pytest.fixture
def small_cdm(tmp_path: Path) -> Path:
    """A hand-made CDM extract with upper-case headers, as many warehouses export them."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    _write_csv(
        folder,
        "PERSON",
        [
            {
                "PERSON_ID": 1,
                "GENDER_CONCEPT_ID": 8532,
                "YEAR_OF_BIRTH": 1950,
                "MONTH_OF_BIRTH": 3,
                "DAY_OF_BIRTH": 4,
            },
            {
                "PERSON_ID": 2,
                "GENDER_CONCEPT_ID": 8507,
                "YEAR_OF_BIRTH": 1980,
                "MONTH_OF_BIRTH": None,
                "DAY_OF_BIRTH": None,
            },
        ],
    )
    _write_csv(
        folder,
        "concept",
        [
            {
                "concept_id": 201826,
                "concept_name": "Type 2 diabetes mellitus",
                "domain_id": "Condition",
                "vocabulary_id": "SNOMED",
                "concept_code": "44054006",
            },
            {
                "concept_id": 3016723,
                "concept_name": "Creatinine [Mass/volume] in Serum or Plasma",
                "domain_id": "Measurement",
                "vocabulary_id": "LOINC",
                "concept_code": "2160-0",
            },
            {
                "concept_id": 8840,
                "concept_name": "milligram per deciliter",
                "domain_id": "Unit",
                "vocabulary_id": "UCUM",
                "concept_code": "mg/dL",
            },
            {
                "concept_id": 9201,
                "concept_name": "Inpatient Visit",
                "domain_id": "Visit",
                "vocabulary_id": "Visit",
                "concept_code": "IP",
            },
        ],
    )
    _write_csv(
        folder,
        "visit_occurrence",
        [
            {
                "visit_occurrence_id": 10,
                "person_id": 1,
                "visit_concept_id": 9201,
                "visit_start_date": "2020-01-01",
                "visit_end_date": "2020-01-05",
            }
        ],
    )
    _write_csv(
        folder,
        "condition_occurrence",
        [
            {
                "condition_occurrence_id": 100,
                "person_id": 1,
                "condition_concept_id": 201826,
                "condition_start_date": "2020-01-02",
                "visit_occurrence_id": 10,
            },
            {
                "condition_occurrence_id": 101,
                "person_id": 2,
                "condition_concept_id": 0,
                "condition_start_date": "2021-05-05",
                "visit_occurrence_id": None,
            },
        ],
    )
    _write_csv(
        folder,
        "measurement",
        [
            {
                "measurement_id": 7,
                "person_id": 1,
                "measurement_concept_id": 3016723,
                "measurement_date": "2020-01-03",
                "value_as_number": 2.4,
                "unit_concept_id": 8840,
                "range_low": 0.6,
                "range_high": 1.2,
                "visit_occurrence_id": 10,
            }
        ],
    )
    return folder


def test_csv_folder_extract(small_cdm: Path, tmp_path: Path) -> None:
    report = ingest_omop(folder=small_cdm, out=tmp_path / "out")
    dataset = MedsDataset.open(tmp_path / "out")
    events = dataset.scan().collect()
    assert report.n_subjects == 2
    assert report.skipped == {"condition_occurrence: concept 0 (no standard or source concept)": 1}
    lab = events.filter(pl.col(s.CODE) == "LOINC/2160-0").row(0, named=True)
    assert lab[s.NUMERIC_VALUE] == pytest.approx(2.4)
    assert lab[s.UNIT] == "mg/dL" and lab[s.REF_HIGH] == pytest.approx(1.2) and lab[s.VISIT_ID] == 10
    end = events.filter(pl.col(s.CODE) == s.VISIT_END_CODE).row(0, named=True)
    assert end[s.TIME] == dt.datetime(2020, 1, 5, 23, 59, 59) and end[s.TEXT_VALUE] == "Visit/IP"
    birth = events.filter((pl.col(s.CODE) == s.BIRTH_CODE) & (pl.col(s.SUBJECT_ID) == 2)).item(0, s.TIME)
    assert birth == dt.datetime(1980, 1, 1)
    assert (
        dataset.codes().filter(pl.col(s.CODE) == "SNOMED/44054006").item(0, s.DESCRIPTION) == "Type 2 diabetes mellitus"
    )
    assert any("drug_exposure" in w for w in report.warnings)


def test_missing_person_table(tmp_path: Path) -> None:
    folder = tmp_path / "cdm"
    folder.mkdir()
    _write_csv(
        folder,
        "concept",
        [
            {
                "concept_id": 1,
                "concept_name": "x",
                "domain_id": "Condition",
                "vocabulary_id": "SNOMED",
                "concept_code": "1",
            }
        ],
    )
    with pytest.raises(OmopError, match="person table is required"):
        ingest_omop(folder=folder, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_column_names_table_and_column(small_cdm: Path, tmp_path: Path) -> None:
    _write_csv(small_cdm, "drug_exposure", [{"person_id": 1, "drug_concept_id": 5}])
    with pytest.raises(OmopError, match=r"table drug_exposure lacks required column\(s\) drug_exposure_start_date"):
        ingest_omop(folder=small_cdm, out=tmp_path / "out")


def test_duplicate_person_is_an_error(small_cdm: Path, tmp_path: Path) -> None:
    _write_csv(small_cdm, "PERSON", [{"PERSON_ID": 1, "GENDER_CONCEPT_ID": 8532, "YEAR_OF_BIRTH": 1950}] * 2)
    with pytest.raises(OmopError, match="person_id 1 on 2 rows"):
        ingest_omop(folder=small_cdm, out=tmp_path / "out")


def test_row_without_date_names_the_row_unless_lenient(small_cdm: Path, tmp_path: Path) -> None:
    _write_csv(
        small_cdm,
        "condition_occurrence",
        [
            {
                "condition_occurrence_id": 555,
                "person_id": 1,
                "condition_concept_id": 201826,
                "condition_start_date": None,
            }
        ],
    )
    with pytest.raises(OmopError, match=r"condition_occurrence row condition_occurrence_id=555 .*--lenient"):
        ingest_omop(folder=small_cdm, out=tmp_path / "out")
    report = ingest_omop(folder=small_cdm, out=tmp_path / "out", lenient=True)
    assert report.skipped["condition_occurrence: no date"] == 1


def test_failed_overwrite_keeps_the_previous_dataset(small_cdm: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest_omop(folder=small_cdm, out=out)
    before = sorted(p.name for p in (out / "data").iterdir())
    _write_csv(small_cdm, "PERSON", [{"PERSON_ID": 1, "GENDER_CONCEPT_ID": 8532, "YEAR_OF_BIRTH": 1950}] * 2)
    with pytest.raises(OmopError):
        ingest_omop(folder=small_cdm, out=out, overwrite=True)
    assert sorted(p.name for p in (out / "data").iterdir()) == before
    assert MedsDataset.open(out).scan().collect().height > 0
    with pytest.raises(FileExistsError):
        ingest_omop(folder=small_cdm, out=out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no scratch folders left behind"


def test_header_row_loaded_as_data_is_repaired(tmp_path: Path) -> None:
    db = tmp_path / "cdm.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE person (PERSON_ID BIGINT, GENDER_CONCEPT_ID BIGINT, YEAR_OF_BIRTH BIGINT)")
    con.execute("INSERT INTO person VALUES (1, 8532, 1940), (2, 8507, 1941)")
    con.execute("CREATE TABLE death (column0 VARCHAR, column1 VARCHAR)")
    con.execute("INSERT INTO death VALUES ('PERSON_ID', 'DEATH_DATE'), ('2', '2001-02-03')")
    con.close()
    report = ingest_omop(duckdb_file=db, out=tmp_path / "out")
    assert report.counts["death"] == 1
    deaths = MedsDataset.open(tmp_path / "out").scan().filter(pl.col(s.CODE) == s.DEATH_CODE).collect()
    assert deaths.rows() == [(2, dt.datetime(2001, 2, 3), s.DEATH_CODE, None, None, None, None, None, None)]


def test_missing_duckdb_file(tmp_path: Path) -> None:
    with pytest.raises(OmopError, match="not found"):
        ingest_omop(duckdb_file=tmp_path / "nope.duckdb", out=tmp_path / "out")
