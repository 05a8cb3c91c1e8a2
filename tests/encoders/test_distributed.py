"""The Ray path writes the same embedding set as the single-process job (local Ray, 2 CPUs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.synth import SynthConfig, generate_cohort
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.encoders.job import EmbedConfig, embed_dataset
from ehrembed.encoders.teacher import TeacherEncoder


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    from ehrembed.encoders.distributed import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def test_ray_matches_single_process(ray_local: None, tmp_path: Path, tiny_qwen2_dir: Path) -> None:
    from ehrembed.encoders.distributed import embed_dataset_ray

    generate_cohort(SynthConfig(n_subjects=24, seed=9, shard_subjects=8), tmp_path / "meds")
    dataset = MedsDataset.open(tmp_path / "meds")
    assert len(dataset.shards) == 3
    config = EmbedConfig(batch_size=4, cache_dir=tmp_path / "cache-single")
    encoder = TeacherEncoder.from_folder(tiny_qwen2_dir, max_tokens=400)
    embed_dataset(dataset, encoder, tmp_path / "single", config)
    ray_config = EmbedConfig(batch_size=4, cache_dir=tmp_path / "cache-ray")
    report = embed_dataset_ray(
        dataset, str(tiny_qwen2_dir), tmp_path / "ray", ray_config, encoder_kwargs={"max_tokens": 400}, num_actors=2
    )
    single, distributed = EmbeddingSet.load(tmp_path / "single"), EmbeddingSet.load(tmp_path / "ray")
    assert report.rows == len(single) == 24 and report.encoded == 24
    np.testing.assert_array_equal(single.subject_ids, distributed.subject_ids)
    np.testing.assert_array_equal(single.as_of, distributed.as_of)
    np.testing.assert_allclose(single.vectors, distributed.vectors, atol=1e-5)
    assert single.serializer_version == distributed.serializer_version
    assert distributed.extra["ray"]["shards"] == 3
    again = embed_dataset_ray(
        dataset, str(tiny_qwen2_dir), tmp_path / "ray2", ray_config, encoder_kwargs={"max_tokens": 400}
    )
    assert again.cached == 24 and again.encoded == 0  # the shared cache: a re-run only reads
    subset = embed_dataset_ray(
        dataset, str(tiny_qwen2_dir), tmp_path / "ray3", ray_config, encoder_kwargs={"max_tokens": 400},
        subject_ids=[*dataset.subject_ids()[:5], 999_999],
    )  # fmt: skip
    assert subset.rows == 5 and subset.skipped == {"unknown subject": 1}
