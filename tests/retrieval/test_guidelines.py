"""Guideline knowledge base: chunking, sources, BM25 / dense / hybrid search, save/load, evaluation, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ehrembed.cli import app
from ehrembed.retrieval.chunking import (
    ChunkingConfig,
    approx_tokens,
    chunk_markdown,
    overview_chunks,
    parse_sections,
)
from ehrembed.retrieval.guidelines import (
    BGE_QUERY_INSTRUCTION,
    GuidelineError,
    GuidelineKB,
    LabelledQuery,
    RetrievalModelConfig,
    build_knowledge_base,
    default_kb_dir,
    discover_guidelines,
    evaluate,
    load_queries,
    reciprocal_rank_fusion,
)
from tests.helpers import HashEncoder

CKD = """# Chronic Kidney Disease Care

## Staging

| Stage | GFR (mL/min/1.73m²) | Description |
|-------|---------------------|-------------|
| G1 | ≥ 90 | Normal or high |
| G3a | 45–59 | Mildly to moderately decreased |
| G4 | 15–29 | Severely decreased |

## Albuminuria

Measure the urine albumin-creatinine ratio (ACR) at least yearly. An ACR of 30 mg/g or more is albuminuria.

## Drug Therapy

### SGLT2 Inhibitors

Start an SGLT2 inhibitor such as dapagliflozin 10 mg daily when eGFR is 20 or more, with or without diabetes.

### RAS Inhibitors

Use an ACE inhibitor or ARB at the maximum tolerated dose when albuminuria is present. Check potassium and
creatinine two to four weeks after starting.

## Referral

Refer to nephrology when eGFR falls below 30 or ACR exceeds 300 mg/g.
"""

AF = """# Atrial Fibrillation Management

## Stroke Prevention

Estimate stroke risk with the CHA2DS2-VASc score. Offer oral anticoagulation (apixaban, rivaroxaban, or warfarin)
when the score is 2 or more in men or 3 or more in women.

```
# not a heading: inside a code fence
score >= 2 --> anticoagulate
```

## Rate Control

Beta-blockers or diltiazem control the ventricular rate; avoid diltiazem when the ejection fraction is reduced.
"""

ASTHMA = """# Asthma

## Diagnosis

Confirm variable expiratory airflow limitation with spirometry: an FEV1 increase of more than 12% and 200 mL after
a bronchodilator supports asthma.

## Inhaled Therapy

