"""Crash-safe file output: write beside the target, fsync, then rename into place.

A reader sees either the old complete artifact or the new complete one, never half of either.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file, or every file below a folder and the folders themselves, to disk."""
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync_fd(child, os.O_RDONLY)
        for folder in [path, *(p for p in path.rglob("*") if p.is_dir())]:
            _fsync_fd(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    else:
        _fsync_fd(path, os.O_RDONLY)


def _fsync_fd(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (new, renamed or removed files) to disk."""
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on folders
        _fsync_fd(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_parent(path: Path) -> None:
    fsync_dir(path.parent)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Replace ``target`` with ``data`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_parent(target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a scratch folder that becomes ``target`` only if the block finishes without error.

    On error the scratch folder is removed and any previous ``target`` is untouched. With
    ``overwrite`` an existing ``target`` is replaced; without it, an existing one is an error
    raised before any work starts.
    """
    target = Path(target)
    restore_interrupted(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    scratch = target.with_name(f".{target.name}.tmp-{tag}")
    scratch.mkdir()
    try:
        yield scratch
        fsync_path(scratch)
        if not target.exists():
            os.replace(scratch, target)
        elif not _exchange(scratch, target):  # no atomic swap here: two renames, undone by restore_interrupted
            old = target.with_name(f".{target.name}.old-{tag}")
            os.replace(target, old)
            os.replace(scratch, target)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_parent(target)
    finally:
        if scratch.exists():  # the new folder on error, or the old one after a swap
            shutil.rmtree(scratch, ignore_errors=True)


def restore_interrupted(target: Path) -> bool:
    """Put back a previous ``target`` that a crash left renamed aside mid-swap; True if one was.

    Only the two-rename fallback of :func:`atomic_dir` has such a window (Linux swaps atomically).
    """
    target = Path(target)
    if target.exists() or not target.parent.is_dir():
        return False
    aside = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not aside:
        return False
    os.replace(aside[-1], target)
    _fsync_parent(target)
    return True


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:  # glibc older than 2.28, or another libc
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the filesystem cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, or of a folder's files (relative names and contents, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """An advisory lock on ``path`` (POSIX ``flock``; no lock where that is unavailable).

    Exclusive by default: serialises writers between processes (model conversion, patient upserts).
    ``shared`` lets many readers in while keeping exclusive writers out; where the lock file cannot
    be created (a read-only folder, which no writer can change either) a shared lock is skipped.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a")  # noqa: SIM115 - closed below, after the unlock
    except OSError:
        if not shared:
            raise
        yield
        return
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
