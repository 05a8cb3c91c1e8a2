"""Every endpoint and its error paths, auth scopes and the audit trail, on a served synthetic dataset."""

from __future__ import annotations

import datetime as dt
import io
import threading

import httpx
import numpy as np
import polars as pl
import pytest
import yaml

from ehrembed.api.schemas import SimilarOut
from ehrembed.fsutil import sha256_file
from ehrembed.store.db import make_engine, session_scope
from ehrembed.store.repository import list_audit
from tests.api.conftest import Served


def _subject(served: Served, n: int = 0) -> int:
    return int(served.dataset.splits().get_column("subject_id").sort()[n])


def _error(response, status: int, field: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["status"] == status and body["message"]
    if field is not None:
        assert body["field"] == field, body
    return body


def test_health_ready_metrics_need_no_key(served: Served) -> None:
    c = served.client
    assert c.get("/healthz").json() == {"status": "ok"}
    ready = c.get("/readyz").json()
    assert ready["status"] == "ready" and ready["datasets"]["demo"]["index"] and ready["guidelines"]
    c.get(f"/v1/patients/{_subject(served)}/record", params={"dataset": "demo"}, headers=served.headers())
    text = c.get("/metrics").text
    assert "ehrembed_requests_total" in text and 'route="/v1/patients/{subject_id}/record"' in text
    assert "ehrembed_request_seconds_bucket" in text


def test_auth_401_and_403(served: Served) -> None:
    c, sid = served.client, _subject(served)
    _error(c.get(f"/v1/patients/{sid}/record", params={"dataset": "demo"}), 401, "Authorization")
    bad = {"Authorization": "Bearer ehr_not-a-real-key"}
    _error(c.get(f"/v1/patients/{sid}/record", params={"dataset": "demo"}, headers=bad), 401, "Authorization")
    body = {"events": [{"subject_id": 1, "code": "X/1", "time": "2020-01-01T00:00:00"}]}
    _error(c.post("/v1/datasets/demo/patients", json=body, headers=served.headers("read")), 403)
    _error(c.post("/v1/admin/datasets/demo/reload-index", headers=served.headers("write")), 403)


def test_record_and_its_errors(served: Served) -> None:
    c, sid = served.client, _subject(served)
    ok = c.get(f"/v1/patients/{sid}/record", params={"dataset": "demo"}, headers=served.headers())
    assert ok.status_code == 200 and ok.json()["record"].startswith("# Electronic Healthcare Record")
    early = c.get(
        f"/v1/patients/{sid}/record",
        params={"dataset": "demo", "as_of": "2019-01-01T00:00:00"},
        headers=served.headers(),
    )
    assert early.status_code in (200, 400)
    _error(
        c.get("/v1/patients/999999999/record", params={"dataset": "demo"}, headers=served.headers()), 404, "subject_id"
    )
    _error(c.get(f"/v1/patients/{sid}/record", params={"dataset": "nope"}, headers=served.headers()), 404)
    _error(
        c.get(f"/v1/patients/{sid}/record", params={"dataset": "demo", "as_of": "yesterday"}, headers=served.headers()),
        422,
        "as_of",
    )


def test_patient_reads_are_audited_with_key_and_subjects(served: Served) -> None:
    c, sid = served.client, _subject(served, 3)
    c.get(f"/v1/patients/{sid}/record", params={"dataset": "demo"}, headers=served.headers())
    c.get("/v1/patients/999999998/record", params={"dataset": "demo"}, headers=served.headers())
    engine = make_engine(served.settings.resolved_database_url)
    with session_scope(engine) as session:
        rows = list_audit(session, dataset="demo", limit=20)
        found = [(r.endpoint, r.subject_ids, r.status_code, r.api_key_id) for r in rows]
    engine.dispose()
    assert ("/v1/patients/{subject_id}/record", [sid], 200) in [f[:3] for f in found]
    assert ("/v1/patients/{subject_id}/record", [999999998], 404) in [f[:3] for f in found]
    assert all(f[3] is not None for f in found if f[1] in ([sid], [999999998]))


def test_outlook_forecasts_new_codes_and_is_audited(served: Served) -> None:
    c, sid = served.client, _subject(served, 7)
    res = c.get(f"/v1/patients/{sid}/outlook", params={"dataset": "demo", "top": 5}, headers=served.headers())
    assert res.status_code == 200, res.text
    body = res.json()
    probabilities = [item["probability"] for item in body["items"]]
    assert 0 < len(body["items"]) <= 5 and probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probabilities) and all(item["description"] for item in body["items"])
    had = {e.code for e in served.dataset.patient(sid).events_until(dt.datetime.fromisoformat(body["as_of"]))}
    assert not had & {item["code"] for item in body["items"]}  # new codes only
    longer = c.get(
        f"/v1/patients/{sid}/outlook", params={"dataset": "demo", "top": 100, "horizon_days": 3650},
        headers=served.headers(),
    ).json()  # fmt: skip
    shorter = c.get(
        f"/v1/patients/{sid}/outlook", params={"dataset": "demo", "top": 100, "horizon_days": 30},
        headers=served.headers(),
    ).json()  # fmt: skip
    by_code = {item["code"]: item["probability"] for item in shorter["items"]}
    assert all(
        item["probability"] >= by_code[item["code"]] - 1e-4 for item in longer["items"] if item["code"] in by_code
    )
    assert c.get(f"/v1/patients/{sid}/outlook", params={"dataset": "demo"}).status_code == 401
    _error(
        c.get(f"/v1/patients/{sid}/outlook", params={"dataset": "demo", "horizon_days": 0}, headers=served.headers()),
        422,
    )
    _error(
        c.get("/v1/patients/999999997/outlook", params={"dataset": "demo"}, headers=served.headers()), 404, "subject_id"
    )
    engine = make_engine(served.settings.resolved_database_url)
    with session_scope(engine) as session:
        rows = list_audit(session, dataset="demo", limit=50)
        found = [(r.endpoint, r.subject_ids, r.status_code) for r in rows]
    engine.dispose()
    assert ("/v1/patients/{subject_id}/outlook", [sid], 200) in found
    assert ("/v1/patients/{subject_id}/outlook", [999999997], 404) in found


