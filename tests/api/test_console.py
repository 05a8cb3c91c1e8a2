"""The web console in a real browser: Debian's chromium driven by Playwright against a live server on loopback.

Runs once (on the SQLite store). ``.ci/run`` installs chromium; without it the browser test is skipped with
that reason, while the page's headers are still checked.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from ehrembed.api import create_app
from tests.api.conftest import Served

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = os.environ.get("EHREMBED_CONSOLE_SCREENSHOTS")


@pytest.fixture()
def live(served: Served) -> Iterator[str]:
    """The served cohort's app under uvicorn on a free loopback port; its base URL."""
    if served.settings.database_url is not None:
        pytest.skip("the browser runs once, on the SQLite store")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(served.settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the console's server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_the_console_is_static_strict_and_needs_no_key_to_load(live: str) -> None:
    page = httpx.get(f"{live}/ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in page.text and 'src="/ui/console.js"' in page.text  # no inline script
    assert httpx.get(f"{live}/ui/console.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{live}/ui/../v1/datasets").status_code in (401, 404)
    assert httpx.get(f"{live}/v1/datasets").status_code == 401  # the data stays behind the API's key


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_sign_in_open_a_patient_and_filter_its_neighbours(live: str, served: Served) -> None:
    from playwright.sync_api import expect, sync_playwright

    subject = served.dataset.subject_ids()[5]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(f"{live}/ui/")
        expect(page.locator("#sign-in-view")).to_be_visible()
        expect(page.locator("#app-view")).to_be_hidden()  # no key: only the sign-in page

        page.fill("#api-key", "ehr_not_a_key")
        page.click("#sign-in button")
        expect(page.locator("#sign-in-error")).to_contain_text("invalid or revoked API key")
        expect(page.locator("#app-view")).to_be_hidden()

        page.fill("#api-key", served.keys["read"])
        page.click("#sign-in button")
        expect(page.locator("#who")).to_contain_text("read key")
        expect(page.locator("#dataset option")).to_have_count(1)
        assert page.evaluate("document.cookie") == ""  # the key is never a cookie

        page.fill("#subject", str(subject))
        page.click("#patient-form button")
        expect(page.locator("#record-body")).to_contain_text("Electronic Healthcare Record")
        expect(page.locator("#neighbours tbody tr")).to_have_count(10)
        assert str(subject) not in page.locator("#neighbours tbody td:nth-child(2)").all_inner_texts()
        # the outlook panel: the prognostic model's most likely new codes, as percentages
        expect(page.locator("#outlook-table tbody tr")).to_have_count(10)
        expect(page.locator("#outlook-status")).to_contain_text("Model")
        assert all(
            cell.endswith(" %") for cell in page.locator("#outlook-table tbody td:nth-child(3)").all_inner_texts()
        )

        if SHOTS:  # the README's screenshot: EHREMBED_CONSOLE_SCREENSHOTS=docs pytest tests/api/test_console.py
            page.set_viewport_size({"width": 1200, "height": 800})
            page.screenshot(path=str(Path(SHOTS) / "console-patient.png"))
        page.select_option("#filter-sex", "F")
        page.click("#filters button")
        expect(page.locator("#neighbours")).to_have_attribute("aria-busy", "false")  # the filtered answer is in
        sex_cells = page.locator("#neighbours tbody tr td:nth-child(4)")
        expect(sex_cells.filter(has_text="M,")).to_have_count(0)
        sexes = sex_cells.all_inner_texts()
        assert sexes and all(s.startswith("F,") for s in sexes)

        # a read key sees the task form but cannot fit a head; a write key fits one and gets a risk with evidence
        page.select_option("#task", "new_hypertension")
        page.select_option("#encoder", "tiny")
        page.click("#head-form button")
        expect(page.locator("#risk-error")).to_contain_text("needs a write key")
        page.click("#sign-out")
        page.fill("#api-key", served.keys["write"])
        page.click("#sign-in button")
        expect(page.locator("#who")).to_contain_text("write key")
        page.fill("#subject", str(subject))
        page.select_option("#task", "new_hypertension")
        page.select_option("#encoder", "tiny")
        page.click("#head-form button")
        expect(page.locator("#head-card")).to_contain_text("examples", timeout=60_000)
        page.click("#head-pick button")
        expect(page.locator("#probability")).to_contain_text("Risk:", timeout=30_000)
        expect(page.locator("#evidence tbody tr")).to_have_count(3)
        if SHOTS:
            page.locator("#risk").screenshot(path=str(Path(SHOTS) / "console-risk.png"))

        page.fill("#subject", "999999999")
        page.click("#patient-form button")
        expect(page.locator("#patient-error")).to_contain_text("not in dataset")

        page.click("#sign-out")
        expect(page.locator("#sign-in-view")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
        browser.close()
    expected = ("401", "403", "404")  # the wrong key, the read key fitting a head, the unknown subject
    assert not [e for e in errors if not any(code in e for code in expected)], errors


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_dataset_report_and_export_pages(live: str, served: Served, tmp_path: Path) -> None:
    import polars as pl
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(f"{live}/ui/")
        page.fill("#api-key", served.keys["read"])
        page.click("#sign-in button")
        expect(page.locator("#who")).to_contain_text("read key")

        page.click("button.tab[data-page=dataset-page]")
        expect(page.locator("#patient-page")).to_be_hidden()
        summary = page.locator("#dataset-summary")
        expect(summary).to_contain_text("Events with a description")
        listed = httpx.get(f"{live}/v1/datasets", headers=served.headers()).json()[0]  # upserts in other tests add some
        expect(summary.locator("dd").first).to_have_text(f"{listed['subjects']:,}")
        expect(page.locator("#coverage-table tbody tr").first).to_be_visible()
        expect(page.locator("#built-table tbody")).to_contain_text("tiny-emb")
        expect(page.locator("#built-table tbody")).to_contain_text("demo-index")
        if SHOTS:
            page.screenshot(path=str(Path(SHOTS) / "console-dataset.png"))

        page.click("button.tab[data-page=report-page]")
        expect(page.locator("#report-name")).to_contain_text("Few-shot benchmark on ehrembed-synthetic")
        expect(page.locator("#report-plot svg polyline.series")).to_have_count(2)  # count and tiny
        expect(page.locator("#report-table tbody tr")).to_have_count(2)
        expect(page.locator("#report-table thead")).to_contain_text("k=all")
        expect(page.locator("#report-wtl tbody tr")).to_have_count(1)  # tiny against count
        if SHOTS:
            page.locator("#report-page").screenshot(path=str(Path(SHOTS) / "console-report.png"))

        page.click("button.tab[data-page=export-page]")
        expect(page.locator("#export-set option")).to_have_count(1)
        page.fill("#export-limit", "50")
        with page.expect_download() as first:
            page.click("#export-form button[type=submit]")
        expect(page.locator("#export-status")).to_contain_text("rows 1–50 of 120")
        saved = tmp_path / first.value.suggested_filename
        first.value.save_as(saved)
        assert saved.name == "demo-tiny-emb.parquet"
        frame = pl.read_parquet(saved)
        assert frame.height == 50
        with page.expect_download() as second:
            page.click("#export-next")
        expect(page.locator("#export-status")).to_contain_text("rows 51–100 of 120")
        second.value.save_as(tmp_path / "second.parquet")
        later = pl.read_parquet(tmp_path / "second.parquet")
        assert later.height == 50 and set(later["subject_id"]).isdisjoint(frame["subject_id"])
        browser.close()
    assert not errors, errors
