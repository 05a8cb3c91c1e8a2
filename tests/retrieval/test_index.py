"""VectorIndex over FAISS: results against exact search, persistence, removal, exclusions and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ehrembed.encoders.base import EncoderSpec
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.fsutil import sha256_file
from ehrembed.retrieval import index as index_module
from ehrembed.retrieval.index import (
    FLAT_MAX_AUTO,
    HNSW_MAX_AUTO,
    INDEX_FILE,
    META_FILE,
    IndexParams,
    VectorIndex,
    VectorIndexError,
    build_index,
    default_nlist,
    default_pq_m,
    resolve_kind,
)

DIM = 32
SPEC = EncoderSpec(name="toy", kind="student", model_path="/m", revision="r1", pooling="mean", dim=DIM, max_tokens=64)
OTHER = EncoderSpec(
    name="other", kind="student", model_path="/m", revision="r2", pooling="mean", dim=DIM, max_tokens=64
)


def clustered(n: int, dim: int = DIM, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """Seeded, L2-normalised vectors around a few centres (so ANN search is realistic)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    vectors = clustered(3000)
    queries = clustered(50, seed=1)
    return vectors, queries


def exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def test_flat_matches_exact_search(data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = data
    index = VectorIndex.build(vectors, kind="flat", spec=SPEC)
    ids, scores = index.search(queries, 10)
    truth_ids, truth_scores = exact(vectors, queries, 10)
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)  # ties may swap ids, never scores
    assert recall(ids, truth_ids) >= 0.99
    assert (np.diff(scores, axis=1) <= 1e-6).all()


@pytest.mark.parametrize(
    ("kind", "params", "floor"),
    [
        ("hnsw", IndexParams(), 0.95),
        # 4-bit codes of 4 dims each on a small, noisy 32-d set: the defaults find most neighbours ...
        ("ivfpq", IndexParams(), 0.8),
        # ... and exact re-ranking of more candidates finds nearly all of them.
        ("ivfpq", IndexParams(refine="Flat", k_factor=64), 0.95),
    ],
)
def test_approximate_kinds_have_high_recall(
    data: tuple[np.ndarray, np.ndarray], kind: str, params: IndexParams, floor: float
) -> None:
    vectors, queries = data
    index = VectorIndex.build(vectors, kind=kind, params=params)
    assert index.kind == kind
    ids, scores = index.search(queries, 10)
    truth_ids, _ = exact(vectors, queries, 10)
    assert recall(ids, truth_ids) >= floor
    assert (ids >= 0).all() and (np.diff(scores, axis=1) <= 1e-5).all()


def test_auto_kind_by_size() -> None:
    assert resolve_kind("auto", 10) == "flat"
    assert resolve_kind("auto", FLAT_MAX_AUTO) == "flat"
    assert resolve_kind("auto", FLAT_MAX_AUTO + 1) == "hnsw"
    assert resolve_kind("auto", HNSW_MAX_AUTO + 1) == "ivfpq"
    assert resolve_kind("hnsw", 10) == "hnsw"
    with pytest.raises(VectorIndexError, match="index kind must be one of"):
        resolve_kind("annoy", 10)
    assert VectorIndex.build(clustered(100), kind="auto").kind == "flat"
    assert default_pq_m(384) == 96 and default_pq_m(30) == 6 and default_pq_m(3) == 1
    assert default_nlist(1_000_000) == 2048 and default_nlist(100) == 2


def test_vectors_are_normalised_on_add_and_search(data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = data
    index = VectorIndex.build(vectors[:500] * 7.0, kind="flat", spec=SPEC)
    _, scores = index.search(queries[:3] * 0.1, 5)
    _, truth_scores = exact(vectors[:500], queries[:3], 5)
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)
    raw = VectorIndex.build(vectors[:500] * 7.0, kind="flat", normalize=False)
    assert raw.search(queries[:1], 1)[1][0, 0] == pytest.approx(7.0 * truth_scores[0, 0], rel=1e-4)


def test_ids_map_to_rows() -> None:
    vectors = clustered(6)
    times = np.array(["2020-01-01", "2021-01-01", "2020-06-01", "NaT", "2019-01-01", "2022-01-01"], "datetime64[us]")
    index = VectorIndex.build(
        vectors, ids=[10, 11, 12, 13, 14, 15], subject_ids=[1, 1, 2, 2, 3, 1], prediction_times=times
    )
    subjects, when = index.lookup([11, 14])
    assert subjects.tolist() == [1, 3] and when[0] == np.datetime64("2021-01-01", "us")
    assert index.ids_for_subject(1).tolist() == [10, 11, 15]  # latest prediction time last
    assert index.ids_for_subject(2).tolist() == [13, 12]  # unknown time first
    assert index.ids_for_subject(99).tolist() == []
    with pytest.raises(KeyError, match="id 99 is not in the index"):
        index.lookup([99])
    np.testing.assert_allclose(index.reconstruct([12])[0], vectors[2], atol=1e-6)
    assert index.rows().height == 6