def test_similar_by_subject_excludes_itself_and_filters(served: Served) -> None:
    c, sid = served.client, _subject(served, 5)
    res = c.get(f"/v1/patients/{sid}/similar", params={"dataset": "demo", "k": 5}, headers=served.headers())
    assert res.status_code == 200, res.text
    body = res.json()
    SimilarOut.model_validate(body)  # the hand-built body matches the documented schema
    assert len(body["neighbors"]) == 5 and sid not in [n["subject_id"] for n in body["neighbors"]]
    assert "summary" in body["neighbors"][0]["explanation"]
    women = c.get(
        f"/v1/patients/{sid}/similar", params={"dataset": "demo", "k": 5, "sex": "F"}, headers=served.headers()
    ).json()
    assert all(n["sex"] == "F" for n in women["neighbors"])
    _error(c.get(f"/v1/patients/{sid}/similar", params={"dataset": "demo", "k": 0}, headers=served.headers()), 422, "k")
    _error(
        c.get(f"/v1/patients/{sid}/similar", params={"dataset": "demo", "k": 500}, headers=served.headers()), 422, "k"
    )
    _error(
        c.get("/v1/patients/123456789/similar", params={"dataset": "demo"}, headers=served.headers()), 404, "subject_id"
    )
    _error(c.get(f"/v1/patients/{sid}/similar", params={"dataset": "demo", "sex": "X"}, headers=served.headers()), 400)


def test_similar_by_inline_record(served: Served) -> None:
    c = served.client
    body = {"dataset": "demo", "record": "# Electronic Healthcare Record\n- Essential hypertension", "k": 3}
    res = c.post("/v1/similar", json=body, headers=served.headers())
    assert res.status_code == 200, res.text
    assert len(res.json()["neighbors"]) == 3
    _error(c.post("/v1/similar", json={**body, "k": 0}, headers=served.headers()), 422, "k")
    _error(c.post("/v1/similar", json={**body, "extra": 1}, headers=served.headers()), 422, "extra")


