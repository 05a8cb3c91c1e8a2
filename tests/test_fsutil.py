"""Atomic folder writes: a reader always finds a complete old or new folder, even across a crash mid-swap."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from ehrembed import fsutil
from ehrembed.fsutil import atomic_dir, restore_interrupted


def _write(target: Path, value: str) -> None:
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "value.txt").write_text(value)
        (tmp / "more.txt").write_text(value * 100)


def test_error_inside_the_block_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    _write(target, "old")
    with pytest.raises(RuntimeError), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "value.txt").write_text("half")
        raise RuntimeError("disk full")
    assert (target / "value.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no scratch left behind


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux-only")
def test_overwrite_is_one_atomic_swap_on_linux(tmp_path: Path) -> None:
    """A reader polling throughout many overwrites never sees the folder missing or half-written."""
    target = tmp_path / "index"
    _write(target, "0")
    assert fsutil._exchange(tmp_path / "index", tmp_path / "index")  # this filesystem supports exchange
    seen: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append((target / "value.txt").read_text())
            except FileNotFoundError:
                seen.append("MISSING")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 200):
            _write(target, str(i))
    finally:
        stop.set()
        thread.join()
    assert "MISSING" not in seen and len(seen) > 0
    assert (target / "value.txt").read_text() == "199"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_a_crash_between_the_fallback_renames_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no atomic swap exists, the old folder is renamed aside first; a crash there is repaired on next use."""
    target = tmp_path / "head"
    _write(target, "old")
    monkeypatch.setattr(fsutil, "_exchange", lambda a, b: False)
    real_replace = os.replace
    calls: list[tuple[str, str]] = []

    def crash_on_second_rename(src: str | Path, dst: str | Path) -> None:
        calls.append((str(src), str(dst)))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the two renames")
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "value.txt").write_text("new")
    monkeypatch.setattr(fsutil.os, "replace", real_replace)
    assert not target.exists()  # the window: the old folder is aside, the new one gone with the crash
    assert restore_interrupted(target)
    assert (target / "value.txt").read_text() == "old"
    assert not restore_interrupted(target)  # nothing more to restore


def test_loaders_restore_an_interrupted_swap(tmp_path: Path) -> None:
    import numpy as np

    from ehrembed.encoders.base import EncoderSpec
    from ehrembed.encoders.embeddings import EmbeddingSet

    spec = EncoderSpec("synthetic", "student", "/none", "0", "mean", 4, 16)
    emb = EmbeddingSet(
        subject_ids=np.arange(3, dtype=np.int64),
        as_of=np.full(3, np.datetime64("2020-01-01T00:00:00", "us")),
        vectors=np.eye(3, 4, dtype=np.float32),
        spec=spec,
        serializer_version="v",
    )
    emb.save(tmp_path / "emb")
    os.replace(tmp_path / "emb", tmp_path / ".emb.old-1234abcd")  # as a crash mid-swap leaves it
    assert EmbeddingSet.load(tmp_path / "emb").subject_ids.tolist() == [0, 1, 2]
