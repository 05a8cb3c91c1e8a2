"""The dataset's own ontology: which recorded codes descend from a code, and a code's ancestors.

Three sources, all read from ``metadata/codes.parquet``:

- OMOP ``concept_ancestor``: a code descends from ``X`` when ``X``'s concept id is among its
  ``omop_ancestor_ids`` (``SNOMED/22298006`` myocardial infarction → its acute and old subtypes).
- ``parent_codes`` (MEDS), followed transitively.
- ICD prefixes: ``ICD10CM/I48`` covers ``ICD10CM/I48.91`` (ICD-9 and ICD-10 diagnosis and
  procedure vocabularies, dots ignored).

Task outcomes use :meth:`Ontology.descendants`; the count baseline's ontology expansion uses
:meth:`Ontology.ancestors`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset

ICD_VOCABULARIES = frozenset({"ICD10CM", "ICD10", "ICD9CM", "ICD9", "ICD10PCS", "ICD9Proc"})
_ICD_MIN_STEM = 3


def _icd_key(code: str) -> tuple[str, str] | None:
    vocabulary, _, value = code.partition("/")
    if vocabulary not in ICD_VOCABULARIES or not value:
        return None
    return vocabulary, value.replace(".", "").upper()


@dataclass
class Ontology:
    """Descendant and ancestor lookups over the codes a dataset records."""

    codes: frozenset[str]
    concept_ids: dict[str, int] = field(default_factory=dict)
    ancestor_ids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    parents: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _by_ancestor: dict[int, set[str]] = field(default_factory=dict, repr=False)
    _children: dict[str, set[str]] = field(default_factory=dict, repr=False)
    _code_by_concept: dict[int, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        by_ancestor: dict[int, set[str]] = defaultdict(set)
        for code, ancestors in self.ancestor_ids.items():
            for concept in ancestors:
                by_ancestor[concept].add(code)
        children: dict[str, set[str]] = defaultdict(set)
        for code, parents in self.parents.items():
            for parent in parents:
                children[parent].add(code)
        self._by_ancestor = dict(by_ancestor)
        self._children = dict(children)
        self._code_by_concept = {concept: code for code, concept in self.concept_ids.items()}

    @classmethod
    def from_codes(cls, codes: pl.DataFrame, recorded: Iterable[str] | None = None) -> Ontology:
        """From a codes table (``metadata/codes.parquet`` layout); ``recorded`` adds codes seen in events."""
        concept_ids: dict[str, int] = {}
        ancestor_ids: dict[str, tuple[int, ...]] = {}
        parents: dict[str, tuple[str, ...]] = {}
        columns = set(codes.columns)
        for row in codes.iter_rows(named=True):
            code = row[s.CODE]
            if s.OMOP_CONCEPT_ID in columns and row[s.OMOP_CONCEPT_ID] is not None:
                concept_ids[code] = int(row[s.OMOP_CONCEPT_ID])
            if s.OMOP_ANCESTOR_IDS in columns and row[s.OMOP_ANCESTOR_IDS]:
                ancestor_ids[code] = tuple(int(a) for a in row[s.OMOP_ANCESTOR_IDS])
            if s.PARENT_CODES in columns and row[s.PARENT_CODES]:
                parents[code] = tuple(row[s.PARENT_CODES])
        known = set(codes.get_column(s.CODE).to_list())
        if recorded is not None:
            known.update(recorded)
        return cls(frozenset(known), concept_ids, ancestor_ids, parents)

    @classmethod
    def from_dataset(cls, dataset: MedsDataset) -> Ontology:
        recorded = dataset.scan().select(s.CODE).unique().collect().get_column(s.CODE).to_list()
        return cls.from_codes(dataset.codes(), recorded)

    def descendants(self, code: str) -> set[str]:
        """``code`` itself plus every recorded code below it (OMOP ancestry, parent codes, ICD prefix)."""
        out = {code}
        concept = self.concept_ids.get(code)
        if concept is not None:
            out.update(self._by_ancestor.get(concept, ()))
        stack = [code]
        while stack:
            for child in self._children.get(stack.pop(), ()):
                if child not in out:
                    out.add(child)
                    stack.append(child)
        key = _icd_key(code)
        if key is not None and len(key[1]) >= _ICD_MIN_STEM:
            for other in self.codes:
                other_key = _icd_key(other)
                if other_key is not None and other_key[0] == key[0] and other_key[1].startswith(key[1]):
                    out.add(other)
        return out

    def expand(self, codes: Iterable[str], *, include_descendants: bool = True) -> frozenset[str]:
        """The set of codes that count as any of ``codes``."""
        out: set[str] = set()
        for code in codes:
            out.update(self.descendants(code) if include_descendants else {code})
        return frozenset(out)

    def unknown(self, codes: Iterable[str], *, include_descendants: bool = True) -> list[str]:
        """Codes of ``codes`` that match nothing this dataset records (themselves or their descendants)."""
        return [c for c in codes if not (self.expand([c], include_descendants=include_descendants) & self.codes)]

    def ancestors(self, code: str) -> list[str]:
        """Feature names for the concepts above ``code``: OMOP ancestors (as recorded codes where one
        exists, else ``OMOP/{id}``), parent codes transitively, and ICD three-character stems."""
        out: dict[str, None] = {}
        own = self.concept_ids.get(code)
        for concept in self.ancestor_ids.get(code, ()):
            if concept != own:
                out[self._code_by_concept.get(concept, f"OMOP/{concept}")] = None
        stack = list(self.parents.get(code, ()))
        while stack:
            parent = stack.pop()
            if parent not in out and parent != code:
                out[parent] = None
                stack.extend(self.parents.get(parent, ()))
        key = _icd_key(code)
        if key is not None and len(key[1]) > _ICD_MIN_STEM:
            out[f"{key[0]}/{key[1][:_ICD_MIN_STEM]}"] = None
        return list(out)