def test_embeddings_for_subjects_and_records(served: Served) -> None:
    c, sid = served.client, _subject(served)
    res = c.post(
        "/v1/embeddings", json={"dataset": "demo", "subject_ids": [sid], "encoder": "tiny"}, headers=served.headers()
    )
    assert res.status_code == 200, res.text
    rows = res.json()["rows"]
    assert rows[0]["subject_id"] == sid and len(rows[0]["vector"]) == 32
    texts = c.post(
        "/v1/embeddings", json={"records": ["a record", "another"], "encoder": "tiny"}, headers=served.headers()
    )
    assert len(texts.json()["rows"]) == 2
    _error(c.post("/v1/embeddings", json={"records": ["x"], "encoder": "gpt-9"}, headers=served.headers()), 404)
    _error(
        c.post(
            "/v1/embeddings", json={"records": ["x"], "subject_ids": [1], "dataset": "demo"}, headers=served.headers()
        ),
        422,
    )
    _error(
        c.post(
            "/v1/embeddings",
            json={"dataset": "demo", "subject_ids": [424242], "encoder": "tiny"},
            headers=served.headers(),
        ),
        404,
        "subject_ids",
    )


def test_embeddings_follow_the_task_instruction(served: Served) -> None:
    """An instruction-tuned encoder embeds for the task's question; a student's vectors ignore the task."""
    c, sid = served.client, _subject(served)

    def vector(encoder: str, task: str | None) -> list[float]:
        body = {"dataset": "demo", "subject_ids": [sid], "encoder": encoder, **({"task": task} if task else {})}
        res = c.post("/v1/embeddings", json=body, headers=served.headers())
        assert res.status_code == 200, res.text
        return res.json()["rows"][0]["vector"]

    generic, afib, htn = (vector("tinyteacher", t) for t in (None, "new_afib", "new_hypertension"))
    assert generic != afib and afib != htn and afib == vector("tinyteacher", "new_afib")
    assert vector("tiny", "new_afib") == vector("tiny", None)
    inline = c.post(
        "/v1/embeddings",
        json={"records": ["a record"], "encoder": "tinyteacher", "task": "new_afib"},
        headers=served.headers(),
    )
    assert inline.status_code == 200, inline.text
    _error(
        c.post(
            "/v1/embeddings",
            json={"dataset": "demo", "subject_ids": [sid], "encoder": "tinyteacher", "task": "no_such_task"},
            headers=served.headers(),
        ),
        404,
        "task",
    )


@pytest.mark.parametrize("fmt", ["parquet", "npy", "csv"])
def test_export_streams_a_file(served: Served, fmt: str) -> None:
    res = served.client.get(
        "/v1/embeddings/export",
        params={"dataset": "demo", "encoder": "tiny-emb", "format": fmt},
        headers=served.headers(),
    )
    assert res.status_code == 200, res.text
    n = served.dataset.splits().height
    assert res.headers["x-rows"] == str(n)
    if fmt == "parquet":
        assert pl.read_parquet(io.BytesIO(res.content)).height == n
    elif fmt == "npy":
        assert np.load(io.BytesIO(res.content)).shape == (n, 32)
    else:
        assert len(res.text.strip().splitlines()) == n + 1
    _error(
        served.client.get(
            "/v1/embeddings/export", params={"dataset": "demo", "encoder": "none"}, headers=served.headers()
        ),
        404,
        "encoder",
    )
    _error(
        served.client.get(
            "/v1/embeddings/export",
            params={"dataset": "demo", "encoder": "tiny-emb", "format": "xls"},
            headers=served.headers(),
        ),
        422,
        "format",
    )


