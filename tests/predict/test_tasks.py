"""Task files: validation with clear errors, defaults, the built-in set."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrembed.predict.tasks import (
    GROUPS,
    TaskError,
    builtin_task_names,
    builtin_tasks,
    load_task,
    parse_task,
    resolve_tasks,
)

AFIB = """
name: new_afib
description: Atrial fibrillation diagnosed within the next year
prediction_times: {rule: visit_days, time: "23:59"}
horizon: {start_days: 1, end_days: 365}
outcome: {codes: ["SNOMED/49436004"], include_descendants: true}
exclude_if_prior_outcome: true
"""


def test_the_issue_example_parses_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "afib.yaml"
    path.write_text(AFIB)
    task = load_task(path)
    assert task.outcome.rule == "codes"
    assert task.outcome_codes == ("SNOMED/49436004",)
    assert task.prediction_times.clock.hour == 23 and task.prediction_times.clock.minute == 59
    assert task.horizon.start_days == 1 and task.horizon.end_days == 365
    assert task.group == "custom"
    assert parse_task(task.to_dict()) == task  # JSON round trip (the API's task format)


def test_prediction_times_default_to_the_outcome_rule() -> None:
    los = parse_task({"name": "los", "outcome": {"rule": "length_of_stay", "min_days": 3}})
    assert los.prediction_times.rule == "admission_day"
    readmit = parse_task({"name": "readmit", "outcome": {"rule": "readmission"}, "prediction_times": {"time": "08:00"}})
    assert readmit.prediction_times.rule == "discharge_day" and readmit.prediction_times.time == "08:00"
    lab = parse_task({"name": "k", "outcome": {"rule": "abnormal_lab", "codes": ["LOINC/2823-3"], "above": 5.5}})
    assert lab.prediction_times.rule == "before_lab"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "Bad Name", "outcome": {"codes": ["SNOMED/1"]}}, "name: name must be lowercase"),
        ({"name": "x", "outcome": {"codes": []}}, "outcome.codes: Value error, outcome.codes must list at least one"),
        ({"name": "x", "outcome": {"codes": ["not a code"]}}, "is not a code of the form VOCABULARY/CODE"),
        ({"name": "x", "outcome": {"rule": "telepathy"}}, "outcome"),
        (
            {"name": "x", "outcome": {"codes": ["A/1"]}, "horizon": {"start_days": 30, "end_days": 10}},
            "end_days (10.0)",
        ),
        ({"name": "x", "outcome": {"codes": ["A/1"]}, "prediction_times": {"time": "25:00"}}, "time must be HH:MM"),
        (
            {"name": "x", "outcome": {"rule": "length_of_stay"}, "prediction_times": {"rule": "visit_days"}},
            "does not fit",
        ),
        ({"name": "x", "outcome": {"rule": "abnormal_lab", "codes": ["LOINC/1"]}}, "needs below, above"),
        ({"name": "x", "outcome": {"codes": ["A/1"]}, "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"outcome": {"codes": ["A/1"]}}, "name: Field required"),
    ],
)
def test_invalid_tasks_name_the_field(data: dict, message: str) -> None:
    with pytest.raises(TaskError) as info:
        parse_task(data, source="t.yaml")
    assert str(info.value).startswith("t.yaml: ")
    assert message.split(": Value error, ")[-1] in str(info.value)


def test_bad_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="not found"):
        load_task(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(TaskError, match="not valid YAML"):
        load_task(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(TaskError, match="must be a mapping"):
        load_task(listy)


def test_builtin_tasks_cover_the_ehrshot_groups() -> None:
    tasks = builtin_tasks()
    assert {t.group for t in tasks} == {"operational", "new_diagnosis", "abnormal_lab"}
    names = {t.name for t in tasks}
    assert {
        "long_los",
        "readmission_30d",
        "icu_transfer",
        "new_hypertension",
        "new_acute_mi",
        "lab_hyperkalemia",
    } <= names
    assert len(names) == len(builtin_task_names())
    assert all(t.instruction for t in tasks)


def test_resolve_tasks_by_file_name_and_group(tmp_path: Path) -> None:
    path = tmp_path / "afib.yaml"
    path.write_text(AFIB)
    tasks = resolve_tasks([str(path), "long_los", "abnormal_lab"])
    assert tasks[0].name == "new_afib" and tasks[1].name == "long_los"
    assert {t.group for t in tasks[2:]} == {"abnormal_lab"}
    assert len(resolve_tasks(["all"])) == len(builtin_task_names())
    with pytest.raises(TaskError, match="no tasks"):
        resolve_tasks([])
    assert "custom" in GROUPS
