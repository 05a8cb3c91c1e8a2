"""Knowledge augmentation: patient query terms at the as-of time, guideline lines in the record's budget."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.serialize import SerializeError, Serializer, SerializerConfig
from ehrembed.ehr.synth import SynthConfig, generate_cohort
from ehrembed.ehr.tokens import load_token_counter
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.encoders.job import EmbedConfig, embed_dataset, record_serializer
from ehrembed.encoders.teacher import TeacherEncoder
from ehrembed.retrieval.augment import (
    GuidelineAugmentation,
    GuidelineAugmenter,
    patient_terms,
    relevant_guidelines,
    short_section,
    snippet,
)
from ehrembed.retrieval.guidelines import GuidelineError, GuidelineKB, RetrievalModelConfig, build_knowledge_base
from tests.helpers import HashEncoder

GUIDELINES = {
    "ckd": """# Chronic Kidney Disease

## Staging and Monitoring

Chronic kidney disease stage 3 means an eGFR of 30 to 59. A high creatinine should prompt a repeat eGFR and a urine
albumin-creatinine ratio. Monitor kidney function every 6 to 12 months.

## Treatment

Start an SGLT2 inhibitor and an ACE inhibitor in chronic kidney disease with albuminuria.
""",
    "asthma": """# Asthma

## Controller Therapy

Asthma, uncomplicated: use low-dose inhaled corticosteroid with formoterol as needed; step up when symptoms
occur most days.
""",
    "diabetes": """# Type 2 Diabetes

## Glycemic Targets

