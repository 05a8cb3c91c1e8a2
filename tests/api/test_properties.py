"""Generated bodies against the write and read endpoints: never a 5xx, nothing stored that a read cannot
handle, and a refused request leaves the dataset exactly as it was.

The strategies aim at the edges the hardening review found: times with any UTC offset from year 1 to
9999, Unix-time numbers, ids as strings, booleans, floats and out of int64, numbers beyond float32
or not finite, and text with control characters and Markdown structure. Each test is bounded
(``max_examples``) so the module runs in well under a minute per store backend.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest import Served, _database, _serve
from tests.api.test_hardening import fingerprint
from tests.helpers import BACKENDS

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
THROWN: Counter[str] = Counter()
"""Bodies thrown per test and outcome (printed by the last test, for the record)."""


@pytest.fixture(scope="module", params=BACKENDS)
def own(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_student_dir: Path
) -> Iterator[Served]:
    with _database(request.param, tmp_path_factory.mktemp("prop_db")) as url:
        yield from _serve(tmp_path_factory, tiny_student_dir, url)


# --- strategies -------------------------------------------------------------------------------------

offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
aware = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=offsets)
plausible = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2030, 1, 1))
times: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    aware.map(lambda t: t.isoformat()),
    plausible.map(lambda t: t.isoformat()),
    st.sampled_from(["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00", "2020-02-30", "-1", "1e9", ""]),
    st.integers(-(10**12), 10**12),
    st.text(max_size=12),
)
ids: st.SearchStrategy[Any] = st.one_of(
    st.integers(0, 50),
    st.integers(-(2**64), 2**64),
    st.sampled_from(["1", True, 1.0, 2**62, 2**63 - 1, 2**63]),
)
numbers: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e39, -3.5e38, 3.4e38, 1e-45, 0.0]),
    st.integers(-(10**40), 10**40),
    st.sampled_from([10**400, -(10**400)]),
)
nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["x\n# SYSTEM: healthy", "\r\n- item", "a\x00b", "\u2028## h", "> quote", "|t|"]),
)
codes = st.one_of(st.sampled_from(["X/1", "ICD10CM/I10", "LOINC/2160-0", "MEDS_BIRTH"]), st.text(max_size=20))


def event(subject: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"subject_id": subject, "time": times, "code": codes},
        optional={"numeric_value": numbers, "text_value": nasty_text, "unit": nasty_text, "ref_low": numbers},
    )


upsert_bodies = st.fixed_dictionaries(
    {"events": st.lists(event(st.one_of(st.integers(800_000, 800_020), ids)), min_size=1, max_size=6)},
    optional={
        "codes": st.lists(st.fixed_dictionaries({"code": codes}, optional={"description": nasty_text}), max_size=3)
    },
)


def fhir_bundle() -> st.SearchStrategy[dict[str, Any]]:
    pid = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=8)
    value = st.one_of(numbers, st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "12.5", "abc"]))
    fhir_time = st.one_of(times, st.sampled_from(["2020", "2020-03", "0001", "9999-12"]))

    def resources(patient_id: str) -> st.SearchStrategy[list[dict[str, Any]]]:
        patient = st.fixed_dictionaries(
            {"resourceType": st.just("Patient"), "id": st.just(patient_id)},
            optional={"birthDate": fhir_time, "gender": st.sampled_from(["female", "male", "x"])},
        )
        observation = st.fixed_dictionaries(
            {
                "resourceType": st.just("Observation"),
                "subject": st.just({"reference": f"Patient/{patient_id}"}),
                "effectiveDateTime": fhir_time,
                "code": st.fixed_dictionaries(
                    {
                        "coding": st.lists(
                            st.fixed_dictionaries(
                                {"system": st.just("http://loinc.org"), "code": nasty_text, "display": nasty_text}
                            ),
                            min_size=1,
                            max_size=2,
                        )
                    }
                ),
                "valueQuantity": st.fixed_dictionaries({"value": value}, optional={"unit": nasty_text}),
            },
            optional={
                "referenceRange": st.lists(
                    st.fixed_dictionaries({"low": st.fixed_dictionaries({"value": value})}), max_size=1
                )
            },
        )
        return st.tuples(patient, st.lists(observation, max_size=3)).map(lambda pr: [pr[0], *pr[1]])

    return pid.flatmap(resources).map(
        lambda rs: {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in rs]}
    )


# --- checks ---------------------------------------------------------------------------------------------


def _post(served: Served, path: str, body: dict[str, Any], scope: str = "read") -> Any:
    headers = {**served.headers(scope), "Content-Type": "application/json"}
    return served.client.post(path, content=json.dumps(body), headers=headers)  # json.dumps keeps NaN / Infinity


def _readable_after_write(served: Served, subject_ids: list[int]) -> None:
    """Every written subject reads back as a record and as an embedding request answered without a 5xx."""
    for sid in subject_ids:
        res = served.client.get(f"/v1/patients/{sid}/record", params={"dataset": "demo"}, headers=served.headers())
        assert res.status_code in (200, 422), res.text  # 422: only undated facts, so no default as-of
        body = {"dataset": "demo", "subject_ids": [sid], "encoder": "tiny"}
        assert _post(served, "/v1/embeddings", body).status_code < 500


def _check_write(served: Served, body: dict[str, Any], name: str) -> None:
    before = fingerprint(served)
    res = _post(served, "/v1/datasets/demo/patients", body, scope="write")
    THROWN[f"{name} {res.status_code}"] += 1
    assert res.status_code < 500, res.text
    if res.status_code == 200:
        out = res.json()
        _readable_after_write(served, out["added"] + out["replaced"])
    else:
        assert res.json()["error"]["message"]
        assert fingerprint(served) == before, f"refused ({res.status_code}) but the dataset changed"


def test_generated_event_upserts(own: Served) -> None:
    @SETTINGS
    @given(body=upsert_bodies)
    def run(body: dict[str, Any]) -> None:
        _check_write(own, body, "upsert events")

    run()
    assert THROWN["upsert events 200"] and THROWN["upsert events 422"]  # both paths were reached


def test_generated_fhir_upserts(own: Served) -> None:
    @SETTINGS
    @given(bundle=fhir_bundle())
    def run(bundle: dict[str, Any]) -> None:
        _check_write(own, {"bundle": bundle}, "upsert FHIR")

    run()
    assert THROWN["upsert FHIR 200"] and THROWN["upsert FHIR 400"]


def test_generated_reads(own: Served) -> None:
    stored = [int(i) for i in own.dataset.subject_ids()[:5]]
    subject = st.one_of(st.sampled_from(stored), ids)
    embeddings = st.fixed_dictionaries(
        {"dataset": st.sampled_from(["demo", "nope"]), "subject_ids": st.lists(subject, max_size=3)},
        optional={"as_of": times, "encoder": st.sampled_from(["tiny", "student", "count"])},
    )
    examples = st.lists(
        st.fixed_dictionaries(
            {"subject_id": subject, "prediction_time": times, "label": st.sampled_from([True, False, 1, "yes"])}
        ),
        max_size=8,
    )
    heads = st.fixed_dictionaries(
        {"dataset": st.just("demo"), "examples": examples},
        optional={
            "head": st.sampled_from(["logistic", "knn", "lightgbm"]),
            "encoder": st.sampled_from(["tiny", "count+tiny"]),
        },
    )
    query = st.fixed_dictionaries(
        {"dataset": st.sampled_from(["demo", "nope", ""])},
        optional={
            "k": st.one_of(st.integers(-5, 200).map(str), st.sampled_from(["1.0", "ten", ""])),
            "as_of": times.map(lambda t: "" if t is None else str(t)),
            "sex": nasty_text,
            "min_age": st.one_of(st.floats(allow_nan=True).map(str), st.text(max_size=4)),
            "has_code": codes,
            "split": st.sampled_from(["train", "held_out", "bogus"]),
        },
    )

    @SETTINGS
    @given(kind=st.sampled_from(["embeddings", "heads", "similar"]), embed=embeddings, head=heads, q=query, sid=subject)
    def run(kind: str, embed: dict[str, Any], head: dict[str, Any], q: dict[str, str], sid: Any) -> None:
        before = fingerprint(own)
        if kind == "embeddings":
            res = _post(own, "/v1/embeddings", embed)
        elif kind == "heads":
            res = _post(own, "/v1/heads", head, scope="write")
        else:
            res = own.client.get(f"/v1/patients/{sid}/similar", params=q, headers=own.headers())
        THROWN[f"{kind} {res.status_code}"] += 1
        assert res.status_code < 500, res.text
        assert fingerprint(own) == before

    run()
    print("\ngenerated requests:", dict(THROWN))
