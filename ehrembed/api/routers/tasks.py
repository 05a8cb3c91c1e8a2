"""Tasks as JSON: the built-in EHRSHOT-style tasks and the ones clients stored."""

from __future__ import annotations

from fastapi import APIRouter

from ehrembed.api.deps import ReadKey, StateDep, WriteKey
from ehrembed.api.errors import ApiError
from ehrembed.api.schemas import TaskOut
from ehrembed.predict.tasks import builtin_tasks, parse_task
from ehrembed.store.repository import list_tasks, upsert_task

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


@router.get("", response_model=list[TaskOut])
def tasks(state: StateDep, _key: ReadKey) -> list[TaskOut]:
    """Stored tasks, then the built-in ones whose names are not taken."""
    with state.session() as session:
        stored = [TaskOut(name=t.name, source="stored", definition=t.definition) for t in list_tasks(session)]
    names = {t.name for t in stored}
    builtin = [TaskOut(name=t.name, source="builtin", definition=t.to_dict()) for t in builtin_tasks()]
    return stored + [t for t in builtin if t.name not in names]


@router.post("", response_model=TaskOut, status_code=201)
def create_task(definition: dict[str, object], state: StateDep, _key: WriteKey) -> TaskOut:
    """Validate a task (the YAML format as JSON, or an ACES config with a ``name``) and store it, replacing a
    stored task of the same name. A labels-folder task names files on the server: refused here."""
    task = parse_task(definition, source="task")
    if task.outcome.rule == "labels":
        raise ApiError(400, "a task over a labels folder names server files; post its labels as examples", "outcome")
    with state.session() as session:
        upsert_task(session, task.name, task.to_dict())
    return TaskOut(name=task.name, source="stored", definition=task.to_dict())