def test_exclusions_are_never_returned_and_k_still_comes_back(data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, _ = data
    for kind in ("flat", "hnsw", "ivfpq"):
        index = VectorIndex.build(vectors[:1000], kind=kind)
        queries = vectors[:4]
        plain, _ = index.search(queries, 5)
        assert (plain[:, 0] == np.arange(4)).all()  # each query finds itself first
        per_query = [[i, *plain[i, 1:3].tolist()] for i in range(4)]
        ids, _ = index.search(queries, 5, exclude_ids=per_query)
        for row, excluded in zip(ids, per_query, strict=True):
            assert not set(row) & set(excluded) and (row >= 0).all() and len(set(row)) == 5
        shared = plain[:, :3].reshape(-1).tolist()
        ids, _ = index.search(queries, 5, exclude_ids=shared)
        assert not set(ids.reshape(-1)) & set(shared) and (ids >= 0).all()


def test_exclusions_that_leave_fewer_than_k_rows_pad() -> None:
    vectors = clustered(8)
    index = VectorIndex.build(vectors, kind="flat")
    ids, scores = index.search(vectors[:1], 5, exclude_ids=range(5))
    assert sorted(ids[0, :3].tolist()) == [5, 6, 7] and ids[0, 3:].tolist() == [-1, -1]
    assert np.isneginf(scores[0, 3:]).all()
    with pytest.raises(VectorIndexError, match="2 collections for 1 queries"):
        index.search(vectors[:1], 2, exclude_ids=[[0], [1]])


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
@pytest.mark.parametrize("in_faiss", [True, False])
def test_remove(data: tuple[np.ndarray, np.ndarray], kind: str, in_faiss: bool) -> None:
    vectors, _ = data
    index = VectorIndex.build(vectors[:1000], kind=kind)
    index.skip_removed_in_faiss = in_faiss
    before, _ = index.search(vectors[:3], 5)
    gone = np.unique(before[:, :3])
    assert index.remove(gone) == len(gone) and index.remove([123_456]) == 0
    assert len(index) == 1000 - len(gone) and index.removed == len(gone)
    after, _ = index.search(vectors[:3], 5)
    assert not set(after.reshape(-1)) & set(gone.tolist()) and (after >= 0).all()
    with pytest.raises(KeyError):
        index.lookup(gone[:1])
    index.add(gone[:1], vectors[gone[:1]])  # a removed id may come back
    assert index.search(vectors[gone[:1]], 1)[0][0, 0] == gone[0]


def test_add_errors() -> None:
    index = VectorIndex(DIM, "flat", spec=SPEC)
    with pytest.raises(VectorIndexError, match="the index is empty"):
        index.search(clustered(1), 1)
    index.add([1, 2], clustered(2))
    with pytest.raises(VectorIndexError, match="id 2 is already in the index"):
        index.add([2], clustered(1))
    with pytest.raises(VectorIndexError, match="unique within one add"):
        index.add([5, 5], clustered(2))
    with pytest.raises(VectorIndexError, match="have dim 8 but the index holds 32-d"):
        index.add([3], clustered(1, dim=8))
    with pytest.raises(VectorIndexError, match="3 ids for 1 vectors"):
        index.add([3, 4, 5], clustered(1))
    with pytest.raises(VectorIndexError, match="NaN"):
        index.add([3], np.full((1, DIM), np.nan, dtype=np.float32))
    with pytest.raises(VectorIndexError, match="needs at least 256 vectors"):
        VectorIndex.build(clustered(100), kind="ivfpq")
    with pytest.raises(VectorIndexError, match="dim 16 differs from the encoder"):
        VectorIndex(16, spec=SPEC)
    with pytest.raises(VectorIndexError, match="refine must be one of"):
        IndexParams(refine="PQ")


@pytest.mark.parametrize("k", [0, -3, 101, True])
def test_k_errors(k: int) -> None:
    index = VectorIndex.build(clustered(100), kind="flat")
    with pytest.raises(VectorIndexError, match="k"):
        index.search(clustered(1), k)


def test_query_dim_and_encoder_mismatch() -> None:
    index = VectorIndex.build(clustered(100), kind="flat", spec=SPEC)
    with pytest.raises(VectorIndexError, match="queries have dim 16 but the index holds 32-d vectors"):
        index.search(clustered(2, dim=16), 1)
    with pytest.raises(VectorIndexError, match=r"built with encoder toy .* these vectors come from other"):
        index.search(clustered(1), 1, spec=OTHER)
    index.search(clustered(1), 1, spec=SPEC)
    emb = EmbeddingSet(
        subject_ids=np.arange(3),
        as_of=np.array(["2020-01-01"] * 3, "datetime64[us]"),
        vectors=clustered(3),
        spec=OTHER,
        serializer_version="v",
    )
    with pytest.raises(VectorIndexError, match="rebuild the index"):
        index.add_embeddings(emb)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_save_load_round_trip(tmp_path: Path, data: tuple[np.ndarray, np.ndarray], kind: str) -> None:
    vectors, queries = data
    times = np.arange(len(vectors)).astype("datetime64[D]").astype("datetime64[us]")
    index = VectorIndex.build(
        vectors, kind=kind, spec=SPEC, subject_ids=np.arange(len(vectors)) + 100, prediction_times=times
    )
    index.remove([5, 6])
    ids, scores = index.search(queries, 10)
    path = index.save(tmp_path / "idx")
    meta = json.loads((path / META_FILE).read_text())
    assert meta["kind"] == kind and meta["dim"] == DIM and meta["metric"] == "inner_product"
    assert meta["count"] == len(vectors) and meta["live"] == len(vectors) - 2
    assert meta["spec_fingerprint"] == SPEC.fingerprint() and len(meta["index_sha256"]) == 64

    loaded = VectorIndex.load(path, spec=SPEC)
    assert loaded.kind == kind and loaded.spec == SPEC and len(loaded) == len(vectors) - 2
    assert loaded.params == index.params
    loaded_ids, loaded_scores = loaded.search(queries, 10)
    np.testing.assert_array_equal(loaded_ids, ids)
    np.testing.assert_allclose(loaded_scores, scores, atol=1e-6)
    subjects, when = loaded.lookup([7])
    assert subjects[0] == 107 and when[0] == times[7]
    with pytest.raises(VectorIndexError, match="built with encoder toy"):
        VectorIndex.load(path, spec=OTHER)


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    path = VectorIndex.build(clustered(50), kind="flat").save(tmp_path / "idx")
    index_file = path / INDEX_FILE
    good = index_file.read_bytes()

    index_file.write_bytes(good[:-7] + b"garbage")
    with pytest.raises(VectorIndexError, match="is corrupt"):
        VectorIndex.load(path)

    index_file.write_bytes(b"")
    with pytest.raises(VectorIndexError, match="missing or empty"):
        VectorIndex.load(path)

    index_file.write_bytes(b"not a faiss index at all")  # a consistent checksum, unreadable contents
    meta = json.loads((path / META_FILE).read_text())
    meta["index_sha256"] = sha256_file(index_file)
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(VectorIndexError, match="not a readable FAISS index"):
        VectorIndex.load(path)

    (path / META_FILE).write_text("{")
    with pytest.raises(VectorIndexError, match="not valid JSON"):
        VectorIndex.load(path)
    with pytest.raises(VectorIndexError, match="not found"):
        VectorIndex.load(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(VectorIndexError, match="not an index folder"):
        VectorIndex.load(tmp_path / "plain")


def test_failed_rebuild_keeps_the_previous_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = clustered(60)
    path = VectorIndex.build(vectors, kind="flat").save(tmp_path / "idx")
    before = (path / META_FILE).read_text()
    faiss = index_module._faiss()

    def broken(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        VectorIndex.build(clustered(70, seed=3), kind="flat").save(path)
    monkeypatch.undo()
    assert (path / META_FILE).read_text() == before
    assert len(VectorIndex.load(path)) == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no scratch folders left behind


def test_build_index_from_embeddings(tmp_path: Path) -> None:
    emb = EmbeddingSet(
        subject_ids=np.array([3, 3, 4, 5], dtype=np.int64),
        as_of=np.array(["2020-01-01", "2021-01-01", "2020-01-01", "2020-01-01"], "datetime64[us]"),
        vectors=clustered(4),
        spec=SPEC,
        serializer_version="markdown-v1",
        instruction="represent",
        extra={"dataset": "toy", "serializer": {"format": "list", "max_tokens": 60}},
    )
    seen: list[tuple[int, int]] = []
    report = build_index(emb, tmp_path / "emb.index", progress=lambda done, total: seen.append((done, total)))
    assert report.kind == "flat" and report.rows == 4 and report.index_bytes > 0 and seen[-1] == (4, 4)
    loaded = VectorIndex.load(tmp_path / "emb.index")
    assert loaded.extra == {
        "serializer_version": "markdown-v1",
        "instruction": "represent",
        "serializer": {"format": "list", "max_tokens": 60},  # queries against the index use its layout
        "dataset": "toy",
    }
    assert loaded.ids_for_subject(3).tolist() == [0, 1]
    loaded.add_embeddings(emb)
    assert len(loaded) == 8 and loaded.ids_for_subject(3).tolist() == [0, 4, 1, 5]


@pytest.mark.gpu
@pytest.mark.skipif(not index_module.gpu_available(), reason="needs faiss-gpu and a visible GPU")
def test_gpu_flat_search_matches_cpu(data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = data
    cpu = VectorIndex.build(vectors, kind="flat", use_gpu=False)
    gpu = VectorIndex.build(vectors, kind="flat", use_gpu=True)
    gpu.remove([1, 2, 3])
    cpu.remove([1, 2, 3])
    for index in (cpu, gpu):
        index.search(queries[:1], 1)
    np.testing.assert_allclose(gpu.search(queries, 10)[1], cpu.search(queries, 10)[1], atol=1e-4)
    assert not set(gpu.search(vectors[:4], 10, exclude_ids=[0])[0].reshape(-1)) & {0, 1, 2, 3}