Type 2 diabetes mellitus: aim for a hemoglobin A1c below 7%. A high hemoglobin A1c on metformin calls for a
second agent.
""",
}

VOCAB = Vocabulary(
    descriptions={
        "ICD10CM/E11.9": "Type 2 diabetes mellitus without complications",
        "ICD10CM/N18.3": "Chronic kidney disease, stage 3",
        "ICD10CM/J45.909": "Asthma, uncomplicated",
        "LOINC/2160-0": "Creatinine [Mass/volume] in Serum or Plasma",
        "LOINC/2823-3": "Potassium [Moles/volume] in Serum or Plasma",
        "LOINC/4548-4": "Hemoglobin A1c/Hemoglobin.total in Blood",
    },
    domains={"LOINC/2160-0": "Measurement", "LOINC/2823-3": "Measurement", "LOINC/4548-4": "Measurement"},
    use_packages=False,
)
T0 = dt.datetime(2020, 1, 1, 9, 0)


def day(n: int) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


def patient(*, future: bool = True) -> s.Patient:
    E = s.Event
    events = [
        E(dt.datetime(1955, 3, 1), s.BIRTH_CODE),
        E(day(-500), "ICD10CM/E11.9"),  # outside the one-year window at day 300
        E(day(-400), "LOINC/4548-4", 8.1, unit="%"),  # high, but old
        E(day(200), "ICD10CM/N18.3"),
        E(day(250), "LOINC/2160-0", 2.6, unit="mg/dL"),  # high
        E(day(260), "LOINC/2823-3", 4.2, unit="mmol/L"),  # normal: not a query
    ]
    if future:
        events += [
            E(day(400), "ICD10CM/J45.909"),
            E(day(410), "LOINC/4548-4", 9.0, unit="%"),
        ]
    return s.Patient(1, events)


@pytest.fixture(scope="module")
def guideline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("augment_guidelines")
    for name, text in GUIDELINES.items():
        (folder / f"{name}.md").write_text(text)
    return folder


@pytest.fixture(scope="module")
def kb(guideline_dir: Path) -> GuidelineKB:
    return build_knowledge_base(guideline_dir, RetrievalModelConfig.minilm("/nowhere"), encoder=HashEncoder())


def test_terms_are_recent_problems_and_abnormal_results_up_to_as_of() -> None:
    terms = patient_terms(patient().events, day(300), VOCAB)
    assert [(t.kind, t.text) for t in terms] == [
        ("problem", "Chronic kidney disease, stage 3"),
        ("result", "high Creatinine"),
    ]
    later = [t.text for t in patient_terms(patient().events, day(450), VOCAB)]
    assert later == [
        "Asthma, uncomplicated",
        "Chronic kidney disease, stage 3",
        "high Hemoglobin A1c/Hemoglobin.total",
        "high Creatinine",
    ]
    everything = [t.text for t in patient_terms(patient().events, day(450), VOCAB, lookback_days=5000)]
    assert "Type 2 diabetes mellitus without complications" in everything
    assert patient_terms(patient().events, day(300), VOCAB, max_problems=0, max_results=0) == []


def test_passages_follow_the_patient_and_never_leak(kb: GuidelineKB) -> None:
    augmenter = GuidelineAugmenter(GuidelineAugmentation(k=2, min_similarity=None), kb)
    now = relevant_guidelines(patient(), day(300), VOCAB, augmenter)
    assert now[0].guideline_id == "ckd" and "asthma" not in {p.guideline_id for p in now}
    assert len({p.guideline_id for p in now}) == len(now) <= 2
    assert relevant_guidelines(patient(future=False), day(300), VOCAB, augmenter) == now
    wider = GuidelineAugmenter(GuidelineAugmentation(k=3, min_similarity=None), kb)
    later = relevant_guidelines(patient(), day(450), VOCAB, wider)
    assert {p.guideline_id for p in later} == {"ckd", "asthma", "diabetes"}


def test_similarity_floor_keeps_unrelated_guidelines_out(kb: GuidelineKB) -> None:
    events, as_of = patient().events_until(day(300)), day(300)
    strict = GuidelineAugmenter(GuidelineAugmentation(min_similarity=0.99), kb)
    assert strict.passages(events, as_of, VOCAB) == []
    assert Serializer(VOCAB, appendix=strict).serialize(patient(), as_of=as_of) == Serializer(VOCAB).serialize(
        patient(), as_of=as_of
    )
    loose = GuidelineAugmenter(GuidelineAugmentation(min_similarity=None), kb).passages(events, as_of, VOCAB)
    some = GuidelineAugmenter(GuidelineAugmentation(min_similarity=0.2), kb).passages(events, as_of, VOCAB)
    assert len(loose) == 3 and {p.guideline_id for p in some} <= {p.guideline_id for p in loose}
    bm25_only = GuidelineAugmenter(GuidelineAugmentation(mode="bm25", min_similarity=0.99), kb)
    assert bm25_only.passages(events, as_of, VOCAB)  # the floor is a dense-model cosine


def test_lines_are_compact_single_lines(kb: GuidelineKB) -> None:
    augmenter = GuidelineAugmenter(GuidelineAugmentation(k=3, max_passage_chars=60), kb)
    lines = augmenter.lines(patient().events_until(day(300)), day(300), VOCAB)
    assert lines and all(line.startswith("- ") and "\n" not in line for line in lines)
    assert lines[0].startswith("- Staging and Monitoring: ") or lines[0].startswith("- Treatment: ")
    assert all(len(line.split(": ", 1)[1]) <= 60 for line in lines)
    assert snippet("**bold** text\n- one\n2. two", 40) == "bold text one two"
    assert short_section("Doc > A > B > C") == "Doc > C" and short_section("Doc > A") == "Doc > A"
    assert snippet("word " * 30, 40).endswith("…") and len(snippet("word " * 30, 40)) <= 40


def test_serializer_appends_guidelines_within_the_budget(kb: GuidelineKB) -> None:
    counter = load_token_counter()
    augmenter = GuidelineAugmenter(GuidelineAugmentation(k=2, share=0.3), kb)
    config = SerializerConfig(max_tokens=240)
    result = Serializer(VOCAB, config, counter, appendix=augmenter).serialize_with_stats(patient(), as_of=day(300))
    assert result.n_tokens is not None and result.n_tokens <= 240 and result.truncated
    assert counter.count([result.text])[0] == result.n_tokens
    record, _, appendix = result.text.partition("\n## Relevant Guidelines\n")
    assert appendix and all(line.startswith("- ") for line in appendix.strip().splitlines())
    assert "Asthma" not in result.text  # neither the future diagnosis nor its guideline
    plain = Serializer(VOCAB, dataclasses.replace(config, max_tokens=240 - 72), counter).serialize(
        patient(), as_of=day(300)
    )
    assert record == plain  # the record is fitted into the budget less the reserved share
    unbounded = Serializer(VOCAB, appendix=augmenter).serialize(patient(), as_of=day(300))
    assert unbounded.rstrip().endswith(augmenter.lines(patient().events, day(300), VOCAB)[-1])


def test_no_terms_means_no_section_and_versions_differ(kb: GuidelineKB) -> None:
    augmenter = GuidelineAugmenter(GuidelineAugmentation(), kb)
    bare = s.Patient(2, [s.Event(dt.datetime(1990, 1, 1), s.BIRTH_CODE), s.Event(day(1), "ICD10CM/E11.9")])
    plain = Serializer(VOCAB)
    augmented = Serializer(VOCAB, appendix=augmenter)
    assert augmented.serialize(bare, as_of=day(500)) == plain.serialize(bare, as_of=day(500))
    assert augmented.version != plain.version
    other = GuidelineAugmenter(GuidelineAugmentation(k=1), kb)
    assert Serializer(VOCAB, appendix=other).version not in (augmented.version, plain.version)
    moved = GuidelineAugmenter(GuidelineAugmentation(kb="/elsewhere"), kb)  # the folder is not content
    assert moved.version == augmenter.version


def test_settings_are_validated(kb: GuidelineKB) -> None:
    with pytest.raises(GuidelineError):
        GuidelineAugmentation(k=0)
    with pytest.raises(GuidelineError):
        GuidelineAugmentation(share=1.0)
    with pytest.raises(FileNotFoundError, match="guidelines build"):
        GuidelineAugmenter(GuidelineAugmentation(kb="/no/such/kb"))

    class Greedy:
        heading, share, version = "X", 1.5, "v"

        def lines(self, *args: Any) -> list[str]:
            return []

    with pytest.raises(SerializeError, match="share"):
        Serializer(VOCAB, appendix=Greedy())


def test_embed_job_with_guidelines_changes_records_and_cache_keys(
    tmp_path: Path, guideline_dir: Path, tiny_bert_dir: Path, tiny_qwen2_dir: Path
) -> None:
    kb_dir = build_knowledge_base(guideline_dir, RetrievalModelConfig.minilm(tiny_bert_dir)).save(tmp_path / "kb")
    generate_cohort(SynthConfig(n_subjects=8, seed=5), tmp_path / "meds")
    cohort = MedsDataset.open(tmp_path / "meds")
    teacher = TeacherEncoder.from_folder(tiny_qwen2_dir, max_tokens=400)
    augmentation = GuidelineAugmentation(kb=str(kb_dir), share=0.5, max_passage_chars=60, k=1, min_similarity=None)
    plain_config = EmbedConfig(chunk_size=4, cache_dir=tmp_path / "cache")
    config = dataclasses.replace(plain_config, guidelines=augmentation)
    vocabulary = Vocabulary.from_dataset(cohort)
    serializer = record_serializer(teacher, vocabulary, config)
    assert serializer.version != record_serializer(teacher, vocabulary, plain_config).version
    texts = [serializer.serialize(p, as_of=max(e.time for e in p.events if e.time)) for p in cohort.iter_patients()]
    assert any("## Relevant Guidelines" in t for t in texts)
    plain = embed_dataset(cohort, teacher, tmp_path / "plain", plain_config)
    augmented = embed_dataset(cohort, teacher, tmp_path / "augmented", config)
    assert augmented.cached == 0 and augmented.encoded == plain.rows  # nothing shared with plain records
    again = embed_dataset(cohort, teacher, tmp_path / "again", config)
    assert again.encoded == 0 and again.cached == plain.rows
    saved = EmbeddingSet.load(tmp_path / "augmented")
    assert saved.serializer_version == serializer.version and saved.extra["guidelines"].startswith("guidelines-v1-")


def test_cli_embed_with_guidelines(
    tmp_path: Path, guideline_dir: Path, tiny_bert_dir: Path, tiny_qwen2_dir: Path
) -> None:
    from typer.testing import CliRunner

    from ehrembed.cli import app

    kb_dir = build_knowledge_base(guideline_dir, RetrievalModelConfig.minilm(tiny_bert_dir)).save(tmp_path / "kb")
    generate_cohort(SynthConfig(n_subjects=4, seed=2), tmp_path / "meds")
    runner = CliRunner()
    args = ["embed", str(tmp_path / "meds"), "--encoder", str(tiny_qwen2_dir), "--max-tokens", "256"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "emb"), "--guidelines-kb", str(kb_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert EmbeddingSet.load(tmp_path / "emb").extra["guidelines"].startswith("guidelines-v1-")
    missing = runner.invoke(app, [*args, "--out", str(tmp_path / "emb2"), "--guidelines"])
    assert missing.exit_code == 2 and "guidelines build" in missing.output


def test_the_serializer_hands_an_appendix_only_the_cut_events() -> None:
    class Recorder:
        heading, share, version = "Notes", 0.5, "recorder-1"

        def __init__(self) -> None:
            self.seen: list[s.Event] = []

        def lines(self, events: Sequence[s.Event], as_of: dt.datetime, vocabulary: Vocabulary) -> list[str]:
            self.seen = list(events)
            return [f"- {len(events)} events"]

    recorder = Recorder()
    text = Serializer(VOCAB, appendix=recorder).serialize(patient(), as_of=day(300))
    assert recorder.seen and all(e.time is None or e.time <= day(300) for e in recorder.seen)
    assert text.endswith("\n## Notes\n- 6 events\n")
    assert Serializer(VOCAB, appendix=recorder).version != Serializer(VOCAB).version