def test_export_pages_through_a_set(served: Served) -> None:
    def page(**params: int) -> httpx.Response:
        query = {"dataset": "demo", "encoder": "tiny-emb", "format": "npy", **params}
        return served.client.get("/v1/embeddings/export", params=query, headers=served.headers())

    whole = np.load(io.BytesIO(page().content))
    n = len(whole)
    parts = []
    for offset in range(0, n, 7):
        res = page(offset=offset, limit=7)
        assert res.status_code == 200, res.text
        assert res.headers["x-total-rows"] == str(n) and res.headers["x-rows"] == str(min(7, n - offset))
        parts.append(np.load(io.BytesIO(res.content)))
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert np.load(io.BytesIO(page(offset=n).content)).shape == (0, 32)  # the end: an empty page
    _error(page(offset=n + 1), 422, "offset")
    _error(page(limit=0), 422, "limit")


def test_tasks_create_list_and_validate(served: Served) -> None:
    c = served.client
    task = {"name": "htn_next_year", "outcome": {"codes": ["ICD10CM/I10"]}, "exclude_if_prior_outcome": True}
    created = c.post("/v1/tasks", json=task, headers=served.headers("write"))
    assert created.status_code == 201, created.text
    names = {t["name"]: t["source"] for t in c.get("/v1/tasks", headers=served.headers()).json()}
    assert names["htn_next_year"] == "stored" and names["long_los"] == "builtin"
    bad = c.post("/v1/tasks", json={"name": "x", "outcome": {"codes": ["nope"]}}, headers=served.headers("write"))
    assert "VOCABULARY/CODE" in _error(bad, 400)["message"]
    files = {"name": "y", "outcome": {"rule": "labels", "path": "/etc"}}  # would read the server's files
    assert "server files" in _error(c.post("/v1/tasks", json=files, headers=served.headers("write")), 400)["message"]


def test_an_aces_config_is_a_task_and_fits_a_head(served: Served) -> None:
    """MEDS-DEV's readmission config with the OMOP predicates, posted as JSON, labels the served cohort."""
    from ehrembed.predict.aces import load_predicates, meds_dev_task

    c = served.client
    config = yaml.safe_load(meds_dev_task("meds-dev:readmission/general_hospital/30d").read_text())
    body = {**config, "name": "readmit_aces", "dataset_predicates": load_predicates("omop")}
    created = c.post("/v1/tasks", json=body, headers=served.headers("write"))
    assert created.status_code == 201, created.text
    assert created.json()["definition"]["outcome"]["rule"] == "aces"
    head = c.post(
        "/v1/heads",
        json={"dataset": "demo", "task": "readmit_aces", "encoder": "tiny", "max_examples": 60},
        headers=served.headers("write"),
    )
    assert head.status_code == 201, head.text
    assert head.json()["task"] == "readmit_aces" and head.json()["n_positive"] > 0
    unnamed = c.post("/v1/tasks", json=config, headers=served.headers("write"))
    assert "needs a name" in _error(unnamed, 400)["message"]
    unset = c.post("/v1/tasks", json={**config, "name": "readmit_raw"}, headers=served.headers("write"))
    assert unset.status_code == 201  # stored as given; labelling it names the predicates left to the dataset
    refused = c.post(
        "/v1/heads", json={"dataset": "demo", "task": "readmit_raw", "encoder": "tiny"}, headers=served.headers("write")
    )
    assert "hospital_admission" in _error(refused, 400)["message"]


def _head_examples(served: Served) -> tuple[list[int], list[dict[str, object]]]:
    """The served cohort's subject ids, and labelled examples on the first 80 of them."""
    ids = served.dataset.splits().get_column("subject_id").sort().to_list()
    examples = [
        {"subject_id": sid, "prediction_time": "2020-06-01T00:00:00", "boolean_value": i % 3 == 0}
        for i, sid in enumerate(ids[:80])
    ]
    return ids, examples


