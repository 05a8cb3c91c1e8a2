"""The error family decides what users see: its errors are exit 2, anything else is a bug (exit 1).

The API side is tests/api/test_error_mapping.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import ehrembed.ehr.stats as stats_module
from ehrembed import errors
from ehrembed.cli import main
from ehrembed.ehr.meds import MedsError, SubjectNotFoundError
from ehrembed.ehr.synth import SynthConfig, generate_cohort
from ehrembed.store.errors import ConflictError, NotFoundError, StoreError


def test_stage_errors_belong_to_the_family() -> None:
    assert issubclass(MedsError, errors.InputError) and issubclass(MedsError, ValueError)
    assert issubclass(StoreError, errors.InputError)
    assert issubclass(NotFoundError, errors.NotFoundError) and not issubclass(NotFoundError, errors.InputError)
    assert issubclass(ConflictError, errors.ConflictError)
    missing = SubjectNotFoundError("subject 7 is not in dataset demo")
    assert isinstance(missing, KeyError) and str(missing) == "subject 7 is not in dataset demo"


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    generate_cohort(SynthConfig(n_subjects=5, seed=1), tmp_path / "meds")
    return tmp_path / "meds"


def _run(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", ["ehrembed", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0)


def test_cli_input_error_is_one_line_and_exit_2(
    cohort: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["serialize", str(cohort), "--subject", "999999"], monkeypatch) == 2
    err = capsys.readouterr().err
    assert "subject 999999 is not in dataset" in err and "Traceback" not in err


def test_cli_bug_is_a_short_traceback_exit_1_and_debug_shows_all(
    cohort: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_a: object, **_k: object) -> None:
        raise ValueError("operands could not be broadcast together")  # a numpy-style bug, not bad input

    monkeypatch.setattr(stats_module, "dataset_stats", broken)
    assert _run(["info", str(cohort)], monkeypatch) == 1
    err = capsys.readouterr().err
    assert "internal error" in err and "ValueError" in err and "--debug" in err
    assert "Traceback" not in err and "cli/records.py" in err  # the innermost ehrembed frames only
    monkeypatch.setattr(sys, "argv", ["ehrembed", "--debug", "info", str(cohort)])
    with pytest.raises(ValueError, match="broadcast"):
        main()
