"""The synthetic cohort generator: a valid, deterministic MEDS folder with planted signal."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import meds
import polars as pl
import pyarrow.parquet as pq
import pytest
import simple_icd_10_cm as icd

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.synth import SynthConfig, generate_cohort, synth_codes
from ehrembed.fsutil import sha256_file

N = 500
CONFIG = SynthConfig(n_subjects=N, seed=7, shard_subjects=200)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    done: list[int] = []
    report = generate_cohort(CONFIG, out, progress=done.append)
    assert report.n_subjects == N
    assert done == [200, 400, 500]
    assert report.n_events == MedsDataset.open(out).scan().select(pl.len()).collect().item()
    return out


@pytest.fixture(scope="module")
def events(cohort: Path) -> pl.DataFrame:
    return MedsDataset.open(cohort).scan().collect()


@pytest.fixture(scope="module")
def visits(events: pl.DataFrame) -> pl.DataFrame:
    starts = events.filter(pl.col(s.CODE).str.starts_with("Visit/")).select(
        s.SUBJECT_ID, s.VISIT_ID, pl.col(s.CODE).alias("kind"), pl.col(s.TIME).alias("start")
    )
    ends = events.filter(pl.col(s.CODE) == s.VISIT_END_CODE).select(
        s.VISIT_ID, pl.col(s.TEXT_VALUE).alias("end_kind"), pl.col(s.TIME).alias("end")
    )
    return starts.join(ends, on=s.VISIT_ID, how="full", coalesce=True)


def _first(events: pl.DataFrame, code: str) -> pl.DataFrame:
    return events.filter(pl.col(s.CODE) == code).group_by(s.SUBJECT_ID).agg(pl.col(s.TIME).min().alias("dx"))


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        SynthConfig(n_subjects=0)
    with pytest.raises(ValueError):
        SynthConfig(start=dt.date(2020, 1, 1), end=dt.date(2019, 1, 1))


def test_same_seed_same_bytes_other_seed_other_data(cohort: Path, tmp_path: Path) -> None:
    again = generate_cohort(CONFIG, tmp_path / "again")
    assert sha256_file(cohort / s.DATA_DIR) == sha256_file(again.dataset / s.DATA_DIR)
    other = generate_cohort(SynthConfig(n_subjects=N, seed=8, shard_subjects=200), tmp_path / "other")
    assert sha256_file(cohort / s.DATA_DIR) != sha256_file(other.dataset / s.DATA_DIR)
    assert not MedsDataset.open(cohort).scan().collect().equals(MedsDataset.open(other.dataset).scan().collect())


def test_existing_output_needs_overwrite(cohort: Path) -> None:
    with pytest.raises(FileExistsError):
        generate_cohort(CONFIG, cohort)


def test_meds_schema_and_layout(cohort: Path) -> None:
    shards = MedsDataset.open(cohort).shards
    assert len(shards) == 3
    seen: set[int] = set()
    for shard in shards:
        table = pq.read_table(shard)
        assert table.schema.equals(s.DATA_SCHEMA)
        meds.DataSchema.validate(table)
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        # sorted by subject, then time with static (null) rows first; each subject in one shard
        assert frame.equals(frame.sort([s.SUBJECT_ID, s.TIME], nulls_last=False, maintain_order=True))
        ids = set(frame.get_column(s.SUBJECT_ID).unique().to_list())
        assert not ids & seen
        seen |= ids
    assert seen == set(range(1, N + 1))
    splits = pl.read_parquet(cohort / s.SPLITS_FILE)
    assert splits.height == N and set(splits.get_column(s.SPLIT)) <= {x.value for x in s.Split}


def test_every_code_is_described(cohort: Path, events: pl.DataFrame) -> None:
    codes = pl.read_parquet(cohort / s.CODES_FILE)
    used = events.select(pl.col(s.CODE).unique()).to_series()
    meta = codes.filter(pl.col(s.CODE).is_in(used.implode()))
    assert meta.height == len(used)
    assert meta.get_column(s.DESCRIPTION).null_count() == 0
    assert set(meta.get_column(s.DOMAIN)) <= {d.value for d in s.Domain}
    assert {"Gender/F", "ICD10CM/N18.30", "LOINC/2160-0", "RxNorm/314076", "CPT4/93000"} <= set(used)
    domains = dict(zip(codes[s.CODE], codes[s.DOMAIN], strict=True))
    assert domains["RxNorm/314076"] == "Drug" and domains["LOINC/2160-0"] == "Measurement"
    assert domains["Visit/IP"] == "Visit" and domains["Gender/M"] == "Demographic"
    for row in codes.filter(pl.col(s.CODE).str.starts_with("ICD10CM/")).iter_rows(named=True):
        raw = row[s.CODE].removeprefix("ICD10CM/")
        assert row[s.DESCRIPTION] == icd.get_description(raw)
        if row[s.PARENT_CODES]:
            assert row[s.PARENT_CODES] == [f"ICD10CM/{icd.get_parent(raw)}"]
            assert row[s.PARENT_CODES][0] in domains  # ancestors are described too
    assert synth_codes().get_column(s.CODE).is_unique().all()


def test_statics_birth_and_ages(events: pl.DataFrame) -> None:
    static = events.filter(pl.col(s.TIME).is_null())
    per = static.group_by(s.SUBJECT_ID).agg(pl.col(s.CODE))
    assert per.height == N
    for codes in per.get_column(s.CODE).to_list():
        assert sum(c.startswith("Gender/") for c in codes) == 1
        assert sum(c.startswith("Race/") for c in codes) == 1
    births = events.filter(pl.col(s.CODE) == s.BIRTH_CODE)
    assert births.height == N and births.get_column(s.SUBJECT_ID).is_unique().all()
    age = (dt.datetime(2010, 1, 1) - births.get_column(s.TIME)).dt.total_days() / 365.25
    assert age.min() >= 18 and age.max() <= 90.1  # type: ignore[operator]
    timed = events.filter(pl.col(s.TIME).is_not_null()).join(
        births.select(s.SUBJECT_ID, pl.col(s.TIME).alias("birth")), on=s.SUBJECT_ID
    )
    assert timed.filter(pl.col(s.TIME) < pl.col("birth")).is_empty()
    assert timed.filter(pl.col(s.TIME) >= dt.datetime(2025, 1, 1)).is_empty()


def test_nothing_after_death(events: pl.DataFrame) -> None:
    deaths = events.filter(pl.col(s.CODE) == s.DEATH_CODE).select(s.SUBJECT_ID, pl.col(s.TIME).alias("death"))
    assert 0.03 * N < deaths.height < 0.4 * N
    assert deaths.get_column(s.SUBJECT_ID).is_unique().all()
    late = events.join(deaths, on=s.SUBJECT_ID).filter(pl.col(s.TIME) > pl.col("death"))
    assert late.is_empty()


def test_visits_have_start_and_end(events: pl.DataFrame, visits: pl.DataFrame) -> None:
    assert visits.get_column(s.VISIT_ID).is_unique().all()
    assert visits.null_count().sum_horizontal().item() == 0  # every start has an end and back
    assert (visits["kind"] == visits["end_kind"]).all()
    assert (visits["end"] >= visits["start"]).all()
    assert set(visits["kind"]) == {"Visit/OP", "Visit/IP", "Visit/ER"}
    inside = events.filter(pl.col(s.VISIT_ID).is_not_null()).join(
        visits.select(s.VISIT_ID, pl.col(s.SUBJECT_ID).alias("owner"), "start", "end"), on=s.VISIT_ID
    )
    assert inside.height == events.get_column(s.VISIT_ID).drop_nulls().len()
    assert (inside[s.SUBJECT_ID] == inside["owner"]).all()
    assert inside.filter((pl.col(s.TIME) < pl.col("start")) | (pl.col(s.TIME) > pl.col("end"))).is_empty()
    # the statics, birth and death are the only events outside visits
    outside = events.filter(pl.col(s.VISIT_ID).is_null()).get_column(s.CODE).unique().to_list()
    assert all(c in (s.BIRTH_CODE, s.DEATH_CODE) or c.startswith(("Gender/", "Race/", "Ethnicity/")) for c in outside)


def test_labs_have_units_ranges_and_plausible_values(events: pl.DataFrame) -> None:
    labs = events.filter(pl.col(s.CODE).str.starts_with("LOINC/"))
    assert labs.get_column(s.UNIT).null_count() == 0
    assert labs.get_column(s.NUMERIC_VALUE).null_count() == 0
    ranged = labs.filter(~pl.col(s.CODE).is_in(["LOINC/29463-7"]))
    assert ranged.get_column(s.REF_LOW).null_count() == 0
    assert ranged.filter(pl.col(s.CODE) != "LOINC/33914-3").get_column(s.REF_HIGH).null_count() == 0
    stats = labs.group_by(s.CODE).agg(
        pl.col(s.NUMERIC_VALUE).median().alias("median"), pl.col(s.UNIT).unique().alias("units")
    )
    expected = {
        "LOINC/2160-0": ("mg/dL", 0.6, 1.5),
        "LOINC/2345-7": ("mg/dL", 80, 160),
        "LOINC/2823-3": ("mmol/L", 3.8, 4.9),
        "LOINC/2951-2": ("mmol/L", 135, 142),
        "LOINC/718-7": ("g/dL", 11, 15),
        "LOINC/777-3": ("10*3/uL", 180, 300),
        "LOINC/33914-3": ("mL/min/{1.73_m2}", 45, 100),
        "LOINC/4548-4": ("%", 5.0, 8.5),
        "LOINC/8480-6": ("mm[Hg]", 110, 140),
        "LOINC/8867-4": ("/min", 60, 90),
        "LOINC/39156-5": ("kg/m2", 24, 33),
    }
    got = {r[s.CODE]: r for r in stats.iter_rows(named=True)}
    for code, (unit, low, high) in expected.items():
        assert got[code]["units"] == [unit], code
        assert low <= got[code]["median"] <= high, (code, got[code]["median"])
    # sex-specific creatinine ranges
    highs = labs.filter(pl.col(s.CODE) == "LOINC/2160-0").get_column(s.REF_HIGH).unique().sort()
    assert highs.to_list() == pytest.approx([1.1, 1.3])


def _pre_dx_mean(events: pl.DataFrame, dx_code: str, lab: str, days: int = 365) -> tuple[float, float]:
    """Mean of ``lab`` in the ``days`` before an incident ``dx_code`` vs. in never-diagnosed subjects."""
    dx = _first(events, dx_code).filter(pl.col("dx") >= dt.datetime(2011, 1, 1))
    ever = _first(events, dx_code).get_column(s.SUBJECT_ID)
    values = events.filter(pl.col(s.CODE) == lab).join(dx, on=s.SUBJECT_ID, how="left")
    window = (pl.col(s.TIME) < pl.col("dx")) & (pl.col(s.TIME) >= pl.col("dx") - pl.duration(days=days))
    before = values.filter(pl.col("dx").is_not_null() & window).get_column(s.NUMERIC_VALUE)
    never = values.filter(~pl.col(s.SUBJECT_ID).is_in(ever.implode())).get_column(s.NUMERIC_VALUE)
    assert before.len() >= 10, f"too few {lab} values before {dx_code}"
    return float(before.mean()), float(never.mean())  # type: ignore[arg-type]


def test_planted_lab_signal_precedes_diagnoses(events: pl.DataFrame) -> None:
    creat_before, creat_never = _pre_dx_mean(events, "ICD10CM/N18.30", "LOINC/2160-0")
    assert creat_before > creat_never + 0.1
    egfr_before, egfr_never = _pre_dx_mean(events, "ICD10CM/N18.30", "LOINC/33914-3")
    assert egfr_before < egfr_never - 10
    glucose_before, glucose_never = _pre_dx_mean(events, "ICD10CM/E11.9", "LOINC/2345-7")
    assert glucose_before > glucose_never + 20
    sbp_before, sbp_never = _pre_dx_mean(events, "ICD10CM/I10", "LOINC/8480-6")
    assert sbp_before > sbp_never + 5


def test_planted_symptoms_and_operational_signal(events: pl.DataFrame, visits: pl.DataFrame) -> None:
    af = _first(events, "ICD10CM/I48.91").filter(pl.col("dx") >= dt.datetime(2011, 1, 1))
    palp = events.filter(pl.col(s.CODE) == "ICD10CM/R00.2").join(af, on=s.SUBJECT_ID, how="left")
    window = (pl.col(s.TIME) < pl.col("dx")) & (pl.col(s.TIME) >= pl.col("dx") - pl.duration(days=365))
    cases = palp.filter(pl.col("dx").is_not_null() & window).get_column(s.SUBJECT_ID).n_unique() / af.height
    ever_af = _first(events, "ICD10CM/I48.91").get_column(s.SUBJECT_ID).implode()
    others = palp.filter(~pl.col(s.SUBJECT_ID).is_in(ever_af)).get_column(s.SUBJECT_ID).n_unique()
    assert cases > 2 * others / (N - af.height)

    # long stays are more common with heart failure or CKD on the record
    ip = visits.filter(pl.col("kind") == "Visit/IP").with_columns(
        ((pl.col("end") - pl.col("start")).dt.total_hours() >= 7 * 24).alias("long")
    )
    sick = pl.concat([_first(events, "ICD10CM/I50.9"), _first(events, "ICD10CM/N18.30")])
    sick = sick.group_by(s.SUBJECT_ID).agg(pl.col("dx").min())
    ip = ip.join(sick, on=s.SUBJECT_ID, how="left").with_columns(
        (pl.col("dx") <= pl.col("start")).fill_null(False).alias("sick")
    )
    rates = dict(ip.group_by("sick").agg(pl.col("long").mean()).iter_rows())
    assert rates[True] > rates[False] + 0.05


def test_drugs_start_after_their_diagnosis(events: pl.DataFrame) -> None:
    for dx_code, drug in (("ICD10CM/E11.9", "RxNorm/861007"), ("ICD10CM/I48.91", "RxNorm/1364445")):
        first_drug = _first(events, drug).rename({"dx": "drug"})
        joined = first_drug.join(_first(events, dx_code), on=s.SUBJECT_ID, how="left")
        assert joined.height > 0
        assert joined.filter(pl.col("dx").is_null() | (pl.col("drug") < pl.col("dx"))).is_empty()
