"""`ehrembed serve --workers N`: each worker's thread pools share the CPUs instead of each taking all of them."""

from __future__ import annotations

from ehrembed.cli.service import worker_threads


def test_workers_share_the_cpus() -> None:
    assert worker_threads(2, None, {}, cpus=2) == 1
    assert worker_threads(3, None, {}, cpus=16) == 5
    assert worker_threads(4, None, {}, cpus=2) == 1  # never below one thread


def test_one_worker_an_explicit_count_and_the_users_environment_win() -> None:
    assert worker_threads(1, None, {}, cpus=8) is None  # the libraries' default: every core
    assert worker_threads(2, 3, {"OMP_NUM_THREADS": "8"}, cpus=2) == 3
    assert worker_threads(2, None, {"OMP_NUM_THREADS": "2"}, cpus=2) is None
