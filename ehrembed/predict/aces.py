"""ACES task configs (the format of MEDS-DEV's tasks) as ehrembed tasks, labelled by the ``es-aces`` package.

A task file is an ACES config when it has ``predicates``, ``trigger`` and ``windows``. It becomes a
:class:`~ehrembed.predict.tasks.TaskSpec` whose outcome is ``{rule: aces, config: <the config>,
predicates: <dataset predicates or null>}``, so the task is self-contained (it can be stored, shown
and posted to the API like any other). Its name is the file's path below a ``tasks`` folder with
``/`` as ``-`` (MEDS-DEV's ``tasks/readmission/general_hospital/30d.yaml`` →
``readmission-general_hospital-30d``), else the file's stem.

MEDS-DEV configs leave dataset-specific predicates as ``???``; a dataset predicates file (ACES's own
format: a top-level ``predicates`` mapping, as MEDS-DEV's ``datasets/*/predicates.yaml``) fills or
overrides them. A predicate still ``???`` is an error naming it.

Labelling runs ACES itself on each data shard of the MEDS folder (shards hold whole subjects, so
windows never cross a shard) and keeps ``subject_id``, ``index_timestamp`` (→ ``prediction_time``)
and ``label`` (→ the boolean label), as ACES's own MEDS output does.
"""

from __future__ import annotations

import copy
import logging
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.predict.tasks import TaskError

ACES_KEYS = ("predicates", "trigger", "windows")
CONFIG_KEYS = (*ACES_KEYS, "patient_demographics")
"""What of a config file the task keeps (ACES ignores ``metadata`` / ``description``; the task has its own)."""
MEDS_DEV_PREFIX = "meds-dev:"
_UNSET = "???"
_NAME_PART = re.compile(r"[^a-z0-9_\-]+")
_PREAMBLE = re.compile(r"^this (file|task|config)( specifies the (base )?configuration for| predicts)?\s*(the )?", re.I)


def is_aces_config(data: Any) -> bool:
    return isinstance(data, Mapping) and all(key in data for key in ACES_KEYS)


def task_name(path: Path) -> str:
    """``.../tasks/readmission/general_hospital/30d.yaml`` → ``readmission-general_hospital-30d``; else the stem."""
    parts = list(path.with_suffix("").parts)
    parts = parts[len(parts) - parts[::-1].index("tasks") :] if "tasks" in parts else parts[-1:]
    name = "-".join(_NAME_PART.sub("_", p.lower()).strip("_") for p in parts)
    return name[-64:].lstrip("-_") or "aces_task"


def first_sentence(text: str, limit: int = 240) -> str:
    """A config's description cut to its first sentence (MEDS-DEV's run to paragraphs), for the task's question.

    A leading "This file specifies the base configuration for" / "This task predicts" is dropped."""
    text = " ".join(text.replace("**", "").replace("_", " ").split())
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    first = re.sub(
        r"^this (file|task|config)( specifies the (base )?configuration for| predicts)?\s*(the )?",
        "",
        first,
        flags=re.I,
    )
    return first[:limit].strip()


def _meds_dev_tasks_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("MEDS_DEV")
    if spec is None or spec.origin is None:
        raise TaskError(
            "MEDS-DEV's task configs come from the meds-dev package: pip install --no-deps meds-dev "
            "(its declared dependencies pin old versions of meds and polars; the configs need none of them)"
        )
    return Path(spec.origin).parent / "tasks"


def meds_dev_tasks() -> list[str]:
    """The installed MEDS-DEV task configs, as ``meds-dev:PATH`` references."""
    tasks = _meds_dev_tasks_dir()
    return sorted(f"{MEDS_DEV_PREFIX}{p.relative_to(tasks).with_suffix('')}" for p in tasks.rglob("*.yaml"))


def meds_dev_task(ref: str) -> Path:
    """``meds-dev:readmission/general_hospital/30d`` → that task config of the installed ``meds-dev`` package."""
    tasks = _meds_dev_tasks_dir()
    name = ref.removeprefix(MEDS_DEV_PREFIX).strip("/").removesuffix(".yaml")
    path = tasks / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(r.removeprefix(MEDS_DEV_PREFIX) for r in meds_dev_tasks())
        raise TaskError(f"no MEDS-DEV task {name!r}; the installed ones: {known}")
    return path


