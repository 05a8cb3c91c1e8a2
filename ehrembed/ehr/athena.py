"""Code descriptions from an OMOP vocabulary export (Athena's ``CONCEPT.csv``), for datasets that lack them.

Some MEDS releases carry no descriptions for whole vocabularies (EHRSHOT's has none for LOINC or RxNorm):
their records then show raw codes. :func:`describe_codes` reads an Athena export — tab-separated, with
``concept_name``, ``domain_id``, ``vocabulary_id`` and ``concept_code`` columns, as Athena ships it — and
fills the dataset's ``metadata/codes.parquet`` where a code has no description (the dataset's own ones always
win; ``VOCABULARY/CODE`` is ``vocabulary_id/concept_code``, as ``ehrembed ingest omop`` writes codes). The
file is rewritten atomically; the export is read lazily and only the dataset's codes are kept, so a
multi-gigabyte export costs one scan. Coverage per vocabulary is reported before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset, conform_codes
from ehrembed.ehr.vocabulary import Vocabulary, code_counts, coverage_by_vocabulary
from ehrembed.errors import InputError
from ehrembed.fsutil import atomic_write_bytes

CONCEPT_COLUMNS = ("concept_name", "domain_id", "vocabulary_id", "concept_code")


class AthenaError(InputError):
    """The vocabulary export cannot be read as asked; the message names the file and what is missing."""


@dataclass(frozen=True)
class DescribeReport:
    filled: int
    """Codes that got a description from the export."""
    before: dict[str, dict[str, int]]
    after: dict[str, dict[str, int]]


def read_concepts(path: Path, codes: set[str]) -> pl.DataFrame:
    """``code``, ``description``, ``domain`` of the export's concepts whose ``vocabulary_id/concept_code`` is
    one of ``codes``."""
    path = Path(path)
    if not path.is_file():
        raise AthenaError(f"vocabulary export {path} not found (Athena's CONCEPT.csv)")
    header = path.open(encoding="utf-8", errors="replace").readline()
    separator = "\t" if "\t" in header else ","
    names = [c.strip().strip('"').lower() for c in header.rstrip("\r\n").split(separator)]
    missing = [c for c in CONCEPT_COLUMNS if c not in names]
    if missing:
        raise AthenaError(
            f"{path}: not an OMOP CONCEPT table (no column {', '.join(missing)}; has {', '.join(names[:8])})"
        )
    try:
        lazy = pl.scan_csv(
            path,
            separator=separator,
            quote_char=None if separator == "\t" else '"',
            infer_schema=False,
            new_columns=names,
        )
        wanted = pl.DataFrame({s.CODE: sorted(codes)}, schema={s.CODE: pl.String})
        return (
            lazy.select(
                (pl.col("vocabulary_id") + "/" + pl.col("concept_code")).alias(s.CODE),
                pl.col("concept_name").alias(s.DESCRIPTION),
                pl.col("domain_id").alias(s.DOMAIN),
            )
            .join(wanted.lazy(), on=s.CODE, how="semi")
            .unique(subset=s.CODE, keep="first", maintain_order=True)
            .collect()
        )
    except pl.exceptions.PolarsError as exc:
        raise AthenaError(f"{path}: cannot read it as a vocabulary export ({exc})") from None


def describe_codes(dataset: MedsDataset, concepts_csv: Path) -> DescribeReport:
    """Fill missing descriptions (and domains) of the dataset's codes from an Athena export, in place."""
    counts = code_counts(dataset)
    before = coverage_by_vocabulary(dataset, counts=counts)
    codes = dataset.codes()
    used = set(counts.get_column(s.CODE).to_list())
    known = codes.filter(pl.col(s.DESCRIPTION).is_not_null() & (pl.col(s.DESCRIPTION) != ""))
    undescribed = (used | set(codes.get_column(s.CODE).to_list())) - set(known.get_column(s.CODE).to_list())
    found = read_concepts(concepts_csv, undescribed)
    if found.height:
        merged = (
            pl.concat(
                [codes, pl.DataFrame({s.CODE: sorted(undescribed - set(codes.get_column(s.CODE)))})],
                how="diagonal_relaxed",
            )
            .join(found.rename({s.DESCRIPTION: "_description", s.DOMAIN: "_domain"}), on=s.CODE, how="left")
            .with_columns(
                pl.when(pl.col(s.DESCRIPTION).is_null() | (pl.col(s.DESCRIPTION) == ""))
                .then(pl.col("_description"))
                .otherwise(pl.col(s.DESCRIPTION))
                .alias(s.DESCRIPTION),
                pl.coalesce(s.DOMAIN, "_domain").alias(s.DOMAIN),
            )
            .drop("_description", "_domain")
        )
        sink = pa.BufferOutputStream()
        pq.write_table(conform_codes(merged).to_arrow().cast(s.CODES_SCHEMA), sink)
        atomic_write_bytes(dataset.root / "metadata" / "codes.parquet", sink.getvalue().to_pybytes())
    after = coverage_by_vocabulary(dataset, Vocabulary.from_dataset(dataset), counts=counts)
    return DescribeReport(found.height, before, after)
