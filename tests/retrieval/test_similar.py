"""Similar-patient search on a small synthetic cohort: exactness, self-exclusion, filters, explanations, CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ehrembed import schema as s
from ehrembed.cli import app
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.synth import SynthConfig, generate_cohort
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.encoders.base import EncoderSpec, Progress
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.encoders.job import EmbedConfig, embed_dataset, record_serializer
from ehrembed.retrieval.index import VectorIndex, VectorIndexError
from ehrembed.retrieval.similar import (
    EXPLAINED_DOMAINS,
    SimilarError,
    SimilarFilters,
    SimilarPatients,
    SimilarResult,
    ages_at,
)

runner = CliRunner()


class HashEncoder:
    """A deterministic bag-of-words encoder: records that share words get similar vectors."""

    def __init__(self, dim: int = 64, revision: str = "1") -> None:
        self.spec = EncoderSpec(
            name="hash", kind="student", model_path="/hash", revision=revision, pooling="mean", dim=dim, max_tokens=8192
        )

    def encode(
        self,
        texts: Sequence[str],
        *,
        instruction: str | None = None,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> np.ndarray:
        out = np.zeros((len(texts), self.spec.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest()[:8], 16) % self.spec.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(text.split()) for text in texts]


@dataclass
class Cohort:
    dataset: MedsDataset
    embeddings: EmbeddingSet
    early: EmbeddingSet
    encoder: HashEncoder
    vocabulary: Vocabulary
    patients: dict[int, s.Patient]


EARLY = dt.datetime(2016, 1, 1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    root = tmp_path_factory.mktemp("similar")
    generate_cohort(SynthConfig(n_subjects=40, seed=1), root / "meds")
    dataset = MedsDataset.open(root / "meds")
    encoder = HashEncoder()
    config = EmbedConfig(cache_dir=root / "cache")
    embed_dataset(dataset, encoder, root / "emb", config)
    embed_dataset(dataset, encoder, root / "early", config, as_of=EARLY)
    return Cohort(
        dataset=dataset,
        embeddings=EmbeddingSet.load(root / "emb"),
        early=EmbeddingSet.load(root / "early"),
        encoder=encoder,
        vocabulary=Vocabulary.from_dataset(dataset),
        patients={p.subject_id: p for p in dataset.iter_patients()},
    )


@pytest.fixture
def search(cohort: Cohort) -> SimilarPatients:
    index = VectorIndex.from_embeddings(cohort.embeddings, kind="flat")
    return SimilarPatients(index, cohort.dataset, vocabulary=cohort.vocabulary)


def explained_codes(cohort: Cohort, subject: int, when: dt.datetime | None) -> set[str]:
    patient = cohort.patients[subject]
    events = patient.events if when is None else patient.events_until(when)
    return {e.code for e in events if cohort.vocabulary.domain(e.code) in EXPLAINED_DOMAINS}


def sex_of(cohort: Cohort, subject: int) -> str | None:
    codes = [e.code for e in cohort.patients[subject].events if e.code.startswith("Gender/")]
    return codes[0].removeprefix("Gender/") if codes else None


def age_of(cohort: Cohort, subject: int, when: dt.datetime) -> float:
    birth = cohort.patients[subject].birth_time
    assert birth is not None
    return (when - birth).total_seconds() / 86400 / 365.25


def test_neighbours_are_the_exact_top_k_without_the_query(cohort: Cohort, search: SimilarPatients) -> None:
    vectors, subjects = np.asarray(cohort.embeddings.vectors), cohort.embeddings.subject_ids
    for row in (0, 7, 23):
        subject = int(subjects[row])
        result = search.by_subject(subject, k=5)
        assert result.query.subject_id == subject and result.query.index_id == row
        found = [n.subject_id for n in result.neighbors]
        assert len(found) == 5 and subject not in found and len(set(found)) == 5
        scores = vectors @ vectors[row]
        scores[row] = -np.inf
        np.testing.assert_allclose([n.score for n in result.neighbors], np.sort(scores)[::-1][:5], atol=1e-5)
        assert [n.rank for n in result.neighbors] == [1, 2, 3, 4, 5]


def test_explanations_share_only_codes_up_to_each_as_of(cohort: Cohort, search: SimilarPatients) -> None:
    subject = int(cohort.embeddings.subject_ids[3])
    result = search.by_subject(subject, k=6)
    query_codes = explained_codes(cohort, subject, result.query.as_of)
    assert any(n.explanation.n_conditions for n in result.neighbors)
    for n in result.neighbors:
        shared = query_codes & explained_codes(cohort, n.subject_id, n.prediction_time)
        e = n.explanation
        assert e.n_conditions + e.n_medications + e.n_procedures == len(shared)
        for group, domain in ((e.conditions, "Condition"), (e.medications, "Drug"), (e.procedures, "Procedure")):
            assert len(group) <= search.max_shared
            for item in group:
                assert item.code in shared and item.domain == domain
                assert item.description == cohort.vocabulary.label(item.code)
        if e.conditions:
            assert e.conditions[0].description in e.summary
        assert n.sex == sex_of(cohort, n.subject_id)
        assert n.prediction_time is not None and n.age == pytest.approx(
            age_of(cohort, n.subject_id, n.prediction_time), abs=0.06
        )
    data = result.as_dict()
    assert data["neighbors"][0]["explanation"]["summary"] == result.neighbors[0].explanation.summary
    json.dumps(data, default=str)


def test_as_of_rows_and_no_leakage(cohort: Cohort) -> None:
    index = VectorIndex.from_embeddings(cohort.embeddings, kind="flat")
    index.add_embeddings(cohort.early)
    search = SimilarPatients(index, cohort.dataset, vocabulary=cohort.vocabulary)
    subject = int(cohort.embeddings.subject_ids[5])
    latest = search.by_subject(subject, k=8)
    assert latest.query.as_of == cohort.embeddings.as_of[5].astype(dt.datetime)
    early = search.by_subject(subject, k=8, as_of=EARLY)
    assert early.query.as_of == EARLY
    found = [n.subject_id for n in early.neighbors]
    assert subject not in found and len(set(found)) == len(found) == 8  # one row per patient, never the query
    query_codes = explained_codes(cohort, subject, EARLY)
    for n in early.neighbors:
        shared = {c.code for c in (*n.explanation.conditions, *n.explanation.medications, *n.explanation.procedures)}
        assert shared <= query_codes & explained_codes(cohort, n.subject_id, n.prediction_time)
    with pytest.raises(SimilarError, match="no row for subject"):
        search.by_subject(subject, as_of=dt.datetime(2017, 3, 3))
    # with an encoder, an as-of time without a row is embedded on the fly
    with_encoder = SimilarPatients(index, cohort.dataset, vocabulary=cohort.vocabulary, encoder=cohort.encoder)
    fresh = with_encoder.by_subject(subject, as_of=dt.datetime(2017, 3, 3), k=3)
    assert fresh.query.index_id is None and fresh.query.as_of == dt.datetime(2017, 3, 3)
    assert subject not in [n.subject_id for n in fresh.neighbors]


def _eligible(cohort: Cohort, filters: SimilarFilters, exclude: int) -> set[int]:
    splits = dict(cohort.dataset.splits().iter_rows())
    out = set()
    for subject, when in zip(cohort.embeddings.subject_ids.tolist(), cohort.embeddings.as_of, strict=True):
        when = when.astype(dt.datetime)
        if subject == exclude:
            continue
        if filters.splits and splits[subject] not in filters.splits:
            continue
        if filters.sex and sex_of(cohort, subject) != filters.sex:
            continue
        age = age_of(cohort, subject, when)
        if filters.min_age is not None and age < filters.min_age:
            continue
        if filters.max_age is not None and age > filters.max_age:
            continue
        events = cohort.patients[subject].events_until(when)
        if any(all(e.code != code for e in events) for code in filters.has_codes):
            continue
        out.add(subject)
    return out


@pytest.mark.parametrize(
    "filters",
    [
        SimilarFilters(sex="female"),
        SimilarFilters(splits=("train",)),
        SimilarFilters(min_age=40, max_age=70),
        SimilarFilters(has_codes=("ICD10CM/I10",)),
        SimilarFilters(sex="M", min_age=50, has_codes=("ICD10CM/I10",)),
    ],
)
def test_filters_keep_the_best_eligible_neighbours(
    cohort: Cohort, search: SimilarPatients, filters: SimilarFilters
) -> None:
    subject = int(cohort.embeddings.subject_ids[0])
    eligible = _eligible(cohort, filters, subject)
    assert eligible, "the filter should leave someone"
    result = search.by_subject(subject, k=5, filters=filters)
    found = [n.subject_id for n in result.neighbors]
    assert set(found) <= eligible and len(found) == min(5, len(eligible))
    vectors = np.asarray(cohort.embeddings.vectors)
    rows = {int(sid): i for i, sid in enumerate(cohort.embeddings.subject_ids)}
    scores = sorted((float(vectors[rows[e]] @ vectors[rows[subject]]) for e in eligible), reverse=True)
    np.testing.assert_allclose([n.score for n in result.neighbors], scores[: len(found)], atol=1e-5)


def test_age_helper_handles_unknown_times() -> None:
    births = np.array(["2000-01-01", "NaT"], "datetime64[us]")
    ages = ages_at(births, np.array(["2010-01-01", "2010-01-01"], "datetime64[us]"))
    assert ages[0] == pytest.approx(10.0, abs=0.01) and np.isnan(ages[1])


def test_search_by_text(cohort: Cohort, search: SimilarPatients) -> None:
    subject = int(cohort.embeddings.subject_ids[9])
    serializer = record_serializer(cohort.encoder, cohort.vocabulary, EmbedConfig())
    when = cohort.embeddings.as_of[9].astype(dt.datetime)
    text = serializer.serialize(cohort.patients[subject], as_of=when)
    result = search.by_text(text, k=3, encoder=cohort.encoder)
    assert result.query.from_text and result.neighbors[0].subject_id == subject  # the record finds its patient
    assert result.neighbors[0].score == pytest.approx(1.0, abs=1e-5)
    top = result.neighbors[0].explanation
    assert top.n_conditions > 0
    for item in (*top.conditions, *top.medications, *top.procedures):
        assert item.description.lower() in text.lower()
    with pytest.raises(SimilarError, match="needs an encoder"):
        search.by_text(text)
    with pytest.raises(SimilarError, match="empty"):
        search.by_text("  ", encoder=cohort.encoder)


def test_errors(cohort: Cohort, search: SimilarPatients) -> None:
    subject = int(cohort.embeddings.subject_ids[0])
    with pytest.raises(SimilarError, match="subject 99999 is not in the index"):
        search.by_subject(99999)
    with pytest.raises(SimilarError, match="k=40 is larger than the 39 other rows"):
        search.by_subject(subject, k=40)
    with pytest.raises(SimilarError, match="k must be a positive integer"):
        search.by_subject(subject, k=0)
    with pytest.raises(SimilarError, match="sex must be F or M"):
        SimilarFilters(sex="X")
    with pytest.raises(SimilarError, match="split must be one of"):
        SimilarFilters(splits=("validation",))
    with pytest.raises(SimilarError, match="above max_age"):
        SimilarFilters(min_age=70, max_age=40)
    with pytest.raises(VectorIndexError, match="built with encoder hash"):
        SimilarPatients(search.index, cohort.dataset, encoder=HashEncoder(revision="2"))
    nobody = search.by_subject(subject, k=3, filters=SimilarFilters(has_codes=("NO/SUCH",)))
    assert isinstance(nobody, SimilarResult) and nobody.neighbors == ()


def test_cli_index_and_similar(tmp_path: Path, cohort: Cohort) -> None:
    data = tmp_path / "synth"
    made = runner.invoke(app, ["synth", "--n", "40", "--seed", "1", "--out", str(data), "--json"])
    assert made.exit_code == 0, made.output
    emb = tmp_path / "emb"
    embed_dataset(MedsDataset.open(data), cohort.encoder, emb, EmbedConfig(cache_dir=tmp_path / "cache"))

    built = runner.invoke(app, ["index", str(data), "--embeddings", str(emb), "--json"])
    assert built.exit_code == 0, built.output
    report = json.loads(built.stdout)
    assert report["kind"] == "flat" and report["rows"] == 40 and Path(report["out"]) == tmp_path / "emb.index"
    assert VectorIndex.load(tmp_path / "emb.index").spec == cohort.encoder.spec

    found = runner.invoke(app, ["similar", str(data), "--subject", "3", "-k", "4", "--json"])  # index from the store
    assert found.exit_code == 0, found.output
    result = json.loads(found.stdout)
    subjects = [n["subject_id"] for n in result["neighbors"]]
    assert len(subjects) == 4 and 3 not in subjects and result["query"]["subject_id"] == 3
    assert all("summary" in n["explanation"] for n in result["neighbors"])

    filtered = runner.invoke(
        app,
        [
            *("similar", str(data), "--subject", "3", "--index", str(tmp_path / "emb.index"), "--json"),
            *("--sex", "F", "--min-age", "30", "--split", "train", "--split", "tuning", "--has-code", "ICD10CM/I10"),
        ],
    )
    assert filtered.exit_code == 0, filtered.output
    for n in json.loads(filtered.stdout)["neighbors"]:
        assert n["sex"] == "F" and n["age"] >= 30 and n["split"] in ("train", "tuning")

    table = runner.invoke(app, ["similar", str(data), "--subject", "3", "-k", "2"])
    assert table.exit_code == 0, table.output
    assert "patients similar to subject 3" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["similar", "{data}", "--subject", "3", "--sex", "Q", "--index", "{index}"], "'Q' is not one of 'F', 'M'"),
        (["similar", "{data}", "--subject", "424242", "--index", "{index}"], "subject 424242 is not in the index"),
        (["similar", "{data}", "--subject", "3", "--index", "{data}/nope"], "not found"),
        (["similar", "{data}", "--subject", "3"], "no index is recorded for dataset"),
        (["index", "{data}", "--embeddings", "{emb}", "--kind", "annoy"], "'annoy' is not one of"),
    ],
)
def test_cli_errors(tmp_path: Path, cohort: Cohort, args: list[str], message: str) -> None:
    index = VectorIndex.from_embeddings(cohort.embeddings, kind="flat").save(tmp_path / "idx")
    emb = cohort.embeddings.save(tmp_path / "emb")
    values = {"data": str(cohort.dataset.root), "index": str(index), "emb": str(emb)}
    result = runner.invoke(app, [a.format(**values) for a in args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
