from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ehrembed.distill.retention import RetentionError, knn_cosine, overlap_at_k, retention_report


def test_identical_arrays_retain_everything() -> None:
    x = np.random.default_rng(0).normal(size=(120, 16)).astype(np.float32)
    report = retention_report(x, x.copy(), k=10)
    assert report["student"]["cosine_mean"] == pytest.approx(1.0, abs=1e-5)
    assert report["student"]["overlap@10"] == 1.0
    assert report["undistilled"] is None
    assert report["n"] == 120 and report["dim"] == 16


def test_random_arrays_overlap_low_and_undistilled_comparison() -> None:
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(150, 16))
    close = teacher + 0.05 * rng.normal(size=teacher.shape)
    report = retention_report(teacher, close, k=10, undistilled=rng.normal(size=(150, 16)), chunk=40)
    assert report["student"]["overlap@10"] > 0.7
    assert report["undistilled"]["overlap@10"] < 0.2  # chance level is 10/149
    assert abs(report["undistilled"]["cosine_mean"]) < 0.2


def test_knn_matches_brute_force_and_excludes_self() -> None:
    x = np.random.default_rng(2).normal(size=(50, 8)).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.sort(np.argsort(-sims, axis=1)[:, :5], axis=1)
    got = knn_cosine(x, 5, chunk=7)
    assert (np.sort(got, axis=1) == expected).all()
    assert not (got == np.arange(50)[:, None]).any()
    # overlap works across different dimensions (student bare embedding vs teacher)
    assert overlap_at_k(x, x[:, :4], k=5).shape == (50,)


def test_dimension_mismatch_names_the_projection() -> None:
    with pytest.raises(RetentionError, match="projection"):
        retention_report(np.ones((10, 16)), np.ones((10, 8)))
    with pytest.raises(RetentionError, match="rows"):
        retention_report(np.ones((10, 16)), np.ones((9, 16)))
    with pytest.raises(RetentionError, match="k must"):
        retention_report(np.eye(5), np.eye(5), k=5)


def test_teacher_vectors_averaged_over_task_instructions(tmp_path: Path) -> None:
    import datetime as dt

    from ehrembed.distill.job import average_over_instructions, load_teacher_embeddings
    from ehrembed.encoders.base import EncoderSpec
    from ehrembed.encoders.embeddings import EmbeddingSet

    spec = EncoderSpec(name="t", kind="teacher", model_path="/t", revision="r", pooling="last", dim=2, max_tokens=64)
    t0 = np.datetime64(dt.datetime(2020, 1, 1), "us")

    def emb(ids: list[int], vectors: list[list[float]], instruction: str) -> EmbeddingSet:
        return EmbeddingSet(
            np.asarray(ids, dtype=np.int64), np.full(len(ids), t0), np.asarray(vectors, dtype=np.float32), spec,
            "markdown-v1-x", instruction, {"serializer": {"format": "markdown", "max_tokens": 40}},
        )  # fmt: skip

    a = emb([1, 2], [[1, 0], [0, 1]], "question a")
    b = emb([2, 3], [[1, 0], [0, 1]], "question b")
    b.extra["serializer"]["max_tokens"] = 30  # a longer instruction leaves less room: still the same layout
    mean = average_over_instructions({"a": a, "b": b})
    assert mean.subject_ids.tolist() == [1, 2, 3] and mean.instruction is None
    np.testing.assert_allclose(mean.vectors, [[1, 0], [np.sqrt(0.5), np.sqrt(0.5)], [0, 1]], atol=1e-6)
    assert mean.extra["instructions"] == {"a": "question a", "b": "question b"}
    a.save(tmp_path / "per_task" / "a")
    b.save(tmp_path / "per_task" / "b")
    np.testing.assert_allclose(load_teacher_embeddings(tmp_path / "per_task").vectors, mean.vectors, atol=1e-6)
    other = emb([1], [[1, 0]], "q")
    other.extra["serializer"] = {"format": "list"}
    with pytest.raises(ValueError, match="serializer layout"):
        average_over_instructions({"a": a, "other": other})
