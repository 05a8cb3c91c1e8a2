"""Shared fixtures: an isolated data home for every test, Eunomia ingested once per session, and tiny
models built offline from configs (with a WordPiece tokenizer trained here) for fast encoder tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrembed.ehr.meds import IngestReport, MedsDataset
from ehrembed.ehr.omop import ingest_omop


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's ~/.ehrembed or a configured database."""
    monkeypatch.setenv("EHREMBED_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EHREMBED_DATABASE_URL", raising=False)


@pytest.fixture(scope="session")
def eunomia_ingest(tmp_path_factory: pytest.TempPathFactory) -> tuple[MedsDataset, IngestReport]:
    out = tmp_path_factory.mktemp("eunomia") / "meds"
    report = ingest_omop(out=out)
    return MedsDataset.open(out), report


@pytest.fixture(scope="session")
def eunomia(eunomia_ingest: tuple[MedsDataset, IngestReport]) -> MedsDataset:
    return eunomia_ingest[0]


CORPUS = [
    "# Electronic Healthcare Record",
    "Current time: 2020-01-01 23:59",
    "## Patient Demographics",
    "- Age: 67 years",
    "- Sex: Female",
    "## Recent Lab Results",
    "- Creatinine [Mass/volume] in Serum or Plasma: 1.9 mg/dL (high), 1.2 mg/dL (normal)",
    "- Glucose: 180 mg/dL (high)",
    "## Past Medical Visits",
    "- Inpatient Visit: 2019-12-01 to 2019-12-09, 8 days (31 days ago)",
    "### Outpatient Visit on 2019-06-01 (214 days ago)",
    "#### Conditions",
    "- Type 2 diabetes mellitus without complications",
    "- Chronic kidney disease, stage 3",
    "- Essential hypertension",
    "#### Medications",
    "- metformin 500 MG Oral Tablet",
    "- lisinopril 10 MG Oral Tablet",
    "Instruct: will the patient stay in the hospital for more than 7 days",
    "Query:",
]


def _train_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(CORPUS * 20, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    _train_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A 2-layer, 32-wide random BERT with the tiny tokenizer, as a Hugging Face folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A 2-layer, 32-wide random Qwen2 causal LM with the tiny tokenizer, as a Hugging Face folder."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_qwen2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    Qwen2ForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    """The tiny BERT as a sentence-transformers folder (mean pooling, 96-token window): a student base."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    folder = tmp_path_factory.mktemp("tiny_student")
    transformer = Transformer(str(tiny_bert_dir), max_seq_length=96)
    SentenceTransformer(modules=[transformer, Pooling(32, "mean")]).save(str(folder))
    return folder