def test_heads_fit_predict_with_evidence(served: Served) -> None:
    c = served.client
    ids, examples = _head_examples(served)
    res = c.post(
        "/v1/heads",
        json={"dataset": "demo", "examples": examples, "head": "logistic", "encoder": "tiny"},
        headers=served.headers("write"),
    )
    assert res.status_code == 201, res.text
    head = res.json()
    assert head["n_examples"] == 80 and head["kind"] == "logistic"
    pred = c.post(
        f"/v1/heads/{head['head_id']}/predict",
        json={"subject_ids": ids[80:83], "evidence": 2},
        headers=served.headers(),
    )
    assert pred.status_code == 200, pred.text
    out = pred.json()["predictions"]
    assert len(out) == 3 and all(0 <= p["probability"] <= 1 and len(p["similar_examples"]) == 2 for p in out)
    inline = c.post(
        f"/v1/heads/{head['head_id']}/predict",
        json={"records": ["Hypertension on lisinopril"]},
        headers=served.headers(),
    )
    assert inline.status_code == 200 and inline.json()["predictions"][0]["guidelines"]
    assert c.get(f"/v1/heads/{head['head_id']}", headers=served.headers()).json()["head_id"] == head["head_id"]
    # labelled examples scored at their own times, in meds-evaluation's rows
    labelled = [
        {"subject_id": sid, "prediction_time": "2020-03-01T00:00:00", "boolean_value": i % 2 == 0}
        for i, sid in enumerate(ids[80:90])
    ]
    meds = c.post(
        f"/v1/heads/{head['head_id']}/predict", json={"examples": labelled, "format": "meds"}, headers=served.headers()
    )
    assert meds.status_code == 200, meds.text
    rows = meds.json()["predictions"]
    assert meds.json()["format"] == "meds" and len(rows) == 10
    assert set(rows[0]) == {
        "subject_id", "prediction_time", "boolean_value", "predicted_boolean_probability", "predicted_boolean_value"
    }  # fmt: skip
    truth = {(e["subject_id"], e["prediction_time"]): e["boolean_value"] for e in labelled}
    assert all(truth[(r["subject_id"], r["prediction_time"])] == r["boolean_value"] for r in rows)
    refused = c.post(
        f"/v1/heads/{head['head_id']}/predict",
        json={"records": ["a record"], "format": "meds"},
        headers=served.headers(),
    )
    assert "format meds" in _error(refused, 422)["message"]
    # the old spelling of the label still fits a head
    old = [{"subject_id": e["subject_id"], "prediction_time": e["prediction_time"], "label": e["boolean_value"]}
           for e in examples]  # fmt: skip
    again = c.post(
        "/v1/heads", json={"dataset": "demo", "examples": old, "encoder": "tiny"}, headers=served.headers("write")
    )
    assert again.status_code == 201, again.text
    one_class = [{**e, "boolean_value": False} for e in examples]
    _error(
        c.post(
            "/v1/heads",
            json={"dataset": "demo", "examples": one_class, "encoder": "tiny"},
            headers=served.headers("write"),
        ),
        400,
    )
    _error(c.post("/v1/heads/nothere/predict", json={"subject_ids": [ids[0]]}, headers=served.headers()), 404)
    _error(
        c.post(
            "/v1/heads",
            json={"dataset": "demo", "task": "../../etc/passwd", "encoder": "tiny"},
            headers=served.headers("write"),
        ),
        404,
        "task",
    )


def test_fused_count_heads(served: Served) -> None:
    """``count+ENCODER`` heads: counts beside the vectors; stored subjects only; reloaded from their folder."""
    from ehrembed.predict.fitted import load_fitted

    c = served.client
    ids, examples = _head_examples(served)
    res = c.post(
        "/v1/heads",
        json={"dataset": "demo", "examples": examples, "head": "logistic", "encoder": "count+tiny"},
        headers=served.headers("write"),
    )
    assert res.status_code == 201, res.text
    head = res.json()
    assert head["encoder"].startswith("count+") and head["n_examples"] == 80
    pred = c.post(
        f"/v1/heads/{head['head_id']}/predict",
        json={"subject_ids": ids[80:83], "evidence": 1, "as_of": "2020-06-01T00:00:00"},
        headers=served.headers(),
    )
    assert pred.status_code == 200, pred.text
    first = [p["probability"] for p in pred.json()["predictions"]]
    assert len(first) == 3 and all(0 <= p <= 1 for p in first)
    fitted = load_fitted(served.settings.home / "heads" / head["head_id"])
    assert fitted.fusion is not None and fitted.count_columns and fitted.card["fusion"]["components"] == 8
    # the folder alone gives the same probabilities: counts in the saved layout beside the vectors
    when = dt.datetime(2020, 6, 1)
    vectors = np.asarray([r["vector"] for r in c.post(
        "/v1/embeddings",
        json={"dataset": "demo", "subject_ids": ids[80:83], "encoder": "tiny", "as_of": when.isoformat()},
        headers=served.headers(),
    ).json()["rows"]], dtype=np.float32)  # fmt: skip
    features = fitted.features(vectors, served.dataset, ids[80:83], [when] * 3)
    np.testing.assert_allclose(fitted.predict(vectors, features=features)[0], first, atol=1e-6)
    _error(
        c.post(f"/v1/heads/{head['head_id']}/predict", json={"records": ["a record"]}, headers=served.headers()),
        422,
        "records",
    )
    _error(
        c.post(
            "/v1/heads",
            json={"dataset": "demo", "examples": examples, "encoder": "count+nothing"},
            headers=served.headers("write"),
        ),
        404,
    )


