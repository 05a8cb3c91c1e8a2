"""Load test of the HTTP API on loopback: similar search, predict and export under concurrent clients.

Setup (once per run, in a temporary data home): a synthetic cohort (``--patients``, default 2,000),
embedded with the packaged MiniLM student at a 128-token window, indexed, registered in a SQLite
store, with a read and a write API key and a logistic head fitted on 200 labelled examples. Then
``ehrembed serve`` runs in its own process (uvicorn, one worker) and ``--clients`` threads (default 8)
send requests for ``--seconds`` each:

- ``similar``: ``GET /v1/patients/{id}/similar?k=10`` for random stored patients;
- ``predict``: ``POST /v1/heads/{id}/predict`` for one random stored patient of the first half of the cohort
  (the first time a worker is asked for a subject its record is read, serialized and looked up in the
  embedding cache; after that the worker remembers the vector until the data changes), with 3 evidence
  examples (no guideline knowledge base in this setup);
- ``predict_first``: the same, each request for a subject no request asked about before (the second half of
  the cohort, each subject once, so the run ends when they run out; ``predict`` and ``predict_repeat`` draw
  from the first half): the cost of a stored, already embedded subject the first time its worker sees it;
- ``predict_repeat``: the same for subjects asked about before (a pool of 100, each asked 4 times before the
  run; with several workers a worker may still meet one for the first time): what a clinician's repeated
  views cost;
- ``predict_inline_record``: the same head on an inline record text (a stored patient's Markdown, sent as
  text): embedded on every request, what a new patient costs;
- ``export``: ``GET /v1/embeddings/export?format=parquet`` (the whole embedding set).

Each runs closed loop (clients back to back: the throughput), then similar and predict run open loop at
``--rate`` requests/s (default 100: the latency below saturation). Reported per run: requests, errors
(non-2xx or transport), throughput, latency p50/p90/p99 measured at the client, and the share of the
machine's CPU the load generator itself used. Targets on a 2-core machine with ``--workers 2``: similar
≥ 200 requests/s closed loop and p99 ≤ 50 ms at 100 requests/s; predict for a subject seen the first time
≥ 200 requests/s at p99 ≤ 100 ms; zero errors (``targets_met`` in the JSON; a scenario not run is not met). Run
``.venv/bin/python bench/api.py [--workers 2] [--home DIR] [--only predict_first,similar]`` (``--home``
prepares once and reuses; ``--only`` runs some scenarios); figures go to bench/results/api.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save

TARGETS = {
    "similar_rps": 200.0,
    "similar_p99_ms_at_100_rps": 50.0,
    "predict_first_rps": 200.0,
    "predict_first_p99_ms": 100.0,
    "errors": 0,
}
SCENARIOS = ("similar", "predict", "predict_first", "predict_repeat", "predict_inline_record", "export")
REPEAT_POOL = 100
"""Subjects the ``predict_repeat`` scenario asks about (each asked 4 times before it is timed)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base: str, seconds: float = 120.0) -> None:
    """Poll ``/readyz`` until the served app answers 200 (SystemExit after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not become ready within {seconds:.0f} seconds")


def prepare(home: Path, patients: int) -> dict[str, Any]:
    """Dataset, embeddings, index, store rows, keys and a head in ``home``."""
    os.environ["EHREMBED_HOME"] = str(home)
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.ehr.synth import SynthConfig, generate_cohort
    from ehrembed.encoders.embeddings import EmbeddingSet
    from ehrembed.encoders.job import EmbedConfig, embed_dataset
    from ehrembed.encoders.student import StudentEncoder
    from ehrembed.predict.fitted import fit_head
    from ehrembed.retrieval.index import build_index
    from ehrembed.schema import Label
    from ehrembed.store.catalog import record_artifact, register_meds
    from ehrembed.store.db import create_all, make_engine, session_scope
    from ehrembed.store.repository import create_api_key

    started = time.perf_counter()
    data = home / "synth"
    generate_cohort(SynthConfig(n_subjects=patients, seed=7), data)
    dataset = MedsDataset.open(data)
    encoder = StudentEncoder.from_folder(max_tokens=128)
    embed_dataset(dataset, encoder, home / "emb", EmbedConfig(instruction=None, batch_size=32))
    embeddings = EmbeddingSet.load(home / "emb")
    build_index(embeddings, home / "index")
    ids = [int(i) for i in embeddings.subject_ids]
    rng = random.Random(0)
    examples = [
        Label(sid, embeddings.as_of[i].astype("datetime64[us]").item(), rng.random() < 0.3)
        for i, sid in enumerate(ids[:200])
    ]
    fitted = fit_head(dataset, encoder, examples, "logistic", home / "heads", dataset_name="bench")
    from ehrembed.ehr.vocabulary import Vocabulary
    from ehrembed.encoders.job import record_serializer

    serializer = record_serializer(encoder, Vocabulary.from_dataset(dataset), EmbedConfig(instruction=None))
    records = [  # sent inline: embedded on every request
        serializer.serialize(p, as_of=max(e.time for e in p.events if e.time is not None))
        for p in dataset.iter_patients(ids[-50:])
    ]
    engine = make_engine()
    create_all(engine)
    with session_scope(engine) as session:
        register_meds(session, dataset, "synth", name="bench")
        record_artifact(session, "embeddings", "minilm", home / "emb", encoder.spec.to_dict(), "bench")
        record_artifact(session, "index", "bench-index", home / "index", {}, "bench")
        record_artifact(session, "head", fitted.head_id, home / "heads" / fitted.head_id, fitted.card, "bench")
        read_key = create_api_key(session, "bench-read", "read")[1]
    engine.dispose()
    return {
        "ids": ids,
        "head": fitted.head_id,
        "key": read_key,
        "records": records,
        "setup_seconds": time.perf_counter() - started,
    }


def _prepared(home: Path, patients: int) -> dict[str, Any]:
    """:func:`prepare` once per ``home`` (its result is kept in ``home/bench-setup.json``)."""
    marker = home / "bench-setup.json"
    if marker.is_file():
        saved: dict[str, Any] = json.loads(marker.read_text())
        if saved.get("patients") == patients:
            os.environ["EHREMBED_HOME"] = str(home)
            return saved
        raise SystemExit(f"{home} was prepared for {saved.get('patients')} patients; pass another --home")
    home.mkdir(parents=True, exist_ok=True)
    setup = {**prepare(home, patients), "patients": patients}
    marker.write_text(json.dumps(setup))
    marker.chmod(0o600)  # it keeps the bench's read key so later runs can reuse the server's store
    return setup


def _percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None}
    arr = np.asarray(samples) * 1000
    return {f"p{q}_ms": round(float(np.percentile(arr, q)), 2) for q in (50, 90, 99)}


def load(
    base: str, key: str, make_request: Any, clients: int, seconds: float, rate: float | None = None
) -> dict[str, Any]:
    """``clients`` threads sending requests for ``seconds``: back to back (closed loop, the throughput), or
    with ``rate`` at that many requests per second in all (open loop: each client keeps its own schedule,
    so a slow answer delays that client's next request but not the others'). Also the share of the
    machine's CPU this load generator used (it runs beside the server)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    interval = clients / rate if rate else 0.0
    cpu_started = time.process_time()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        next_send = time.perf_counter() + interval * seed / clients
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30.0) as client:
            while time.perf_counter() < deadline:
                if interval:
                    pause = next_send - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    next_send += interval
                started = time.perf_counter()
                try:
                    response = make_request(client, rng)
                    if response is None:  # the scenario ran out of requests to send
                        break
                    ok = 200 <= response.status_code < 300
                    detail = f"{response.status_code}: {response.text[:120]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, type(exc).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if not ok:
                        errors.append(detail)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall
    return {
        "clients": clients,
        "target_rate": rate,
        "load_generator_cpu_share": round((time.process_time() - cpu_started) / wall / (os.cpu_count() or 1), 3),
        "requests": len(latencies),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "requests_per_second": round(len(latencies) / wall, 1),
        **_percentiles(latencies),
    }


