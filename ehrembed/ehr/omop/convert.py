"""OMOP CDM → MEDS: persons, visits, clinical tables and deaths as events; concepts as described codes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import IngestReport, check_output, write_dataset
from ehrembed.ehr.omop.cdm import (
    _DOMAIN_BY_OMOP,
    BUILTIN_CONCEPTS,
    CLINICAL_TABLES,
    UNKNOWN_VISIT_CODE,
    OmopError,
    _Clinical,
)
from ehrembed.ehr.omop.source import (
    _first_row,
    _open_duckdb,
    _open_folder,
    _Source,
    eunomia_path,
)


def ingest_omop(
    *,
    duckdb_file: Path | None = None,
    folder: Path | None = None,
    out: Path,
    overwrite: bool = False,
    dataset_name: str | None = None,
    lenient: bool = False,
    progress: Callable[[str], None] | None = None,
) -> IngestReport:
    """Convert an OMOP CDM extract into a MEDS folder at ``out`` (atomically).

    Exactly one of ``duckdb_file`` / ``folder`` may be given; neither means Eunomia. Rows that
    break the CDM's NOT NULL rules (no person, no date) are errors naming the table and row,
    unless ``lenient``, which skips and counts them instead.
    """
    started = time.perf_counter()
    check_output(Path(out), overwrite)
    if duckdb_file is not None and folder is not None:
        raise OmopError("give either a duckdb file or a folder of tables, not both")
    if folder is not None:
        source, default_name = _open_folder(Path(folder)), Path(folder).name
    else:
        path = Path(duckdb_file) if duckdb_file is not None else eunomia_path()
        source, default_name = _open_duckdb(path), ("eunomia" if duckdb_file is None else path.stem)
    report = IngestReport(dataset=Path(out))
    say = progress or (lambda _msg: None)
    try:
        if not source.has("person"):
            raise OmopError(f"{source.origin}: the person table is required and was not found")
        _load_concepts(source, report)
        frames: list[pl.DataFrame] = []
        say("person")
        frames.append(_person_events(source, report))
        if source.has("visit_occurrence"):
            say("visit_occurrence")
            frames.append(_visit_events(source, report, lenient))
        else:
            report.warnings.append("table visit_occurrence not found: no visits")
        for spec in CLINICAL_TABLES:
            if not source.has(spec.table):
                report.warnings.append(f"table {spec.table} not found: skipped")
                continue
            say(spec.table)
            frames.append(_clinical_events(source, spec, report, lenient))
        if source.has("death"):
            say("death")
            frames.append(_death_events(source, report, lenient))
        events = pl.concat([f for f in frames if not f.is_empty()], how="diagonal_relaxed")
        events = _drop_unknown_subjects(events, source, report)
        codes = _codes_frame(source, events)
        say("write")
        write_dataset(
            Path(out),
            events,
            codes,
            dataset_name=dataset_name or default_name,
            etl_name="ehrembed.omop",
            overwrite=overwrite,
            extra_metadata={"source": source.origin, "skipped": report.skipped},
        )
    finally:
        source.con.close()
    report.n_events = events.height
    report.n_subjects = events.get_column(s.SUBJECT_ID).n_unique()
    report.seconds = time.perf_counter() - started
    return report


def _load_concepts(source: _Source, report: IngestReport) -> None:
    """Create ``_concepts(concept_id, code, description, domain)``: concept table + built-ins."""
    con = source.con
    builtin = pl.DataFrame(
        {
            "concept_id": list(BUILTIN_CONCEPTS),
            "code": [f"{v}/{c}" for v, c, _, _ in BUILTIN_CONCEPTS.values()],
            "description": [n for _, _, n, _ in BUILTIN_CONCEPTS.values()],
            "domain": [str(d) for _, _, _, d in BUILTIN_CONCEPTS.values()],
        },
        schema={"concept_id": pl.Int64, "code": pl.String, "description": pl.String, "domain": pl.String},
    )
    con.register("_builtin_concepts", builtin.to_arrow())
    if source.has("concept"):
        cols = source.columns("concept")
        need = ["concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_code"]
        missing = [c for c in need if c not in cols]
        if missing:
            raise OmopError(f"{source.origin}: table concept lacks column(s) {', '.join(missing)}")
        con.execute(
            f"""CREATE TEMP TABLE _concepts AS
            SELECT CAST({cols["concept_id"]} AS BIGINT) AS concept_id,
                   {cols["vocabulary_id"]} || '/' || {cols["concept_code"]} AS code,
                   {cols["concept_name"]} AS description,
                   {cols["domain_id"]} AS domain
            FROM {source.tables["concept"]} WHERE {cols["concept_id"]} <> 0
            UNION ALL
            SELECT * FROM _builtin_concepts
            WHERE concept_id NOT IN (SELECT CAST({cols["concept_id"]} AS BIGINT) FROM {source.tables["concept"]})"""
        )
    else:
        report.warnings.append("table concept not found: codes are written OMOP/<concept_id> without descriptions")
        con.execute("CREATE TEMP TABLE _concepts AS SELECT * FROM _builtin_concepts")


def _ts(cols: dict[str, str], datetime_col: str | None, date_col: str) -> str:
    parts = []
    if datetime_col and datetime_col in cols:
        parts.append(f"TRY_CAST({cols[datetime_col]} AS TIMESTAMP)")
    parts.append(f"TRY_CAST({cols[date_col]} AS TIMESTAMP)")
    return f"COALESCE({', '.join(parts)})"


def _concept_code_sql(concept_expr: str) -> str:
    """SQL: the MEDS code for a concept id expression (NULL for 0 / NULL)."""
    return (
        f"CASE WHEN {concept_expr} IS NULL OR {concept_expr} = 0 THEN NULL "
        f"ELSE COALESCE((SELECT code FROM _concepts c WHERE c.concept_id = {concept_expr}), "
        f"'OMOP/' || CAST(CAST({concept_expr} AS BIGINT) AS VARCHAR)) END"
    )


def _query(source: _Source, sql: str, table: str) -> pl.DataFrame:
    try:
        frame = pl.from_arrow(source.con.sql(sql).to_arrow_table())
    except duckdb.Error as exc:
        raise OmopError(f"{source.origin}: cannot read table {table}: {exc}") from exc
    assert isinstance(frame, pl.DataFrame)
    return frame


def _person_events(source: _Source, report: IngestReport) -> pl.DataFrame:
    cols = source.check("person")
    rel = source.tables["person"]
    dupes = _first_row(
        source.con, f"SELECT {cols['person_id']}, COUNT(*) FROM {rel} GROUP BY 1 HAVING COUNT(*) > 1 LIMIT 1"
    )
    if dupes is not None:
        raise OmopError(f"{source.origin}: table person has person_id {dupes[0]} on {dupes[1]} rows")
    month = f"COALESCE(TRY_CAST({cols['month_of_birth']} AS INTEGER), 1)" if "month_of_birth" in cols else "1"
    day = f"COALESCE(TRY_CAST({cols['day_of_birth']} AS INTEGER), 1)" if "day_of_birth" in cols else "1"
    built = f"make_timestamp(CAST({cols['year_of_birth']} AS INTEGER), {month}, {day}, 0, 0, 0)"
    birth = f"COALESCE(TRY_CAST({cols['birth_datetime']} AS TIMESTAMP), {built})" if "birth_datetime" in cols else built
    pid = f"CAST({cols['person_id']} AS BIGINT)"
    selects = [
        f"SELECT {pid} AS subject_id, {birth} AS time, '{s.BIRTH_CODE}' AS code FROM {rel}",
        f"SELECT {pid}, CAST(NULL AS TIMESTAMP), {_concept_code_sql(cols['gender_concept_id'])} FROM {rel}",
    ]
    for col in ("race_concept_id", "ethnicity_concept_id"):
        if col in cols:
            selects.append(f"SELECT {pid}, CAST(NULL AS TIMESTAMP), {_concept_code_sql(cols[col])} FROM {rel}")
    frame = _query(source, " UNION ALL ".join(selects), "person")
    report.counts["person"] = source.con.execute(f"SELECT COUNT(*) FROM {rel}").fetchall()[0][0]
    unknown_demo = frame.filter(pl.col(s.CODE).is_null()).height
    if unknown_demo:
        report.skip("person: demographic concept 0 (not recorded)", unknown_demo)
    return frame.filter(pl.col(s.CODE).is_not_null())


def _visit_events(source: _Source, report: IngestReport, lenient: bool) -> pl.DataFrame:
    cols = source.check("visit_occurrence")
    rel = source.tables["visit_occurrence"]
    start = _ts(cols, "visit_start_datetime", "visit_start_date")
    if "visit_end_date" in cols:
        end_raw = _ts(cols, "visit_end_datetime", "visit_end_date")
        # A date-only end means "some time that day": put it at the day's last second so the
        # visit covers all of that day's events.
        end = f"""CASE WHEN {end_raw} IS NULL THEN NULL
                 WHEN CAST({end_raw} AS TIME) = TIME '00:00:00' THEN {end_raw} + INTERVAL 86399 SECOND
                 ELSE {end_raw} END"""
    else:
        end = "CAST(NULL AS TIMESTAMP)"
    sql = f"""SELECT CAST({cols["person_id"]} AS BIGINT) AS subject_id, {start} AS time, {end} AS end_time,
              {_concept_code_sql(cols["visit_concept_id"])} AS code,
              CAST({cols["visit_occurrence_id"]} AS BIGINT) AS visit_id
              FROM {rel}"""
    frame = _query(source, sql, "visit_occurrence")
    report.counts["visit_occurrence"] = frame.height
    frame = _require_time(frame, source, "visit_occurrence", "visit_occurrence_id", "visit_id", report, lenient)
    frame = frame.with_columns(pl.col(s.CODE).fill_null(UNKNOWN_VISIT_CODE))
    ends = frame.filter(pl.col("end_time").is_not_null()).select(
        s.SUBJECT_ID,
        pl.max_horizontal("end_time", s.TIME).alias(s.TIME),
        pl.lit(s.VISIT_END_CODE).alias(s.CODE),
        pl.col(s.CODE).alias(s.TEXT_VALUE),
        s.VISIT_ID,
    )
    return pl.concat([frame.drop("end_time"), ends], how="diagonal_relaxed")


def _clinical_events(source: _Source, spec: _Clinical, report: IngestReport, lenient: bool) -> pl.DataFrame:
    cols = source.check(spec.table)
    rel = source.tables[spec.table]
    concept = f"CAST({cols[spec.concept]} AS BIGINT)"
    if spec.source_concept and spec.source_concept in cols:
        concept = f"COALESCE(NULLIF({concept}, 0), NULLIF(CAST({cols[spec.source_concept]} AS BIGINT), 0))"

    def opt(col: str | None, expr: str) -> str:
        return expr.format(c=cols[col]) if col and col in cols else "NULL"

    value_name = opt(
        spec.value_concept,
        "CASE WHEN {c} IS NULL OR {c} = 0 THEN NULL "
        "ELSE (SELECT description FROM _concepts k WHERE k.concept_id = CAST({c} AS BIGINT)) END",
    )
    text = opt(spec.text, "NULLIF(CAST({c} AS VARCHAR), '')")
    unit_concept = opt(
        spec.unit_concept,
        "CASE WHEN {c} IS NULL OR {c} = 0 THEN NULL "
        "ELSE (SELECT substr(code, strpos(code, '/') + 1) FROM _concepts k "
        "WHERE k.concept_id = CAST({c} AS BIGINT)) END",
    )
    unit_source = opt(spec.unit_source, "NULLIF(CAST({c} AS VARCHAR), '')")
    row_id = f"CAST({cols[spec.id_col]} AS VARCHAR)" if spec.id_col in cols else "NULL"
    sql = f"""SELECT CAST({cols["person_id"]} AS BIGINT) AS subject_id,
        {_ts(cols, spec.datetime, spec.date)} AS time,
        {_concept_code_sql(f"({concept})")} AS code,
        {opt(spec.numeric, "TRY_CAST({c} AS DOUBLE)")} AS numeric_value,
        COALESCE({text}, {value_name}) AS text_value,
        COALESCE({unit_concept}, {unit_source}) AS unit,
        {opt("visit_occurrence_id", "TRY_CAST({c} AS BIGINT)")} AS visit_id,
        {opt(spec.range_low, "TRY_CAST({c} AS DOUBLE)")} AS ref_low,
        {opt(spec.range_high, "TRY_CAST({c} AS DOUBLE)")} AS ref_high,
        {row_id} AS row_id
        FROM {rel}"""
    frame = _query(source, sql, spec.table)
    report.counts[spec.table] = frame.height
    frame = _require_time(frame, source, spec.table, spec.id_col, "row_id", report, lenient)
    unmapped = frame.filter(pl.col(s.CODE).is_null()).height
    if unmapped:
        report.skip(f"{spec.table}: concept 0 (no standard or source concept)", unmapped)
    return frame.filter(pl.col(s.CODE).is_not_null()).drop("row_id")


def _death_events(source: _Source, report: IngestReport, lenient: bool) -> pl.DataFrame:
    cols = source.check("death")
    rel = source.tables["death"]
    sql = f"""SELECT CAST({cols["person_id"]} AS BIGINT) AS subject_id,
              {_ts(cols, "death_datetime", "death_date")} AS time, '{s.DEATH_CODE}' AS code,
              CAST({cols["person_id"]} AS VARCHAR) AS row_id FROM {rel}"""
    frame = _query(source, sql, "death")
    report.counts["death"] = frame.height
    return _require_time(frame, source, "death", "person_id", "row_id", report, lenient).drop("row_id")


def _require_time(
    frame: pl.DataFrame,
    source: _Source,
    table: str,
    id_name: str,
    id_col: str,
    report: IngestReport,
    lenient: bool,
) -> pl.DataFrame:
    """Events must have a time in the supported range; name the first offending row unless ``lenient``."""
    bad = frame.filter(
        pl.col(s.TIME).is_null() | (pl.col(s.TIME) < s.EARLIEST_TIME) | (pl.col(s.TIME) > s.latest_time())
    )
    if bad.is_empty():
        return frame
    if not lenient:
        first = bad.row(0, named=True)
        raise OmopError(
            f"{source.origin}: table {table} row {id_name}={first[id_col]} (person {first[s.SUBJECT_ID]}) "
            f"has no usable date (none, or outside {s.EARLIEST_TIME:%Y-%m-%d} to {s.latest_time():%Y-%m-%d}); "
            f"{bad.height} such row(s). Fix the extract or pass --lenient to skip them"
        )
    report.skip(f"{table}: no date", bad.height)
    return frame.filter(pl.col(s.TIME).is_not_null())


def _drop_unknown_subjects(events: pl.DataFrame, source: _Source, report: IngestReport) -> pl.DataFrame:
    """Events of persons absent from the person table cannot be placed; count and drop them."""
    persons = events.filter(pl.col(s.CODE) == s.BIRTH_CODE).get_column(s.SUBJECT_ID).unique()
    orphan = events.filter(~pl.col(s.SUBJECT_ID).is_in(persons.implode()))
    if not orphan.is_empty():
        report.skip("events of a person_id missing from person", orphan.height)
        events = events.filter(pl.col(s.SUBJECT_ID).is_in(persons.implode()))
    return events


def _codes_frame(source: _Source, events: pl.DataFrame) -> pl.DataFrame:
    """codes.parquet rows for every code used: description, domain, parents and ancestors."""
    used = events.select(pl.col(s.CODE).unique())
    source.con.register("_used_codes", used.to_arrow())
    concepts = _query(
        source,
        """SELECT c.code, c.description, c.domain, c.concept_id FROM _concepts c
           JOIN _used_codes u ON u.code = c.code""",
        "concept",
    )
    concepts = concepts.with_columns(
        pl.col("domain").replace_strict(
            {k: str(v) for k, v in _DOMAIN_BY_OMOP.items()},
            default=str(s.Domain.OTHER),
            return_dtype=pl.String,
        )
    ).unique(subset=["code"], keep="first")
    ancestors = _ancestors(source, concepts)
    codes = concepts.join(ancestors, on="concept_id", how="left").rename(
        {"domain": s.DOMAIN, "concept_id": s.OMOP_CONCEPT_ID}
    )
    special = pl.DataFrame(
        {
            s.CODE: [s.BIRTH_CODE, s.DEATH_CODE, s.VISIT_END_CODE, UNKNOWN_VISIT_CODE],
            s.DESCRIPTION: ["Birth", "Death", "End of visit", "Visit"],
            s.DOMAIN: [
                str(s.Domain.DEMOGRAPHIC),
                str(s.Domain.DEMOGRAPHIC),
                str(s.Domain.VISIT),
                str(s.Domain.VISIT),
            ],
        }
    )
    return pl.concat([codes, special], how="diagonal_relaxed")


def _ancestors(source: _Source, concepts: pl.DataFrame) -> pl.DataFrame:
    """Per concept: all ancestor ids and the direct parents as codes (``OMOP/<id>`` if unknown)."""
    empty = pl.DataFrame(
        schema={
            "concept_id": pl.Int64,
            s.OMOP_ANCESTOR_IDS: pl.List(pl.Int64),
            s.PARENT_CODES: pl.List(pl.String),
        }
    )
    if not source.has("concept_ancestor") or concepts.is_empty():
        return empty
    cols = source.columns("concept_ancestor")
    need = ("ancestor_concept_id", "descendant_concept_id", "min_levels_of_separation")
    if any(c not in cols for c in need):
        return empty
    source.con.register("_used_concepts", concepts.select("concept_id").to_arrow())
    rows = _query(
        source,
        f"""SELECT CAST(a.{cols["descendant_concept_id"]} AS BIGINT) AS concept_id,
                   CAST(a.{cols["ancestor_concept_id"]} AS BIGINT) AS ancestor_id,
                   CAST(a.{cols["min_levels_of_separation"]} AS INTEGER) AS levels,
                   COALESCE(c.code, 'OMOP/' || CAST(CAST(a.{cols["ancestor_concept_id"]} AS BIGINT) AS VARCHAR))
                       AS ancestor_code
            FROM {source.tables["concept_ancestor"]} a
            JOIN _used_concepts u ON u.concept_id = CAST(a.{cols["descendant_concept_id"]} AS BIGINT)
            LEFT JOIN _concepts c ON c.concept_id = CAST(a.{cols["ancestor_concept_id"]} AS BIGINT)
            WHERE a.{cols["ancestor_concept_id"]} <> a.{cols["descendant_concept_id"]}""",
        "concept_ancestor",
    )
    if rows.is_empty():
        return empty
    return (
        rows.sort("concept_id", "levels", "ancestor_id")
        .group_by("concept_id", maintain_order=True)
        .agg(
            pl.col("ancestor_id").alias(s.OMOP_ANCESTOR_IDS),
            pl.col("ancestor_code").filter(pl.col("levels") == 1).alias(s.PARENT_CODES),
        )
    )
