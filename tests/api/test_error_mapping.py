"""The API answers the error family with its 4xx and anything else with a 500 that hides the details."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from ehrembed.api.routers import patients as patients_router
from ehrembed.ehr.meds import MedsDataset, MedsError
from ehrembed.store.errors import ConflictError
from tests.api.conftest import Served


def test_api_bug_is_a_500_with_a_request_id_and_the_traceback_in_the_log(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def __init__(self, *_a: object, **_k: object) -> None:
            raise ValueError("internal detail /srv/secret/path")

    monkeypatch.setattr(patients_router, "Serializer", Broken)
    client = TestClient(served.client.app, raise_server_exceptions=False)
    sid = int(served.dataset.subject_ids()[0])
    with caplog.at_level(logging.ERROR, logger="ehrembed.api"):
        res = client.get(f"/v1/patients/{sid}/record", params={"dataset": "demo"}, headers=served.headers())
    assert res.status_code == 500
    body = res.json()["error"]
    assert "internal detail" not in res.text and "secret" not in res.text
    assert body["request_id"] == res.headers["x-request-id"]
    logged = [r for r in caplog.records if body["request_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback, under the request id


def test_api_family_errors_keep_their_status(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = int(served.dataset.subject_ids()[0])
    for raised, status in ((MedsError("bad shard in /srv/data/x.parquet"), 400), (ConflictError("taken"), 409)):

        def fail(*_a: object, exc: Exception = raised, **_k: object) -> None:
            raise exc

        monkeypatch.setattr(MedsDataset, "patient", fail)
        res = served.client.get(f"/v1/patients/{sid}/record", params={"dataset": "demo"}, headers=served.headers())
        assert res.status_code == status, res.text
        assert "/srv/data" not in res.text  # server paths are dropped from messages