def _targets_met(results: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Each target of :data:`TARGETS` against the runs (one not run counts as not met)."""
    nothing: dict[str, Any] = {"p99_ms": None, "requests_per_second": 0.0}
    similar, first = results.get("similar", nothing), results.get("predict_first", nothing)
    steady = results.get("similar_at_100_rps", nothing)

    def at_most(run: dict[str, Any], limit: float) -> bool:
        return run["p99_ms"] is not None and run["p99_ms"] <= limit

    return {
        "similar_rps": similar["requests_per_second"] >= TARGETS["similar_rps"],
        "similar_p99_ms_at_100_rps": at_most(steady, TARGETS["similar_p99_ms_at_100_rps"]),
        "predict_first_rps": first["requests_per_second"] >= TARGETS["predict_first_rps"],
        "predict_first_p99_ms": at_most(first, TARGETS["predict_first_p99_ms"]),
        "errors": all(r["errors"] == 0 for r in results.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s of the steady-rate runs")
    parser.add_argument(
        "--home", type=Path, help="prepare the data home here once and reuse it on later runs (default: a new temp dir)"
    )
    parser.add_argument("--only", help="comma-separated scenarios to run (default: all)")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else set(SCENARIOS)
    if wanted - set(SCENARIOS):
        parser.error(f"unknown scenario(s) {sorted(wanted - set(SCENARIOS))}; choose from {', '.join(SCENARIOS)}")
    home = args.home or Path(tempfile.mkdtemp(prefix="ehrembed-bench-api-"))
    setup = _prepared(home, args.patients)
    ids, head, key = setup["ids"], setup["head"], setup["key"]
    port = _free_port()
    env = {**os.environ, "EHREMBED_HOME": str(home), "EHREMBED_API_ENCODERS": "[]"}
    server = subprocess.Popen(
        [sys.executable, "-m", "ehrembed.cli", "serve", "--port", str(port), "--workers", str(args.workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        seen, fresh = ids[: len(ids) // 2], ids[len(ids) // 2 :]
        random.Random(1).shuffle(fresh)
        fresh_lock = threading.Lock()

        def first_time(client: httpx.Client, _rng: random.Random) -> httpx.Response | None:
            with fresh_lock:
                if not fresh:
                    return None
                subject = fresh.pop()
            return client.post(f"/v1/heads/{head}/predict", json={"subject_ids": [subject]})

        scenarios = {
            "similar": lambda c, r: c.get(
                f"/v1/patients/{r.choice(ids)}/similar", params={"dataset": "bench", "k": 10}
            ),
            "predict": lambda c, r: c.post(f"/v1/heads/{head}/predict", json={"subject_ids": [r.choice(seen)]}),
            "predict_first": first_time,
            "predict_repeat": lambda c, r: c.post(
                f"/v1/heads/{head}/predict", json={"subject_ids": [r.choice(ids[:REPEAT_POOL])]}
            ),
            "predict_inline_record": lambda c, r: c.post(
                f"/v1/heads/{head}/predict", json={"records": [r.choice(setup["records"])], "guidelines": 0}
            ),
            "export": lambda c, r: c.get(
                "/v1/embeddings/export", params={"dataset": "bench", "encoder": "minilm", "format": "parquet"}
            ),
        }
        assert tuple(scenarios) == SCENARIOS
        results = {}
        for name, request in scenarios.items():
            if name not in wanted:
                continue
            load(base, key, scenarios["predict"] if name == "predict_first" else request, 2, 2.0)  # warm up
            if name == "predict_repeat":
                with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30.0) as client:
                    for subject in ids[:REPEAT_POOL] * 4:  # each worker has most likely seen each subject
                        client.post(f"/v1/heads/{head}/predict", json={"subject_ids": [subject]})
            results[name] = load(base, key, request, args.clients, args.seconds)
            print(name, results[name], flush=True)
        for name in ("similar", "predict", "predict_repeat"):  # latency at a steady rate, below saturation
            if name not in wanted:
                continue
            results[f"{name}_at_{args.rate:g}_rps"] = load(
                base, key, scenarios[name], args.clients, args.seconds, args.rate
            )
            print(name, "at", args.rate, results[f"{name}_at_{args.rate:g}_rps"], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    met = _targets_met(results)
    save(
        "api",
        {
            "command": "python bench/api.py " + " ".join(sys.argv[1:]),
            "patients": args.patients,
            "server_workers": args.workers,
            "seconds_per_scenario": args.seconds,
            "setup_seconds": round(setup["setup_seconds"], 1),
            "results": results,
            "targets": TARGETS,
            "targets_met": met,
        },
    )


if __name__ == "__main__":
    main()
