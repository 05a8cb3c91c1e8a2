"""The use-case layer: one index artifact shape whoever builds it, the recorded index found, task examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.synth import SynthConfig, generate_cohort
from ehrembed.encoders.base import EncoderSpec
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.errors import InputError, NotFoundError
from ehrembed.predict.tasks import resolve_tasks
from ehrembed.services.heads import task_examples
from ehrembed.services.indexes import build_recorded_index, recorded_index
from ehrembed.store.catalog import register_meds
from ehrembed.store.db import catalog
from ehrembed.store.repository import current_artifact


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> MedsDataset:
    out = tmp_path_factory.mktemp("synth") / "meds"
    generate_cohort(SynthConfig(n_subjects=300, seed=9), out)
    return MedsDataset.open(out)


def _embeddings(ids: list[int], path: Path) -> Path:
    spec = EncoderSpec("synthetic", "student", "/none", "0", "mean", 16, 128)
    vectors = np.random.default_rng(0).normal(size=(len(ids), 16)).astype(np.float32)
    times = np.full(len(ids), np.datetime64("2020-01-01T00:00:00", "us"))
    EmbeddingSet(np.asarray(ids, dtype=np.int64), times, vectors, spec, "v").save(path)
    return path


def test_an_index_is_built_recorded_and_found(synth: MedsDataset, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    emb = _embeddings(synth.subject_ids()[:200], tmp_path / "emb")
    with catalog(url) as session:
        register_meds(session, synth, "synth")
        built = build_recorded_index(synth, [emb], tmp_path / "index", session=session)
    assert built.report.rows == 200 and built.subjects_not_in_dataset == 0
    with catalog(url) as session:
        artifact = current_artifact(session, "index", synth.name)
        assert artifact is not None and set(artifact.spec) == {"kind", "encoder", "embeddings", "params", "rows"}
        assert artifact.spec["embeddings"] == [str(emb.resolve())]
        assert recorded_index(session, synth.name) == tmp_path / "index"
        with pytest.raises(NotFoundError, match="no index is recorded for dataset 'elsewhere'"):
            recorded_index(session, "elsewhere")
        stranger = _embeddings([10_000_001, 10_000_002], tmp_path / "stranger")
        with pytest.raises(InputError, match="wrong dataset"):
            build_recorded_index(synth, [stranger], tmp_path / "nope", session=session)
        with pytest.raises(InputError, match="shard by shard"):
            build_recorded_index(synth, [emb, emb], tmp_path / "nope", session=session, kind="flat")
    assert not (tmp_path / "nope").exists()


def test_task_examples_are_a_stable_half_positive_sample(synth: MedsDataset) -> None:
    (task,) = resolve_tasks(["new_hypertension"])
    first = task_examples(synth, task, 40)
    assert first == task_examples(synth, task, 40)
    assert len(first) <= 40
    assert sum(bool(e.value) for e in first) >= 20  # half chosen positives; background times may add more


def test_embeddings_are_recorded_under_the_encoder_name_the_export_looks_for(
    synth: MedsDataset, tmp_path: Path
) -> None:
    from ehrembed.services.embeddings import record_embeddings

    url = f"sqlite:///{tmp_path / 'store.db'}"
    emb = _embeddings(synth.subject_ids()[:10], tmp_path / "emb")
    with catalog(url) as session:
        register_meds(session, synth, "synth")
        record_embeddings(session, synth, emb, encoder="distilled", name="run-distilled")
        found = current_artifact(session, "embeddings", synth.name, matches=lambda a: a.spec["encoder"] == "distilled")
        assert found is not None and found.name == "run-distilled" and found.spec["dim"] == 16