def test_heads_from_a_task(served: Served) -> None:
    res = served.client.post(
        "/v1/heads",
        json={"dataset": "demo", "task": "new_hypertension", "head": "knn", "encoder": "tiny", "max_examples": 60},
        headers=served.headers("write"),
    )
    assert res.status_code in (201, 400), res.text  # 400 only if the sample holds one class
    if res.status_code == 201:
        assert res.json()["task"] == "new_hypertension"


def test_guideline_search(served: Served) -> None:
    res = served.client.get(
        "/v1/guidelines/search", params={"q": "ACE inhibitor for hypertension", "k": 1}, headers=served.headers()
    )
    assert res.status_code == 200 and res.json()["results"][0]["guideline_id"] == "htn"
    _error(served.client.get("/v1/guidelines/search", params={"q": "", "k": 1}, headers=served.headers()), 422, "q")


def test_upsert_patients_events_and_bundle(served: Served) -> None:
    c = served.client
    new_id = 777_000_001
    events = [
        {"subject_id": new_id, "time": None, "code": "Gender/F"},
        {"subject_id": new_id, "time": "1960-01-01T00:00:00", "code": "MEDS_BIRTH"},
        {"subject_id": new_id, "time": "2021-03-01T09:00:00", "code": "ICD10CM/I10"},
    ]
    res = c.post("/v1/datasets/demo/patients", json={"events": events}, headers=served.headers("write"))
    assert res.status_code == 200, res.text
    assert res.json()["added"] == [new_id]
    record = c.get(f"/v1/patients/{new_id}/record", params={"dataset": "demo"}, headers=served.headers()).json()[
        "record"
    ]
    assert "hypertension" in record
    again = c.post(
        "/v1/datasets/demo/patients",
        json={"events": [*events[:2], {**events[2], "code": "ICD10CM/E11.9"}]},
        headers=served.headers("write"),
    )
    assert again.json()["replaced"] == [new_id]
    record = c.get(f"/v1/patients/{new_id}/record", params={"dataset": "demo"}, headers=served.headers()).json()[
        "record"
    ]
    assert "hypertension" not in record and "diabetes" in record
    similar = c.get(f"/v1/patients/{new_id}/similar", params={"dataset": "demo", "k": 3}, headers=served.headers())
    assert similar.status_code == 200, similar.text  # embedded on the fly: the index has no row for it
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p-1", "gender": "male", "birthDate": "1970-02-03"}},
            {"resource": {"resourceType": "Condition", "id": "c-1", "subject": {"reference": "Patient/p-1"},
                          "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                          "onsetDateTime": "2020-05-01"}},
        ],
    }  # fmt: skip
    res = c.post("/v1/datasets/demo/patients", json={"bundle": bundle}, headers=served.headers("write"))
    assert res.status_code == 200, res.text and len(res.json()["added"]) == 1


