"""Crash safety with real processes: SIGKILL an embedding job or an index build midway, then carry on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.synth import SynthConfig, generate_cohort
from ehrembed.encoders.embeddings import EmbeddingSet
from ehrembed.retrieval.index import VectorIndex, build_index


def _cli(args: list[str], home: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EHREMBED_HOME": str(home), "TQDM_DISABLE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ehrembed.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _shards(cache: Path) -> int:
    return len(list(cache.rglob("shard-*.npz"))) if cache.exists() else 0


def test_sigkill_mid_embedding_then_rerun_completes_without_duplicates(tmp_path: Path, tiny_qwen2_dir: Path) -> None:
    home = tmp_path / "home"
    generate_cohort(SynthConfig(n_subjects=160, seed=4), tmp_path / "meds")
    args = ["embed", str(tmp_path / "meds"), "--encoder", str(tiny_qwen2_dir), "--max-tokens", "400",
            "--batch-size", "4", "--chunk-size", "8", "--out", str(tmp_path / "emb")]  # fmt: skip
    job = _cli(args, home)
    cache = home / "cache" / "embeddings"
    deadline = time.monotonic() + 120
    while _shards(cache) < 3 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, "the job finished before it could be killed; make the cohort larger"
    job.send_signal(signal.SIGKILL)
    job.wait()
    partial = _shards(cache)
    assert partial >= 3 and not (tmp_path / "emb").exists()  # no half-written embedding set

    rerun = _cli([*args, "--json"], home)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()[-2000:]
    emb = EmbeddingSet.load(tmp_path / "emb")
    dataset = MedsDataset.open(tmp_path / "meds")
    assert sorted(emb.subject_ids.tolist()) == dataset.subject_ids()  # none missing, none twice
    assert b'"cached": ' in out and b'"cached": 0,' not in out  # the killed job's work was kept

    clean = _cli([*args[:-1], str(tmp_path / "clean")], tmp_path / "clean_home")
    assert clean.wait(timeout=300) == 0
    np.testing.assert_allclose(EmbeddingSet.load(tmp_path / "clean").vectors, emb.vectors, atol=1e-5)


@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5])
def test_sigkill_during_an_index_rebuild_keeps_the_previous_index(tmp_path: Path, delay: float) -> None:
    rng = np.random.default_rng(0)
    from ehrembed.encoders.base import EncoderSpec

    spec = EncoderSpec("synthetic", "student", "/none", "0", "mean", 64, 128)
    vectors = rng.normal(size=(60_000, 64)).astype(np.float32)
    emb = EmbeddingSet(
        subject_ids=np.arange(60_000, dtype=np.int64),
        as_of=np.full(60_000, np.datetime64("2020-01-01T00:00:00", "us")),
        vectors=vectors,
        spec=spec,
        serializer_version="v",
    )
    emb.save(tmp_path / "emb")
    target = tmp_path / "index"
    build_index(EmbeddingSet.load(tmp_path / "emb"), target, kind="flat")
    before = VectorIndex.load(target)
    script = (
        "import sys; from ehrembed.encoders.embeddings import EmbeddingSet; "
        "from ehrembed.retrieval.index import build_index; "
        f"build_index(EmbeddingSet.load({str(tmp_path / 'emb')!r}), {str(target)!r}, kind='hnsw')"
    )
    job = subprocess.Popen([sys.executable, "-c", script])
    time.sleep(delay)
    job.send_signal(signal.SIGKILL)
    job.wait()
    after = VectorIndex.load(target)  # the old flat index, or the new HNSW one if it finished: never broken
    assert after.kind in ("flat", "hnsw") and len(after) == len(before)
    ids, _ = after.search(vectors[:3], 1)
    assert ids[:, 0].tolist() == [0, 1, 2]
