"""The embed job on a tiny real teacher: cache hits skip work, a crashed job resumes exactly."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.synth import SynthConfig, generate_cohort
from ehrembed.ehr.vocabulary import Vocabulary
from ehrembed.encoders.base import EncoderSpec
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.encoders.job import EmbedConfig, embed_dataset, record_serializer
from ehrembed.encoders.teacher import TeacherEncoder


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> MedsDataset:
    out = tmp_path_factory.mktemp("cohort") / "meds"
    generate_cohort(SynthConfig(n_subjects=30, seed=3), out)
    return MedsDataset.open(out)


@pytest.fixture(scope="module")
def teacher(tiny_qwen2_dir: Path) -> TeacherEncoder:
    return TeacherEncoder.from_folder(tiny_qwen2_dir, max_tokens=400)


class Crashing:
    """The real encoder, made to die after a number of encode calls (as a killed job would)."""

    def __init__(self, inner: TeacherEncoder, calls_before_crash: int) -> None:
        self.inner = inner
        self.spec: EncoderSpec = inner.spec
        self.left = calls_before_crash
        self.encoded = 0

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def encode(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        if self.left == 0:
            raise KeyboardInterrupt("simulated kill")
        self.left -= 1
        self.encoded += len(texts)
        return self.inner.encode(texts, **kwargs)


def test_embed_then_rerun_hits_the_cache(cohort: MedsDataset, teacher: TeacherEncoder, tmp_path: Path) -> None:
    config = EmbedConfig(chunk_size=8, cache_dir=tmp_path / "cache")
    first = embed_dataset(cohort, teacher, tmp_path / "a", config)
    assert first.rows == 30 and first.encoded == 30 and first.cached == 0
    again = embed_dataset(cohort, teacher, tmp_path / "b", config)
    assert again.encoded == 0 and again.cached == 30
    a, b = EmbeddingSet.load(tmp_path / "a"), EmbeddingSet.load(tmp_path / "b")
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert a.spec == teacher.spec and a.extra["serializer"]["max_tokens"] < teacher.spec.max_tokens
    # the stored vector is the encoder's vector of that very record text
    serializer = record_serializer(teacher, Vocabulary.from_dataset(cohort), config)
    patient = cohort.patient(int(a.subject_ids[4]))
    text = serializer.serialize(patient, as_of=a.as_of[4].astype(dt.datetime))
    direct = teacher.encode([text], instruction=config.instruction_for(teacher))
    np.testing.assert_allclose(a.vectors[4], direct[0], atol=1e-5)
    assert first.truncated_records > 0, "a 400-token window truncates these records"


def test_crashed_job_resumes_without_loss_or_duplicates(
    cohort: MedsDataset, teacher: TeacherEncoder, tmp_path: Path
) -> None:
    config = EmbedConfig(chunk_size=8, cache_dir=tmp_path / "cache")
    crashing = Crashing(teacher, calls_before_crash=2)
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(cohort, crashing, tmp_path / "out", config)  # type: ignore[arg-type]
    assert crashing.encoded == 16 and not (tmp_path / "out").exists()
    resumed = Crashing(teacher, calls_before_crash=-1)
    report = embed_dataset(cohort, resumed, tmp_path / "out", config)  # type: ignore[arg-type]
    assert report.cached == 16 and report.encoded == 14 == resumed.encoded
    result = EmbeddingSet.load(tmp_path / "out")
    assert sorted(result.subject_ids.tolist()) == list(range(1, 31))
    clean = embed_dataset(cohort, teacher, tmp_path / "clean", EmbedConfig(chunk_size=8, cache_dir=tmp_path / "c2"))
    assert clean.encoded == 30
    np.testing.assert_allclose(result.vectors, EmbeddingSet.load(tmp_path / "clean").vectors, atol=1e-5)


def test_as_of_before_birth_is_skipped_and_counted(
    cohort: MedsDataset, teacher: TeacherEncoder, tmp_path: Path
) -> None:
    report = embed_dataset(
        cohort, teacher, tmp_path / "o", EmbedConfig(cache_dir=tmp_path / "c"), as_of=dt.datetime(1960, 1, 1)
    )
    assert report.skipped.get("as-of before birth", 0) > 0
    assert report.rows + report.skipped["as-of before birth"] == 30