def test_bad_writes_lose_nothing(served: Served) -> None:
    c = served.client
    before = sha256_file(served.dataset.root / "data")
    no_patient = {"resourceType": "Bundle", "type": "collection", "entry": []}
    assert (
        "Patient"
        in _error(
            c.post("/v1/datasets/demo/patients", json={"bundle": no_patient}, headers=served.headers("write")), 400
        )["message"]
    )
    _error(
        c.post(
            "/v1/datasets/demo/patients",
            json={"events": [{"subject_id": 1, "time": "2020-01-01"}]},
            headers=served.headers("write"),
        ),
        422,
        "events.0.code",
    )
    _error(c.post("/v1/datasets/demo/patients", json={"events": []}, headers=served.headers("write")), 422)
    _error(
        c.post(
            "/v1/datasets/nope/patients",
            json={"events": [{"subject_id": 1, "code": "X/1"}]},
            headers=served.headers("write"),
        ),
        404,
    )
    big = {"records": ["x" * 1000] * 3000, "encoder": "tiny"}
    _error(c.post("/v1/embeddings", json=big, headers=served.headers()), 413, "body")
    assert sha256_file(served.dataset.root / "data") == before


def test_index_swap_does_not_fail_searches_in_flight(served: Served) -> None:
    c, sid = served.client, _subject(served, 7)
    failures: list[int] = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            r = c.get(f"/v1/patients/{sid}/similar", params={"dataset": "demo", "k": 3}, headers=served.headers())
            if r.status_code != 200:
                failures.append(r.status_code)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(3):
        res = c.post("/v1/admin/datasets/demo/reload-index", headers=served.headers("admin"))
        assert res.status_code == 200, res.text
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert res.json()["rows"] == 120  # the index built from the 120 synthetic patients


def test_openapi_documents_every_route(served: Served) -> None:
    spec = served.client.get("/openapi.json").json()
    paths = set(spec["paths"])
    expected = (
        "/v1/datasets/{dataset}/patients", "/v1/patients/{subject_id}/record", "/v1/embeddings",
        "/v1/embeddings/export", "/v1/patients/{subject_id}/similar", "/v1/similar", "/v1/tasks", "/v1/heads",
        "/v1/heads/{head_id}/predict", "/v1/guidelines/search", "/healthz", "/readyz", "/metrics",
    )  # fmt: skip
    assert set(expected) <= paths, set(expected) - paths
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_predictions_remember_subjects_until_their_data_changes(served: Served) -> None:
    c = served.client
    ids, examples = _head_examples(served)
    fitted = c.post(
        "/v1/heads",
        json={"dataset": "demo", "examples": examples, "head": "logistic", "encoder": "tiny"},
        headers=served.headers("write"),
    ).json()
    handle = served.client.app.state.service.dataset("demo")  # type: ignore[attr-defined]
    new_id = 777_000_101
    events = [
        {"subject_id": new_id, "time": None, "code": "Gender/M"},
        {"subject_id": new_id, "time": "1950-01-01T00:00:00", "code": "MEDS_BIRTH"},
        {"subject_id": new_id, "time": "2021-03-01T09:00:00", "code": "ICD10CM/I10"},
    ]
    assert c.post("/v1/datasets/demo/patients", json={"events": events}, headers=served.headers("write")).is_success

    def risk() -> float:
        body = {"subject_ids": [new_id, ids[90]], "evidence": 1, "guidelines": 1}
        res = c.post(f"/v1/heads/{fitted['head_id']}/predict", json=body, headers=served.headers())
        assert res.status_code == 200, res.text
        first = res.json()["predictions"][0]
        assert first["subject_id"] == new_id and len(first["guidelines"]) == 1
        return float(first["probability"])

    before = risk()
    key = ("vector", fitted["head_id"], new_id, None)
    assert handle.memo.get(key) is not None  # remembered: asked again, it is not read, serialized or looked up
    assert risk() == before
    changed = [*events[:2], {**events[2], "code": "ICD10CM/E11.9"}, {**events[2], "code": "ICD10CM/N18.3"}]
    assert c.post("/v1/datasets/demo/patients", json={"events": changed}, headers=served.headers("write")).is_success
    assert handle.memo.get(key) is None  # the upsert reloaded the dataset and forgot what it remembered
    assert risk() != before  # the new record, embedded again
