"""Several workers over one store and one data home (``ehrembed serve --workers N``) agree with each other.

Each worker is a separate app with its own in-memory state, as in separate processes; file locks are
taken through separate file descriptions, so they conflict just as they would across processes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from ehrembed.api import create_app
from ehrembed.ehr.upsert import read_lock, write_lock
from tests.api.conftest import Served


@pytest.fixture()
def other_worker(served: Served) -> Iterator[TestClient]:
    settings = served.settings.model_copy(update={"api_max_heads": 1})
    with TestClient(create_app(settings)) as client:
        yield client


def _fit(served: Served, client: TestClient, start: int) -> str:
    ids = served.dataset.splits().get_column("subject_id").sort().to_list()
    examples = [
        {"subject_id": sid, "prediction_time": "2020-06-01T00:00:00", "label": i % 2 == 0}
        for i, sid in enumerate(ids[start : start + 40])
    ]
    res = client.post(
        "/v1/heads",
        json={"dataset": "demo", "examples": examples, "head": "logistic", "encoder": "tiny"},
        headers=served.headers("write"),
    )
    assert res.status_code == 201, res.text
    return str(res.json()["head_id"])


def test_a_head_fitted_in_one_worker_serves_in_another(served: Served, other_worker: TestClient) -> None:
    first, second = _fit(served, served.client, 0), _fit(served, served.client, 40)
    subject = served.dataset.subject_ids()[0]
    for head_id in (first, second, first):  # the other worker keeps one head in memory: it reloads the rest
        shown = other_worker.get(f"/v1/heads/{head_id}", headers=served.headers())
        assert shown.status_code == 200, shown.text
        predicted = other_worker.post(
            f"/v1/heads/{head_id}/predict", json={"subject_ids": [subject]}, headers=served.headers()
        )
        assert predicted.status_code == 200, predicted.text
    assert other_worker.get("/readyz").json()["heads"] == 1
    missing = other_worker.get("/v1/heads/nope", headers=served.headers())
    assert missing.status_code == 404 and "POST /v1/heads" in missing.json()["error"]["message"]


def test_an_upsert_in_one_worker_is_seen_by_another(served: Served, other_worker: TestClient) -> None:
    new_id = 777_000_042
    record = other_worker.get(f"/v1/patients/{new_id}/record", params={"dataset": "demo"}, headers=served.headers())
    assert record.status_code == 404  # the other worker has loaded the dataset before the upsert
    events = [
        {"subject_id": new_id, "time": None, "code": "Gender/M"},
        {"subject_id": new_id, "time": "1955-01-01T00:00:00", "code": "MEDS_BIRTH"},
        {"subject_id": new_id, "time": "2021-03-01T09:00:00", "code": "ICD10CM/E11.9"},
    ]
    res = served.client.post("/v1/datasets/demo/patients", json={"events": events}, headers=served.headers("write"))
    assert res.status_code == 200, res.text
    record = other_worker.get(f"/v1/patients/{new_id}/record", params={"dataset": "demo"}, headers=served.headers())
    assert record.status_code == 200, record.text
    assert "diabetes" in record.json()["record"].lower()
    similar = other_worker.get(
        f"/v1/patients/{new_id}/similar", params={"dataset": "demo", "k": 3}, headers=served.headers()
    )
    assert similar.status_code == 200, similar.text


def test_an_upsert_waits_for_readers_and_new_readers_wait_for_it(served: Served) -> None:
    """Readers in progress hold the folder; a waiting writer holds the gate, so later readers queue behind it."""
    root = served.dataset.root
    order: list[str] = []
    writer_waiting = threading.Event()

    def writer() -> None:
        writer_waiting.set()
        with write_lock(root):
            order.append("write")

    def late_reader() -> None:
        with read_lock(root):
            order.append("late read")

    with read_lock(root):
        w = threading.Thread(target=writer)
        w.start()
        writer_waiting.wait()
        w.join(timeout=0.3)
        assert w.is_alive()  # blocked by the reader in progress
        r = threading.Thread(target=late_reader)
        r.start()
        r.join(timeout=0.3)
        assert r.is_alive()  # queued behind the waiting writer
        order.append("first read done")
    w.join(timeout=10)
    r.join(timeout=10)
    assert order == ["first read done", "write", "late read"]