PREDICATES_DIR = Path(__file__).parent / "predicates"


def load_predicates(path: Path | str) -> dict[str, Any]:
    """A dataset predicates file: ``{predicates: {name: definition}}`` (MEDS-DEV's ``predicates.yaml``), or the
    name of a packaged one (``omop``: MEDS folders made by ``ehrembed ingest omop``)."""
    packaged = PREDICATES_DIR / f"{path}.yaml"
    path = packaged if packaged.is_file() and not Path(path).exists() else Path(path)
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PREDICATES_DIR.glob("*.yaml")))
        raise TaskError(f"predicates file {path} not found (packaged ones: {names})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TaskError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("predicates"), Mapping):
        raise TaskError(f"{path}: a predicates file needs a top-level 'predicates' mapping")
    return dict(data["predicates"])


def merged_config(config: Mapping[str, Any], predicates: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config with the dataset predicates laid over its own; unresolved (``???``) predicates are an error."""
    merged = copy.deepcopy(dict(config))
    merged["predicates"] = {**dict(merged.get("predicates") or {}), **copy.deepcopy(dict(predicates or {}))}
    unset = sorted(name for name, value in merged["predicates"].items() if _has_unset(value))
    if unset:
        raise TaskError(
            f"predicate(s) {', '.join(unset)} are left to the dataset ('???'): pass a dataset predicates file "
            "(--predicates FILE with a 'predicates:' mapping) that defines them for this dataset"
        )
    return merged


def _has_unset(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip() == _UNSET
    if isinstance(value, Mapping):
        return any(_has_unset(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_unset(v) for v in value)
    return False


def _extractor_config(config: Mapping[str, Any]) -> Any:
    """ACES's TaskExtractorConfig for a config mapping (ACES loads from a file; it gets a temporary one)."""
    from aces.config import TaskExtractorConfig

    with tempfile.TemporaryDirectory(prefix="ehrembed-aces-") as tmp:
        path = Path(tmp) / "task.yaml"
        path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        try:
            return TaskExtractorConfig.load(config_path=path)
        except (ValueError, KeyError, TypeError) as exc:
            raise TaskError(f"not a valid ACES config: {exc}") from None


def aces_labels(config: Mapping[str, Any], predicates: Mapping[str, Any] | None, dataset: MedsDataset) -> pl.DataFrame:
    """Label ``dataset`` with an ACES config: subject_id, prediction_time, value (bool), one row per index time."""
    from aces import predicates as aces_predicates
    from aces import query as aces_query
    from omegaconf import DictConfig

    merged = merged_config(config, predicates)
    cfg = _extractor_config(merged)
    if cfg.label_window is None or cfg.index_timestamp_window is None:
        raise TaskError("an ACES config for a task needs a window with 'label' and one with 'index_timestamp'")
    frames: list[pl.DataFrame] = []
    matched: dict[str, int] = dict.fromkeys(cfg.plain_predicates, 0)
    aces_log = logging.getLogger("aces")
    level = aces_log.level
    aces_log.setLevel(logging.ERROR)  # ACES logs each step (and label warnings) itself; ours say what matters
    try:
        for i, shard in enumerate(dataset.shards):
            if i:  # a config is changed by the query it runs (as aces-cli, one fresh config per shard)
                cfg = _extractor_config(merged)
            data_config = DictConfig({"path": str(shard), "standard": "meds"})
            predicates_df = aces_predicates.get_predicates_df(cfg, data_config)
            for name in matched:
                matched[name] += int(predicates_df.get_column(name).sum() or 0)
            result = aces_query.query(cfg, predicates_df)
            if result is not None and result.height:
                frames.append(
                    result.select(
                        pl.col("subject_id").cast(pl.Int64).alias(s.SUBJECT_ID),
                        pl.col("index_timestamp").cast(pl.Datetime("us")).alias("prediction_time"),
                        pl.col("label").cast(pl.Boolean).alias("value"),
                    )
                )
    finally:
        aces_log.setLevel(level)
    if not frames:
        silent = sorted(name for name, n in matched.items() if n == 0)
        hint = f"; predicates matching no event in {dataset.root}: {', '.join(silent)}" if silent else ""
        raise TaskError(f"the ACES config gives no labels on this dataset{hint}")
    return pl.concat(frames).sort(s.SUBJECT_ID, "prediction_time")
