"""The retrieval model: which local encoder embeds passages and queries, and how (:class:`RetrievalModelConfig`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ehrembed.encoders.base import Encoder, EncoderError, Pooling
from ehrembed.retrieval.guidelines.base import BGE_QUERY_INSTRUCTION, GuidelineError


@dataclass(frozen=True)
class RetrievalModelConfig:
    """Which model embeds passages and queries, and how.

    ``model_path`` None is the packaged all-MiniLM-L6-v2. ``pooling`` None keeps the folder's own
    (a sentence-transformers ``Pooling`` module; mean for a plain Hugging Face folder); a value forces
    it, which loads a plain BERT folder through the generic transformers path. The instructions are
    prepended to queries / passages as text, so any encoder works.
    """

    model_path: str | None = None
    pooling: Pooling | None = None
    query_instruction: str = ""
    passage_instruction: str = ""
    normalize: bool = True
    max_tokens: int | None = None
    """The encoder's window; None: the model's own (sentence-transformers ``max_seq_length``, else up to 512)."""

    @classmethod
    def minilm(cls, path: str | Path | None = None) -> RetrievalModelConfig:
        """all-MiniLM-L6-v2 (packaged by default) as trained: mean pooling, no instruction, unit vectors."""
        return cls(model_path=str(path) if path is not None else None)

    @classmethod
    def bge(cls, path: str | Path, *, max_tokens: int | None = None) -> RetrievalModelConfig:
        """A BGE folder (sentence-transformers or plain BERT): CLS pooling, unit vectors, BGE query instruction.

        ``max_tokens`` None: the model's window (512 for BGE models).
        """
        return cls(
            model_path=str(path),
            pooling="cls",
            query_instruction=BGE_QUERY_INSTRUCTION,
            normalize=True,
            max_tokens=max_tokens,
        )

    def folder(self) -> Path:
        if self.model_path is None:
            from ehrembed.encoders.student import default_student_folder

            return default_student_folder()
        return Path(self.model_path).expanduser()

    def load_encoder(self, *, device: str | None = None) -> Encoder:
        """The encoder this config describes, from a local folder only."""
        folder = self.folder()
        if not folder.is_dir():
            raise GuidelineError(f"retrieval model folder {folder} not found")
        has_modules = (folder / "modules.json").is_file()
        if self.pooling is None or (has_modules and _folder_pooling(folder) == self.pooling):
            from ehrembed.encoders.student import StudentEncoder

            return StudentEncoder.from_folder(
                None if self.model_path is None else folder,
                max_tokens=self.max_tokens,
                normalize=self.normalize,
                device=device,
            )
        from ehrembed.encoders.teacher import TeacherEncoder

        return TeacherEncoder.from_folder(
            folder,
            pooling=self.pooling,
            max_tokens=self.max_tokens or _model_positions(folder, 512),
            normalize=self.normalize,
            instruction_template=None,
            device=device,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrievalModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _folder_pooling(folder: Path) -> str | None:
    from ehrembed.encoders.student import pooling_from_folder

    try:
        return pooling_from_folder(folder)
    except EncoderError:
        return None


def _model_positions(folder: Path, cap: int) -> int:
    config_path = folder / "config.json"
    if config_path.is_file():
        positions = json.loads(config_path.read_text()).get("max_position_embeddings")
        if isinstance(positions, int) and positions > 1:
            return min(cap, positions)
    return cap
