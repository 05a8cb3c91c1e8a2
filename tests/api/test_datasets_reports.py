"""What the server holds, for the console's dataset and report pages: GET /v1/whoami, /v1/datasets[/{name}],
/v1/encoders and /v1/reports[/{name}] (a real benchmark run on the served cohort, recorded by the fixture)."""

from __future__ import annotations

import math

from tests.api.conftest import Served


def test_whoami_datasets_and_encoders_need_a_key(served: Served) -> None:
    c = served.client
    for path in ("/v1/whoami", "/v1/datasets", "/v1/datasets/demo", "/v1/encoders", "/v1/reports"):
        assert c.get(path).status_code == 401, path
    assert c.get("/v1/whoami", headers=served.headers("write")).json() == {"name": "test-write", "scope": "write"}
    listed = c.get("/v1/datasets", headers=served.headers()).json()
    assert [d["name"] for d in listed] == ["demo"] and listed[0]["subjects"] >= 120 and listed[0]["index"]
    assert "tiny" in c.get("/v1/encoders", headers=served.headers()).json()


def test_a_dataset_shows_its_coverage_and_what_was_built_from_it(served: Served) -> None:
    c = served.client
    detail = c.get("/v1/datasets/demo", headers=served.headers()).json()
    stats = detail["stats"]
    assert detail["subjects"] == stats["subjects"] >= 120 and stats["events"] == detail["events"]  # upserts add some
    assert "path" not in stats  # no server paths
    coverage = stats["description_coverage"]
    assert 0.0 <= coverage["event_coverage"] <= 1.0, coverage
    assert stats["coverage_by_vocabulary"] and stats["top_codes"][0]["description"]
    assert [e["name"] for e in detail["embeddings"]] == ["tiny-emb"]
    assert detail["embeddings"][0]["dim"] == 32
    assert [i["name"] for i in detail["indexes"]] == ["demo-index"]
    assert len(detail["reports"]) == 1 and detail["reports"][0].startswith("report-")
    missing = c.get("/v1/datasets/nope", headers=served.headers())
    assert missing.status_code == 404 and "unknown dataset" in missing.json()["error"]["message"]


def test_a_recorded_report_reads_back_as_auroc_against_k(served: Served) -> None:
    c = served.client
    listed = c.get("/v1/reports", headers=served.headers()).json()
    assert len(listed) == 1 and listed[0]["dataset"] == "demo"
    assert listed[0]["encoders"] == ["count", "tiny"]
    assert sorted(listed[0]["tasks"]) == ["new_hyperlipidemia", "new_hypertension"]
    assert c.get("/v1/reports", params={"dataset": "nope"}, headers=served.headers()).status_code == 404
    report = c.get(f"/v1/reports/{listed[0]['name']}", headers=served.headers()).json()
    assert report["title"] == "Few-shot benchmark on ehrembed-synthetic"
    assert report["ks"] == ["4", "16", "all"] and report["heads"] == ["logistic"]
    rows = report["macro_auroc"]
    assert len(rows) == 2 * 3  # encoders × ks
    for row in rows:
        assert 0.0 <= row["auroc"] <= 1.0 and row["tasks"] == 2
        assert row["auroc_lo"] is None or row["auroc_lo"] <= row["auroc"] <= row["auroc_hi"]
    assert [r["k"] for r in rows if r["encoder"] == "count"] == ["4", "16", "all"]  # numeric k order
    tally = report["wins_ties_losses"]
    assert {r["encoder"] for r in tally} == {"tiny"} and all(r["wins"] + r["ties"] + r["losses"] == 2 for r in tally)
    assert {t["task"] for t in report["task_labels"]} == {"new_hypertension", "new_hyperlipidemia"}
    assert not any(isinstance(v, float) and math.isnan(v) for r in rows for v in r.values())
    unknown = c.get("/v1/reports/nope", headers=served.headers())
    assert unknown.status_code == 404 and "unknown report artifact" in unknown.json()["error"]["message"]
