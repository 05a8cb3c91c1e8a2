"""IVF-PQ built shard by shard and merged equals the index one pass builds; Ray fills shards in parallel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ehrembed.encoders.base import EncoderSpec
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.retrieval.index import IndexParams, VectorIndex, VectorIndexError
from ehrembed.retrieval.sharded import build_sharded_index

SPEC = EncoderSpec("synthetic", "student", "/none", "0", "mean", 32, 128)


def _parts(tmp_path: Path, sizes: list[int]) -> tuple[list[Path], np.ndarray]:
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(40, 32))
    paths, blocks, start = [], [], 0
    for i, n in enumerate(sizes):
        vectors = (centers[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, 32))).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        emb = EmbeddingSet(
            subject_ids=np.arange(start, start + n, dtype=np.int64),
            as_of=np.full(n, np.datetime64("2021-01-01T00:00:00", "us")),
            vectors=vectors,
            spec=SPEC,
            serializer_version="v",
        )
        paths.append(emb.save(tmp_path / f"part{i}"))
        blocks.append(vectors)
        start += n
    return paths, np.concatenate(blocks)


def test_merged_shards_search_like_one_pass(tmp_path: Path) -> None:
    paths, vectors = _parts(tmp_path, [1500, 900, 1100])
    params = IndexParams(nlist=32, pq_m=8, nprobe=32)
    report = build_sharded_index(paths, tmp_path / "sharded", params=params)
    assert report.rows == 3500 and report.kind == "ivfpq"
    sharded = VectorIndex.load(tmp_path / "sharded")
    assert sharded.lookup(np.array([0, 1500, 3499]))[0].tolist() == [0, 1500, 3499]
    exact = VectorIndex.build(vectors, kind="flat")
    queries = vectors[:100]
    truth, _ = exact.search(queries, 10)
    found, _ = sharded.search(queries, 10)
    one_pass, _ = VectorIndex.build(vectors, kind="ivfpq", params=params).search(queries, 10)

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found, strict=True)]))

    assert recall(found) > 0.7 and abs(recall(found) - recall(one_pass)) < 0.05
    assert found[:, 0].tolist() == list(range(100))  # each vector finds itself first


def test_ray_fill_gives_the_same_index(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from ehrembed.encoders.distributed import init_ray

    paths, vectors = _parts(tmp_path, [800, 700])
    params = IndexParams(nlist=16, pq_m=8, nprobe=16)
    build_sharded_index(paths, tmp_path / "seq", params=params)
    init_ray(num_cpus=2)
    try:
        build_sharded_index(paths, tmp_path / "ray", params=params, ray_address="local")
    finally:
        ray.shutdown()
    a, b = VectorIndex.load(tmp_path / "seq"), VectorIndex.load(tmp_path / "ray")
    np.testing.assert_array_equal(a.search(vectors[:50], 5)[0], b.search(vectors[:50], 5)[0])


def test_parts_of_different_encoders_are_refused(tmp_path: Path) -> None:
    paths, _ = _parts(tmp_path, [300, 300])
    other = EmbeddingSet.load(paths[1])
    other = EmbeddingSet(
        other.subject_ids,
        other.as_of,
        np.asarray(other.vectors),
        EncoderSpec("other", "student", "/x", "1", "mean", 32, 64),
        "v",
    )
    other.save(tmp_path / "other")
    with pytest.raises(VectorIndexError, match="one index, one encoder"):
        build_sharded_index([paths[0], tmp_path / "other"], tmp_path / "bad")


def test_cli_builds_one_index_from_several_embedding_sets(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from ehrembed.cli import app
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.ehr.synth import SynthConfig, generate_cohort
    from ehrembed.encoders.job import embed_dataset
    from tests.helpers import HashEncoder

    generate_cohort(SynthConfig(n_subjects=600, seed=2), tmp_path / "meds")
    dataset = MedsDataset.open(tmp_path / "meds")
    ids = dataset.subject_ids()
    embed_dataset(dataset, HashEncoder(dim=64), tmp_path / "a", subject_ids=ids[:300])
    embed_dataset(dataset, HashEncoder(dim=64), tmp_path / "b", subject_ids=ids[300:])
    args = ["index", str(tmp_path / "meds"), "--embeddings", str(tmp_path / "a"), "--embeddings", str(tmp_path / "b")]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "idx"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 600
    assert VectorIndex.load(tmp_path / "idx").kind == "ivfpq"
    wrong = CliRunner().invoke(app, [*args, "--kind", "hnsw", "--out", str(tmp_path / "x")])
    assert wrong.exit_code == 2 and "IVF-PQ" in wrong.output
