from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ehrembed.distill.lora import LoraConfig, LoraError, find_target_modules, lora_tune_teacher


def toy_task() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    filler = ["age", "years", "visit", "serum", "plasma", "normal", "oral", "tablet"]
    texts, labels = [], []
    for i in range(16):
        words = " ".join(rng.choice(filler, size=3))
        positive = i % 2 == 0
        texts.append(f"{words} {'diabetes glucose high' if positive else 'essential hypertension lisinopril'}")
        labels.append(1.0 if positive else 0.0)
    return texts, np.array(labels, dtype=np.float32)


def test_lora_tuning_lowers_the_task_loss_and_saves_a_plain_folder(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    texts, labels = toy_task()
    config = LoraConfig(r=4, alpha=8, dropout=0.0, epochs=16, batch_size=8, lr=1e-2, head_lr=1e-1, max_tokens=64)
    steps: list[int] = []
    out = lora_tune_teacher(
        tiny_qwen2_dir,
        texts,
        labels,
        tmp_path / "tuned",
        config,
        pooling="last",
        instruction="does the patient have diabetes",
        progress=lambda epoch, step, loss: steps.append(step),
    )
    card = json.loads((out / "lora_tune.json").read_text())
    assert card["final_loss"] < 0.5 * card["initial_loss"]
    assert card["target_modules"] == ["q_proj", "v_proj"] and steps[-1] == card["steps"] == 32

    model = AutoModel.from_pretrained(out)
    tuned = model.state_dict()
    assert not any("lora" in name for name in tuned)  # merged, no adapters left
    original = AutoModel.from_pretrained(tiny_qwen2_dir).state_dict()
    name = "layers.0.self_attn.q_proj.weight"
    assert tuned[name].shape == original[name].shape and not np.allclose(tuned[name], original[name])
    assert (out / "tokenizer.json").exists()
    head = json.loads((out / "task_head.json").read_text())
    assert np.asarray(head["weight"]).shape == (1, 32)

    from ehrembed.encoders.teacher import TeacherEncoder

    encoder = TeacherEncoder.from_folder(out, pooling="last", max_tokens=64)
    vectors = encoder.encode(texts[:4], instruction="does the patient have diabetes")
    assert vectors.shape == (4, 32) and np.isfinite(vectors).all()

    with pytest.raises(FileExistsError):
        lora_tune_teacher(tiny_qwen2_dir, texts, labels, out, config)


def test_helpers(tiny_bert_dir: Path) -> None:
    import torch
    from transformers import AutoModel

    assert find_target_modules(AutoModel.from_pretrained(tiny_bert_dir)) == ("query", "value")
    with pytest.raises(LoraError):
        find_target_modules(torch.nn.Sequential(torch.nn.ReLU()))


def test_mean_pooling_and_bert_targets(tiny_bert_dir: Path, tmp_path: Path) -> None:
    texts, labels = toy_task()
    config = LoraConfig(r=2, alpha=4, epochs=1, batch_size=8, lr=1e-3, max_tokens=64)
    out = lora_tune_teacher(
        tiny_bert_dir, texts, labels, tmp_path / "bert", config, pooling="mean", instruction="will the patient stay"
    )
    card = json.loads((out / "lora_tune.json").read_text())
    assert card["target_modules"] == ["query", "value"] and np.isfinite(card["final_loss"])
