"""The prognostic encoder: count inputs → a vector that knows what tends to happen next.

A model folder (``ehrembed pretrain`` writes it atomically; nothing in it is pickled)::

    prognosis.json      format and version, method, dims, objective (time bins / horizons), the
                        training data's fingerprint and sizes, figures (validation loss, coverage)
    inputs.json         the input layout: count-feature columns ({code}@{bin} and age_years), frozen
                        from the train split's points, and the count bins
    targets.json        the target codes in rank order with their train-split frequency and entropy
    model.safetensors   ``input_scale`` (each column's largest train magnitude after sign-log1p) and
                        either the network's weights (``net.*``: encoder and head, with ``readout_mean`` /
                        ``readout_basis`` when the vector is the PCA readout of its predicted log hazards)
                        or, for the linear methods, ``projection`` (inputs × dim); ``output_scale`` (one
                        number that gives the train vectors an average per-dimension variance of 1)
    README.md           the model card

Inputs are the count baseline's matrix for (subject, prediction_time) rows
(:func:`~ehrembed.predict.features.count_features` with the frozen columns, so events after the
time never enter), transformed ``sign(x)·log(1+|x|) / input_scale``. A column the applied dataset
cannot have is zero; the coverage check (:meth:`PrognosisModel.coverage`) says how much of a new
dataset the model can read.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset
from ehrembed.encoders.base import EncoderSpec
from ehrembed.encoders.embeddings import PREDICTION_TIME, EmbeddingSet
from ehrembed.errors import InputError
from ehrembed.fsutil import atomic_dir, sha256_file
from ehrembed.predict.features import DEFAULT_BINS_DAYS, count_features
from ehrembed.predict.ontology import Ontology
from ehrembed.predict.prognosis.folder import CONFIG_FILE, is_prognosis_folder
from ehrembed.predict.prognosis.losses import cumulative_hazard, occurrence_probability

FORMAT = "ehrembed-prognosis"
FORMAT_VERSION = 1
"""Version of the folder layout above; a folder of another version is refused with both versions named."""
INPUTS_FILE = "inputs.json"
TARGETS_FILE = "targets.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
LOW_COVERAGE = 0.5
"""Below this share of a dataset's events in codes the model knows, applying it warns."""

Method = Literal["tte", "horizons", "rrr", "svd", "untrained"]
METHODS: tuple[str, ...] = ("tte", "horizons", "rrr", "svd", "untrained")
NETWORK_METHODS = frozenset({"tte", "horizons", "untrained"})
READOUT_HORIZON_DAYS = 365.0
"""The horizon of the network's readout (its predicted log cumulative hazards)."""


class PrognosisError(InputError):
    """A prognostic model cannot be trained, loaded or applied as asked."""


def transform_inputs(counts: sp.csr_matrix, scale: np.ndarray) -> sp.csr_matrix:
    """``sign(x)·log(1+|x|)`` per entry, divided by each column's scale (float32 CSR)."""
    out = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    out.data = np.sign(out.data) * np.log1p(np.abs(out.data))
    return sp.csr_matrix(out.multiply(1.0 / scale[None, :]), dtype=np.float32)


def input_scale(counts: sp.csr_matrix) -> np.ndarray:
    logged = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    logged.data = np.log1p(np.abs(logged.data))
    peak = np.asarray(logged.max(axis=0).todense()).ravel().astype(np.float32)
    return np.where(peak > 0, peak, 1.0).astype(np.float32)


def to_tensor(rows: sp.csr_matrix) -> torch.Tensor:
    """A CSR batch as a dense float32 tensor (batches are small; inputs are a few thousand columns)."""
    return torch.from_numpy(np.asarray(rows.todense(), dtype=np.float32))


