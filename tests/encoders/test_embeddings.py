"""EmbeddingSet save/load (folder with memory map, Parquet) and the content-addressed cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ehrembed.encoders.base import EncoderError, EncoderSpec
from ehrembed.encoders.cache import EmbeddingCache, cache_key
from ehrembed.encoders.embeddings import EmbeddingSet

SPEC = EncoderSpec(name="t", kind="student", model_path="/m", revision="abc", pooling="mean", dim=4, max_tokens=32)


def _set(n: int = 5) -> EmbeddingSet:
    rng = np.random.default_rng(0)
    return EmbeddingSet(
        subject_ids=np.arange(10, 10 + n, dtype=np.int64),
        as_of=np.array(["2020-01-01T23:59"] * n, dtype="datetime64[us]"),
        vectors=rng.normal(size=(n, 4)).astype(np.float32),
        spec=SPEC,
        serializer_version="markdown-v1-x",
        instruction="task",
        extra={"dataset": "toy"},
    )


@pytest.mark.parametrize("name", ["emb", "emb.parquet"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    original = _set()
    original.save(tmp_path / name)
    loaded = EmbeddingSet.load(tmp_path / name)
    np.testing.assert_array_equal(loaded.vectors, original.vectors)
    np.testing.assert_array_equal(loaded.subject_ids, original.subject_ids)
    np.testing.assert_array_equal(loaded.as_of, original.as_of)
    assert loaded.spec == SPEC and loaded.instruction == "task" and loaded.extra == {"dataset": "toy"}


def test_folder_load_is_memory_mapped(tmp_path: Path) -> None:
    _set().save(tmp_path / "emb")
    assert isinstance(EmbeddingSet.load(tmp_path / "emb").vectors, np.memmap)


def test_parquet_export_is_analyst_readable(tmp_path: Path) -> None:
    _set().save(tmp_path / "emb.parquet")
    frame = pl.read_parquet(tmp_path / "emb.parquet")
    assert frame.columns == ["subject_id", "prediction_time", "vector"]
    assert frame.height == 5 and len(frame.item(0, "vector")) == 4


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="not found"):
        EmbeddingSet.load(tmp_path / "nope")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(EncoderError, match="not a readable Parquet"):
        EmbeddingSet.load(tmp_path / "junk.parquet")
    with pytest.raises(EncoderError, match="dim 3 but the encoder spec says 4"):
        EmbeddingSet(np.arange(2), np.zeros(2, "datetime64[us]"), np.zeros((2, 3), np.float32), SPEC, "v")


def test_cache_keys_separate_encoder_serializer_instruction_and_text() -> None:
    base = cache_key("enc", "ser", "instr", "text")
    assert base == cache_key("enc", "ser", "instr", "text")
    variants = {
        cache_key("enc2", "ser", "instr", "text"),
        cache_key("enc", "ser2", "instr", "text"),
        cache_key("enc", "ser", None, "text"),
        cache_key("enc", "ser", "instr", "text2"),
        cache_key("en", "cser", "instr", "text"),
    }
    assert base not in variants and len(variants) == 5


def test_cache_persists_across_instances_and_skips_damaged_shards(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, dim=4)
    keys = [cache_key("e", "s", None, f"t{i}") for i in range(6)]
    keys.append(bytes(15) + b"\x00")  # trailing zero bytes must survive the round trip
    vectors = np.arange(28, dtype=np.float32).reshape(7, 4)
    cache.put(keys[:3], vectors[:3])
    cache.put(keys[3:], vectors[3:])
    (tmp_path / "shard-999999-broken.npz").write_bytes(b"truncated")
    again = EmbeddingCache(tmp_path, dim=4)
    assert len(again) == 7 and again.missing(keys) == []
    np.testing.assert_array_equal(again.get_many(keys[::-1]), vectors[::-1])
    with pytest.raises(KeyError, match="1 of 1 vectors"):
        again.get_many([cache_key("e", "s", None, "absent")])
    assert len(EmbeddingCache(tmp_path, dim=8)) == 0, "another dim's shards are not ours"
