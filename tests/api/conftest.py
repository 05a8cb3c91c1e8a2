"""A served synthetic dataset: store, tiny student encoder, index, embeddings, guidelines and API keys."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ehrembed.api import create_app
from ehrembed.ehr.meds import MedsDataset
from ehrembed.ehr.synth import SynthConfig, generate_cohort
from ehrembed.encoders.job import EmbedConfig, embed_dataset
from ehrembed.encoders.student import StudentEncoder
from ehrembed.predict.benchmark import BenchmarkConfig
from ehrembed.predict.job import BenchmarkJobConfig, benchmark_dataset
from ehrembed.predict.tasks import resolve_tasks
from ehrembed.retrieval.guidelines import RetrievalModelConfig, build_knowledge_base
from ehrembed.retrieval.index import build_index
from ehrembed.services.reports import record_report
from ehrembed.settings import Settings
from ehrembed.store.catalog import record_artifact, register_meds
from ehrembed.store.db import create_all, make_engine, session_scope
from ehrembed.store.repository import create_api_key
from tests.helpers import BACKENDS, POSTGRES_URL, postgres_schema


@dataclass
class Served:
    client: TestClient
    settings: Settings
    dataset: MedsDataset
    keys: dict[str, str]

    def headers(self, scope: str = "read") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}


@contextmanager
def _database(backend: str, home: Path) -> Iterator[str | None]:
    """None (the SQLite file under the home), or the URL of a fresh PostgreSQL schema dropped afterwards."""
    if backend == "sqlite":
        yield None
        return
    with postgres_schema("api") as schema:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture(scope="package", params=BACKENDS)
def served(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_student_dir: Path,
    tiny_qwen2_dir: Path,
) -> Iterator[Served]:
    """The API on a synthetic cohort, with the store on SQLite and (when available) PostgreSQL."""
    with _database(request.param, tmp_path_factory.mktemp("api_db")) as url:
        yield from _serve(tmp_path_factory, tiny_student_dir, url, tiny_qwen2_dir)


def _serve(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_student_dir: Path,
    database_url: str | None,
    tiny_teacher_dir: Path | None = None,
) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("api_home")
    guidelines = home / "guidelines_md"
    guidelines.mkdir()
    (guidelines / "htn.md").write_text("# Hypertension\n\n## Treatment\n\nStart an ACE inhibitor for hypertension.\n")
    (guidelines / "dm.md").write_text("# Diabetes\n\n## Glucose\n\nMetformin first; HbA1c target below 7%.\n")
    settings = Settings(home=home, database_url=database_url, api_encoders=(), guidelines_kb=home / "kb")
    data = home / "synth"
    generate_cohort(SynthConfig(n_subjects=120, seed=3), data)
    dataset = MedsDataset.open(data)
    encoder = StudentEncoder.from_folder(tiny_student_dir)
    embed_dataset(dataset, encoder, home / "emb", EmbedConfig(cache_dir=home / "cache"))
    from ehrembed.encoders.embeddings import EmbeddingSet

    build_index(EmbeddingSet.load(home / "emb"), home / "index")
    bench = BenchmarkJobConfig(
        encoders=("count", f"tiny={tiny_student_dir}"),
        benchmark=BenchmarkConfig(ks=(4, 16, "all"), replicates=2, heads=("logistic",), n_bootstrap=20),
    )
    tasks = resolve_tasks(["new_hypertension", "new_hyperlipidemia"])
    report = benchmark_dataset(dataset, tasks, home / "runs" / "report", bench).report.parent
    build_knowledge_base(guidelines, RetrievalModelConfig.minilm(tiny_student_dir)).save(home / "kb")
    from ehrembed.predict.prognosis.train import PretrainConfig, pretrain

    small = PretrainConfig(dim=16, hidden=32, epochs=5, min_subjects=5, max_targets=200)
    pretrain(dataset, home / "prognosis", small)
    engine = make_engine(settings.resolved_database_url)
    create_all(engine)
    keys = {}
    with session_scope(engine) as session:
        register_meds(session, dataset, "synth", name="demo")
        record_artifact(session, "model", "tiny", tiny_student_dir, encoder.spec.to_dict(), "demo")
        if tiny_teacher_dir is not None:  # an instruction-tuned encoder: its vectors depend on the task
            record_artifact(session, "model", "tinyteacher", tiny_teacher_dir, {}, "demo")
        record_artifact(session, "embeddings", "tiny-emb", home / "emb", encoder.spec.to_dict(), "demo")
        record_artifact(session, "index", "demo-index", home / "index", {}, "demo")
        record_report(session, report, "demo")
        from ehrembed.services.prognosis import record_prognosis

        record_prognosis(session, home / "prognosis", dataset, method="tte")
        for scope in ("read", "write", "admin"):
            keys[scope] = create_api_key(session, f"test-{scope}", scope)[1]
    engine.dispose()
    with TestClient(create_app(settings)) as client:
        yield Served(client, settings, dataset, keys)