class PrognosisNet(nn.Module):
    """``inputs → hidden → dim`` (GELU, dropout, LayerNorm without affine: the vector), then a linear head
    to ``n_targets × n_outputs`` (log hazards per time bin, or logits per horizon)."""

    def __init__(
        self, n_inputs: int, n_targets: int, n_outputs: int, *, hidden: int = 512, dim: int = 256, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.n_targets, self.n_outputs = n_targets, n_outputs
        self.encoder = nn.Sequential(
            nn.Linear(n_inputs, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.LayerNorm(dim, elementwise_affine=False),
        )
        self.head = nn.Linear(dim, n_targets * n_outputs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z, self.head(z).view(-1, self.n_targets, self.n_outputs)


@dataclass
class PrognosisModel:
    """A trained (or control) prognostic encoder and everything needed to apply it to any dataset."""

    config: dict[str, Any]
    columns: tuple[str, ...]
    targets: list[dict[str, Any]]
    scale: np.ndarray
    output_scale: float = 1.0
    net: PrognosisNet | None = None
    projection: np.ndarray | None = None
    readout: tuple[np.ndarray, np.ndarray] | None = None
    """(mean, basis): the network's readout over its predicted log hazards (None: the bottleneck)."""
    path: Path | None = None
    bins_days: tuple[float, ...] = DEFAULT_BINS_DAYS
    _known: frozenset[str] | None = field(default=None, repr=False)

    @property
    def method(self) -> str:
        return str(self.config["method"])

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @property
    def target_codes(self) -> list[str]:
        return [t["code"] for t in self.targets]

    @property
    def name(self) -> str:
        return str(self.config.get("name") or (self.path.name if self.path else "prognosis"))

    # --- vectors -----------------------------------------------------------------------------------
    def vectors_from_inputs(self, inputs: sp.csr_matrix, batch_size: int = 1024) -> np.ndarray:
        """Vectors for transformed input rows (:func:`transform_inputs`).

        A linear method's vector is ``inputs @ projection``. A network's is its bottleneck, or, with a
        ``readout`` (``readout_mean``, ``readout_basis``), its predicted log cumulative hazards at 365 days
        (one per target) centred and projected on their principal directions, so the vector's large
        directions are the ones along which predicted futures differ most."""
        if self.projection is not None:
            out = np.asarray(inputs @ self.projection, dtype=np.float32)
        else:
            parts = [
                self.net_vectors(inputs[start : start + batch_size]) for start in range(0, inputs.shape[0], batch_size)
            ]
            out = np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)
        return (out * self.output_scale).astype(np.float32)

    def net_vectors(self, rows: sp.csr_matrix) -> np.ndarray:
        assert self.net is not None
        self.net.eval()
        with torch.inference_mode():
            if self.readout is None:
                return self.net.encode(to_tensor(rows)).numpy()
            hazards = self.log_cumulative_hazard(rows)
            return ((hazards - self.readout[0]) @ self.readout[1].T).astype(np.float32)

    def log_cumulative_hazard(self, rows: sp.csr_matrix, horizon_days: float = READOUT_HORIZON_DAYS) -> np.ndarray:
        """log Λ(horizon) per target (time-to-event), or the log-odds at the nearest horizon (horizon models)."""
        assert self.net is not None
        with torch.inference_mode():
            out = self.net(to_tensor(rows))[1]
            if self.method == "horizons":
                return out[..., self._horizon_column(horizon_days)].numpy()
            edges = self.config["time_bins_days"]
            return torch.log(cumulative_hazard(out, horizon_days, edges) + 1e-12).numpy()

    def _horizon_column(self, horizon_days: float) -> int:
        """A horizon model's output for ``horizon_days``: the nearest horizon at or beyond it (else the longest)."""
        horizons = list(self.config["horizons_days"])
        return next((i for i, h in enumerate(horizons) if h >= horizon_days), len(horizons) - 1)

    def inputs(self, dataset: MedsDataset, keys: pl.DataFrame, *, ontology: Ontology | None = None) -> sp.csr_matrix:
        """Transformed inputs for (subject_id, prediction_time) rows: counts cut at each time, frozen columns."""
        counts = count_features(
            dataset, keys, ontology=ontology, bins_days=self.bins_days, columns=self.columns, name="prognosis"
        )
        return transform_inputs(sp.csr_matrix(counts.matrix), self.scale)

    def encode(self, dataset: MedsDataset, keys: pl.DataFrame, *, ontology: Ontology | None = None) -> np.ndarray:
        """One vector per (subject_id, prediction_time) row of ``keys``; float32 ``(n, dim)``."""
        return self.vectors_from_inputs(self.inputs(dataset, keys, ontology=ontology))

    # --- coverage ----------------------------------------------------------------------------------
    def known_codes(self) -> frozenset[str]:
        if self._known is None:
            self._known = frozenset(c.rsplit("@", 1)[0] for c in self.columns if "@" in c)
        return self._known

    def coverage(self, dataset: MedsDataset, *, ontology: Ontology | None = None) -> float:
        """Share of the dataset's coded events whose code (or one of its ancestors) is an input of the model."""
        ontology = ontology or Ontology.from_dataset(dataset)
        per_code = dataset.scan().group_by(s.CODE).agg(pl.len().alias("n")).collect()
        known = self.known_codes()
        total = covered = 0
        for code, n in per_code.iter_rows():
            total += n
            if code in known or any(a in known for a in ontology.ancestors(code)):
                covered += n
        return covered / total if total else 0.0

    def check_coverage(self, dataset: MedsDataset, *, ontology: Ontology | None = None) -> tuple[float, str | None]:
        """(coverage, a warning or None); no overlap at all is an error, not a vector of zeros."""
        share = self.coverage(dataset, ontology=ontology)
        if share == 0.0:
            raise PrognosisError(
                f"prognostic model {self.name} knows none of the codes of dataset {dataset.name}: "
                "its vectors would all be the same; pretrain on this dataset (ehrembed pretrain)"
            )
        warning = None
        if share < LOW_COVERAGE:
            warning = (
                f"prognostic model {self.name} reads only {share:.0%} of dataset {dataset.name}'s events "
                f"(codes it was trained on); its vectors will miss much of these records"
            )
        return share, warning

    # --- zero-shot risk ----------------------------------------------------------------------------
    @property
    def has_risk_head(self) -> bool:
        return self.net is not None and self.method in ("tte", "horizons") and bool(self.config.get("trained", True))

    def risk_from_inputs(self, inputs: sp.csr_matrix, horizon_days: float) -> np.ndarray:
        """P(each target occurs within ``horizon_days``): ``(rows, targets)``. Time-to-event models integrate
        their hazards; horizon models take the nearest horizon at or beyond the one asked."""
        if not self.has_risk_head:
            raise PrognosisError(f"prognostic model {self.name} ({self.method}) has no risk head")
        assert self.net is not None
        self.net.eval()
        with torch.inference_mode():
            out = self.net(to_tensor(inputs))[1]
            if self.method == "tte":
                edges = self.config["time_bins_days"]
                return occurrence_probability(out, horizon_days, edges).numpy()
            return torch.sigmoid(out[..., self._horizon_column(horizon_days)]).numpy()

    def window_risk(
        self, inputs: sp.csr_matrix, codes: Collection[str], start_days: float, end_days: float
    ) -> np.ndarray | None:
        """Zero-shot risk that any of ``codes`` (among the targets) occurs in ``(start_days, end_days]`` after
        each row's time: the largest over those targets of ``S(start) - S(end)`` (time-to-event), or of the
        horizon probability at ``end_days``. None when no code is a target or the model has no risk head."""
        columns = [i for i, code in enumerate(self.target_codes) if code in set(codes)]
        if not columns or not self.has_risk_head:
            return None
        parts = []
        for start in range(0, inputs.shape[0], 1024):
            rows = inputs[start : start + 1024]
            late = self.risk_from_inputs(rows, end_days)[:, columns]
            if self.method == "tte" and start_days > 0:
                late = late - self.risk_from_inputs(rows, start_days)[:, columns]
            parts.append(late.max(axis=1))
        return np.concatenate(parts).astype(np.float32)

    # --- folder ------------------------------------------------------------------------------------
    def save(self, folder: Path, *, card: str | None = None, overwrite: bool = True) -> Path:
        tensors: dict[str, torch.Tensor] = {
            "input_scale": torch.from_numpy(np.ascontiguousarray(self.scale, dtype=np.float32)),
            "output_scale": torch.tensor([self.output_scale], dtype=torch.float32),
        }
        if self.projection is not None:
            tensors["projection"] = torch.from_numpy(np.ascontiguousarray(self.projection, dtype=np.float32))
        if self.net is not None:
            tensors |= {f"net.{k}": v.detach().contiguous().clone() for k, v in self.net.state_dict().items()}
        if self.readout is not None:
            tensors["readout_mean"] = torch.from_numpy(np.ascontiguousarray(self.readout[0], dtype=np.float32))
            tensors["readout_basis"] = torch.from_numpy(np.ascontiguousarray(self.readout[1], dtype=np.float32))
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.config}
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n")
            (tmp / INPUTS_FILE).write_text(
                json.dumps({"bins_days": list(self.bins_days), "columns": list(self.columns)}) + "\n"
            )
            (tmp / TARGETS_FILE).write_text(json.dumps(self.targets, indent=1) + "\n")
            save_file(tensors, str(tmp / WEIGHTS_FILE))
            if card is not None:
                (tmp / CARD_FILE).write_text(card)
        self.path = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PrognosisModel:
        folder = Path(folder).expanduser()
        if not is_prognosis_folder(folder):
            raise PrognosisError(
                f"prognostic model folder {folder} not found (no {CONFIG_FILE}); make one with "
                "`ehrembed pretrain DATASET --out DIR` or pass its path"
            )
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
            raise PrognosisError(
                f"{folder} is a prognostic model of format {config.get('format')!r} version "
                f"{config.get('format_version')!r}; this ehrembed reads {FORMAT!r} version {FORMAT_VERSION}: "
                "pretrain it again"
            )
        inputs = json.loads((folder / INPUTS_FILE).read_text())
        targets = json.loads((folder / TARGETS_FILE).read_text())
        tensors = load_file(str(folder / WEIGHTS_FILE))
        net = None
        if config["method"] in NETWORK_METHODS:
            net = build_net(config, len(inputs["columns"]), len(targets))
            net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")})
            net.eval()
        projection = tensors["projection"].numpy() if "projection" in tensors else None
        readout = None
        if "readout_basis" in tensors:
            readout = (tensors["readout_mean"].numpy(), tensors["readout_basis"].numpy())
        return cls(
            config=config,
            columns=tuple(inputs["columns"]),
            targets=targets,
            scale=tensors["input_scale"].numpy(),
            output_scale=float(tensors["output_scale"][0]),
            net=net,
            projection=projection,
            readout=readout,
            path=folder,
            bins_days=tuple(inputs["bins_days"]),
        )


PROGNOSIS_INPUTS_VERSION = "counts-v1"
"""What an EmbeddingSet of prognostic vectors records as its serializer version: the count inputs' layout."""


def embedding_set(
    model: PrognosisModel, dataset: MedsDataset, keys: pl.DataFrame, *, ontology: Ontology | None = None
) -> EmbeddingSet:
    """The model's vectors for (subject_id, prediction_time) rows as an :class:`EmbeddingSet` (for ``embed``,
    indexes, exports and as distillation targets); its spec names the model and pins its weights' hash."""
    vectors = model.encode(dataset, keys, ontology=ontology)
    assert model.path is not None, "save or load the model before making embedding sets"
    spec = EncoderSpec(
        name=f"prognosis:{model.method}:{model.name}",
        kind="prognosis",
        model_path=str(model.path),
        revision=sha256_file(model.path / WEIGHTS_FILE)[:16],
        pooling="none",
        dim=int(vectors.shape[1]),
        max_tokens=0,
        normalize=False,
    )
    return EmbeddingSet(
        subject_ids=keys.get_column(s.SUBJECT_ID).to_numpy().astype(np.int64),
        as_of=keys.get_column(PREDICTION_TIME).to_numpy().astype("datetime64[us]"),
        vectors=vectors,
        spec=spec,
        serializer_version=PROGNOSIS_INPUTS_VERSION,
        extra={"targets": len(model.targets), "method": model.method},
    )


def n_outputs(config: dict[str, Any]) -> int:
    """Outputs per target: one log hazard per time bin (``tte``, ``untrained``) or one logit per horizon."""
    return len(config["horizons_days"]) if config["method"] == "horizons" else len(config["time_bins_days"])


def build_net(config: dict[str, Any], n_inputs: int, n_targets: int) -> PrognosisNet:
    return PrognosisNet(
        n_inputs,
        n_targets,
        n_outputs(config),
        hidden=int(config["hidden"]),
        dim=int(config.get("bottleneck", config["dim"])),
        dropout=float(config.get("dropout", 0.1)),
    )


def unit_variance_scale(vectors: np.ndarray) -> float:
    """The one factor that gives the vectors an average per-dimension variance of 1 (1.0 for constant vectors)."""
    if len(vectors) < 2:
        return 1.0
    var = float(np.mean(np.var(np.asarray(vectors, dtype=np.float64), axis=0)))
    return 1.0 / np.sqrt(var) if var > 0 else 1.0


def target_index(model: PrognosisModel, codes: Sequence[str]) -> list[int]:
    """Positions of ``codes`` among the model's targets (codes that are not targets are left out)."""
    position = {c: i for i, c in enumerate(model.target_codes)}
    return [position[c] for c in codes if c in position]