Use as-needed low-dose budesonide-formoterol as the reliever. Step up to daily maintenance inhaled corticosteroid
when symptoms occur most days or the patient wakes at night.
"""

GOUT_PARAGRAPHS = "\n\n".join(
    f"Paragraph {i}: allopurinol is the preferred urate-lowering therapy; titrate the dose by 100 mg every few "
    f"weeks to reach a serum urate below 6 mg/dL, and give colchicine prophylaxis for three to six months."
    for i in range(8)
)
GOUT = f"# Gout\n\n## Urate-Lowering Therapy\n\n{GOUT_PARAGRAPHS}\n"


def write_guidelines(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in {"ckd": CKD, "af": AF, "asthma": ASTHMA, "gout": GOUT}.items():
        (folder / f"{name}.md").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def guideline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_guidelines(tmp_path_factory.mktemp("guidelines") / "md")


@pytest.fixture(scope="module")
def kb(guideline_dir: Path) -> GuidelineKB:
    return build_knowledge_base(guideline_dir, RetrievalModelConfig.minilm("/nowhere"), encoder=HashEncoder())


# --- chunking ---------------------------------------------------------------------------------


def test_sections_follow_headings_and_ignore_fenced_ones() -> None:
    title, sections = parse_sections(AF)
    assert title == "Atrial Fibrillation Management"
    paths = [s.path for s in sections]
    assert ("Atrial Fibrillation Management", "Stroke Prevention") in paths
    assert not any("not a heading" in " ".join(p) for p in paths)


def test_chunks_keep_id_title_section_and_carry_context() -> None:
    chunks = chunk_markdown(CKD, guideline_id="ckd", title="Chronic Kidney Disease Care", config=ChunkingConfig(80, 0))
    assert {c.guideline_id for c in chunks} == {"ckd"}
    sglt2 = next(c for c in chunks if "dapagliflozin" in c.passage)
    assert sglt2.section == "Drug Therapy > SGLT2 Inhibitors"  # the title heading is not repeated in the path
    assert sglt2.text.startswith("Chronic Kidney Disease Care\nDrug Therapy > SGLT2 Inhibitors\n")
    table = next(c for c in chunks if c.section == "Staging")
    assert "|---" in table.passage and "---" not in table.text and "G3a ; 45–59" in table.text


def test_long_sections_split_by_paragraph_within_budget_and_tables_keep_their_header() -> None:
    config = ChunkingConfig(max_tokens=60, min_tokens=0)
    chunks = chunk_markdown(GOUT, guideline_id="gout", title="Gout", config=config)
    assert len(chunks) >= 4
    assert all(n <= 60 for n in approx_tokens([c.text for c in chunks]))
    assert all(c.section == "Urate-Lowering Therapy" for c in chunks)
    assert "".join(c.passage for c in chunks).count("Paragraph") == 8  # nothing lost, nothing doubled
    rows = "\n".join(["| Drug | Dose |", "|---|---|", *(f"| drug{i} | {i}0 mg daily by mouth |" for i in range(30))])
    table_chunks = chunk_markdown(f"# T\n\n## Doses\n\n{rows}\n", guideline_id="t", title="T", config=config)
    assert len(table_chunks) > 1 and all(c.passage.startswith("| Drug | Dose |") for c in table_chunks)


def test_small_sections_are_merged_under_their_top_section() -> None:
    merged = chunk_markdown(
        CKD, guideline_id="ckd", title="Chronic Kidney Disease Care", config=ChunkingConfig(200, 80)
    )
    drugs = next(c for c in merged if "dapagliflozin" in c.passage)
    assert drugs.section == "Drug Therapy" and "ACE inhibitor" in drugs.passage and "SGLT2 Inhibitors" in drugs.passage
    assert all(c.section != "Referral" or "dapagliflozin" not in c.passage for c in merged)


def test_overview_chunks_fit_the_budget() -> None:
    topics = [f"topic number {i}" for i in range(60)]
    chunks = overview_chunks("g", "Guide", organization="ORG", year=2020, topics=topics, config=ChunkingConfig(50))
    assert len(chunks) > 1 and all(n <= 50 for n in approx_tokens([c.text for c in chunks]))
    assert "Issued by ORG in 2020" in chunks[0].passage and overview_chunks("g", "Guide") == []


# --- sources ----------------------------------------------------------------------------------


def test_folder_of_markdown_ids_are_stems_and_titles_first_headings(guideline_dir: Path) -> None:
    sources = discover_guidelines(guideline_dir)
    assert [g.id for g in sources] == ["af", "asthma", "ckd", "gout"]
    assert sources[2].title == "Chronic Kidney Disease Care" and sources[2].doi is None


def test_registry_metadata_and_nested_folders(tmp_path: Path) -> None:
    (tmp_path / "content" / "kdigo").mkdir(parents=True)
    (tmp_path / "content" / "kdigo" / "staging.md").write_text(CKD)
    (tmp_path / "registry.json").write_text(
        json.dumps([{"id": "kdigo", "title": "KDIGO CKD", "doi": "10.1/x", "year": 2024, "topics": ["CKD"]}])
    )
    (source,) = discover_guidelines(tmp_path)
    assert (source.id, source.title, source.doi, source.year) == ("kdigo", "KDIGO CKD", "10.1/x", 2024)
    assert source.topics == ("CKD",) and source.files == (tmp_path / "content" / "kdigo" / "staging.md",)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(GuidelineError, match="no Markdown"):
        discover_guidelines(tmp_path / "empty")


def test_open_medicine_registry_covers_the_packaged_queries() -> None:
    pytest.importorskip("bm25s")
    try:
        sources = discover_guidelines()
    except GuidelineError:
        pytest.skip("open-medicine is not installed")
    assert len(sources) == 43 and all(g.doi and g.year and g.topics for g in sources)
    queries = load_queries()
    assert len(queries) >= 30
    assert {g for q in queries for g in q.guideline_ids} <= {g.id for g in sources}


# --- search -----------------------------------------------------------------------------------


def test_rrf_fuses_by_weighted_reciprocal_rank() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1]], [1.0, 1.0], k=60)
    assert [i for i, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    only_second = reciprocal_rank_fusion([[1, 2], [2, 1]], [0.0, 1.0], k=60)
    assert [i for i, _ in only_second] == [2, 1]


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_search_finds_the_right_guideline(kb: GuidelineKB, mode: str) -> None:
    hits = kb.search("eGFR 40 with albuminuria: start an SGLT2 inhibitor?", k=3, mode=mode)  # type: ignore[arg-type]
    assert hits[0].guideline_id == "ckd" and hits[0].title == "Chronic Kidney Disease Care"
    assert hits[0].section and hits[0].passage and hits[0].score > 0
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert kb.rank_guidelines("anticoagulation for CHA2DS2-VASc 3", mode)[0] == "af"  # type: ignore[arg-type]


def test_search_options_and_errors(kb: GuidelineKB) -> None:
    assert len({h.guideline_id for h in kb.search("dose", k=4, per_guideline=1, mode="hybrid")}) == 4
    assert kb.search("zzzz qqqq", mode="bm25") == []  # no term in the index
    with pytest.raises(GuidelineError, match="mode"):
        kb.search("x", mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(GuidelineError, match="empty"):
        kb.search("   ")


def test_bm25_stems_words(kb: GuidelineKB) -> None:
    pytest.importorskip("Stemmer")
    assert kb.bm25.stemmer_name == "english"
    assert kb.rank_guidelines("anticoagulating the fibrillating atrium", "bm25")[0] == "af"


def test_bge_config_prefixes_queries_not_passages(guideline_dir: Path) -> None:
    encoder = HashEncoder()
    kb = build_knowledge_base(guideline_dir, RetrievalModelConfig.bge("/nowhere"), encoder=encoder)
    assert not any(t.startswith(BGE_QUERY_INSTRUCTION) for t in encoder.seen)
    encoder.seen.clear()
    kb.search("asthma reliever", mode="dense")
    assert encoder.seen == [BGE_QUERY_INSTRUCTION + "asthma reliever"]
    assert RetrievalModelConfig.minilm().query_instruction == "" and RetrievalModelConfig.minilm().pooling is None
    bge = RetrievalModelConfig.bge("/m")
    assert (bge.pooling, bge.normalize, bge.max_tokens) == ("cls", True, None)


def test_chunks_fit_the_encoder_window(guideline_dir: Path) -> None:
    encoder = HashEncoder(max_tokens=48)
    kb = build_knowledge_base(guideline_dir, RetrievalModelConfig.minilm("/x"), encoder=encoder)
    assert kb.meta["chunking"]["max_tokens"] == 46  # the window less [CLS] and [SEP]
    assert max(encoder.count_tokens([c.text for c in kb.chunks])) <= 46


# --- persistence --------------------------------------------------------------------------------


def test_save_load_round_trip_is_atomic_and_fingerprinted(kb: GuidelineKB, tmp_path: Path) -> None:
    target = kb.save(tmp_path / "kb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]  # no scratch folder left behind
    assert sorted(p.name for p in target.iterdir()) == ["chunks.parquet", "kb.json", "vectors.npy"]
    meta = json.loads((target / "kb.json").read_text())
    assert {f["path"] for f in meta["files"]} == {"af.md", "asthma.md", "ckd.md", "gout.md"}
    assert all(len(f["sha256"]) == 64 for f in meta["files"])
    assert meta["encoder"]["name"] == "hash" and meta["model"]["model_path"] == "/nowhere"
    loaded = GuidelineKB.load(target, encoder=HashEncoder())
    assert loaded.chunks == kb.chunks and np.array_equal(loaded.vectors, kb.vectors)
    assert loaded.fingerprint == kb.fingerprint
    query = "allopurinol titration"
    assert loaded.search(query, mode="hybrid") == kb.search(query, mode="hybrid")
    kb.save(target)  # rebuilding in place replaces the folder
    assert GuidelineKB.load(target, encoder=HashEncoder()).fingerprint == kb.fingerprint


def test_fingerprint_follows_the_sources(guideline_dir: Path, tmp_path: Path, kb: GuidelineKB) -> None:
    changed = write_guidelines(tmp_path / "md")
    (changed / "gout.md").write_text(GOUT.replace("6 mg/dL", "5 mg/dL"))
    other = build_knowledge_base(changed, RetrievalModelConfig.minilm("/nowhere"), encoder=HashEncoder())
    assert other.fingerprint != kb.fingerprint
    same = build_knowledge_base(guideline_dir, RetrievalModelConfig.minilm("/nowhere"), encoder=HashEncoder())
    assert same.fingerprint == kb.fingerprint


def test_missing_kb_and_changed_model_are_clear_errors(
    tmp_path: Path, guideline_dir: Path, tiny_bert_dir: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="guidelines build"):
        GuidelineKB.load(tmp_path / "nope")
    built = build_knowledge_base(guideline_dir, RetrievalModelConfig.minilm(tiny_bert_dir))
    built.save(tmp_path / "kb")
    assert len(GuidelineKB.load(tmp_path / "kb").search("asthma", mode="dense")) == 5  # loads the model itself
    sidecar = tmp_path / "kb" / "kb.json"
    meta = json.loads(sidecar.read_text())
    meta["encoder"]["fingerprint"] = "0" * 16
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(GuidelineError, match="rebuild"):
        GuidelineKB.load(tmp_path / "kb").search("asthma", mode="dense")
    assert GuidelineKB.load(tmp_path / "kb").search("asthma", mode="bm25")  # BM25 needs no model


def test_bge_preset_on_a_plain_bert_folder_uses_cls_pooling(tiny_bert_dir: Path, guideline_dir: Path) -> None:
    config = RetrievalModelConfig.bge(tiny_bert_dir, max_tokens=128)
    encoder = config.load_encoder(device="cpu")
    assert (encoder.spec.pooling, encoder.spec.max_tokens, encoder.spec.normalize) == ("cls", 128, True)
    kb = build_knowledge_base(guideline_dir, config, encoder=encoder)
    assert kb.vectors.shape == (len(kb), 32)
    assert np.allclose(np.linalg.norm(kb.vectors, axis=1), 1.0, atol=1e-5)


# --- evaluation ---------------------------------------------------------------------------------


def test_evaluate_reports_hits_and_mrr_per_mode(kb: GuidelineKB) -> None:
    queries = [
        LabelledQuery("urine albumin-creatinine ratio above 300: refer?", ("ckd",)),
        LabelledQuery("warfarin or apixaban for stroke prevention", ("af",)),
        LabelledQuery("spirometry bronchodilator reversibility 12%", ("asthma",)),
        LabelledQuery("serum urate target on allopurinol", ("gout", "ckd")),
    ]
    results = evaluate(kb, queries)
    assert set(results) == {"bm25", "dense", "hybrid"}
    for figures in results.values():
        assert set(figures) == {"hit@1", "hit@5", "mrr", "n"} and figures["n"] == 4
        assert 0.0 <= figures["hit@1"] <= figures["mrr"] <= figures["hit@5"] <= 1.0
    assert results["bm25"]["hit@1"] == 1.0
    with pytest.raises(GuidelineError, match="lacks"):
        evaluate(kb, [LabelledQuery("x", ("nope",))])


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_build_and_search(guideline_dir: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "kb"
    args = ["guidelines", "build", "--source", str(guideline_dir), "--model", str(tiny_bert_dir)]
    built = runner.invoke(app, [*args, "--preset", "minilm", "--out", str(out), "--json"])
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["guidelines"] == 4
    found = runner.invoke(
        app, ["guidelines", "search", "albuminuria referral", "--kb", str(out), "-k", "2", "--mode", "bm25", "--json"]
    )
    assert found.exit_code == 0, found.output
    data = json.loads(found.stdout)
    assert len(data["results"]) == 2 and data["results"][0]["guideline_id"] == "ckd"
    text = runner.invoke(app, ["guidelines", "search", "albuminuria", "--kb", str(out)])
    assert text.exit_code == 0 and "Chronic Kidney Disease Care" in text.stdout
    default = runner.invoke(app, [*args, "--preset", "bge"])  # into $EHREMBED_HOME/guidelines/default
    assert default.exit_code == 0, default.output
    assert (default_kb_dir() / "kb.json").is_file()
    assert runner.invoke(app, ["guidelines", "search", "asthma", "--mode", "dense"]).exit_code == 0


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["guidelines", "search", "asthma", "--kb", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "guidelines build" in missing.output
    bad = runner.invoke(app, ["guidelines", "build", "--source", str(tmp_path)])
    assert bad.exit_code == 2 and "no Markdown" in bad.output
    assert runner.invoke(app, ["guidelines", "build", "--preset", "bge"]).exit_code == 2
    assert runner.invoke(app, ["guidelines", "search", "x", "--mode", "fuzzy"]).exit_code == 2


# --- the real thing -----------------------------------------------------------------------------


@pytest.mark.slow
def test_open_medicine_kb_with_minilm_retrieves_the_labelled_guidelines(tmp_path: Path) -> None:
    """The real thing: 43 guidelines, ~1,400 passages embedded with the packaged MiniLM (about a minute on 2 cores)."""
    try:
        discover_guidelines()
    except GuidelineError:
        pytest.skip("open-medicine is not installed")
    kb = build_knowledge_base()
    assert len(kb.guideline_ids) == 43 and kb.meta["encoder"]["name"] == "all-MiniLM-L6-v2"
    loaded = GuidelineKB.load(kb.save(tmp_path / "kb"), encoder=kb.encoder)
    results = evaluate(loaded, load_queries(), modes=("hybrid",))
    assert results["hybrid"]["hit@5"] >= 0.9, results
    hits = loaded.search("eGFR 40 with albuminuria", k=5)
    assert "kdigo_ckd_2024" in {h.guideline_id for h in hits}


def test_an_onnx_query_model_saved_with_the_kb_embeds_queries_as_the_model_does(
    guideline_dir: Path, tiny_student_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from ehrembed.encoders.onnx import OnnxStudentEncoder

    built = build_knowledge_base(guideline_dir, RetrievalModelConfig.minilm(tiny_student_dir))
    folder = built.save(tmp_path / "kb", onnx_queries=True)
    assert (folder / "query_onnx").is_dir() and json.loads((folder / "kb.json").read_text())["query_onnx"]
    loaded = GuidelineKB.load(folder)
    assert isinstance(loaded.query_encoder(), OnnxStudentEncoder)
    queries = ["eGFR 40 with albuminuria", "afib w RVR", "asthma reliever"]
    assert np.allclose(loaded.query_vectors(queries), built.query_vectors(queries), atol=1e-4)
    assert loaded.rank_guidelines("asthma reliever", "dense") == built.rank_guidelines("asthma reliever", "dense")
    # a model that does not export (here: no folder at all) leaves queries on torch, and the KB is still saved
    hashed = build_knowledge_base(guideline_dir, RetrievalModelConfig.minilm("/nowhere"), encoder=HashEncoder())
    saved = hashed.save(tmp_path / "hashed", onnx_queries=True)
    assert "queries stay on torch" in caplog.text and not (saved / "query_onnx").exists()
    assert GuidelineKB.load(saved, encoder=HashEncoder()).query_onnx is None
