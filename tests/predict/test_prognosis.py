"""Prognostic pretraining: points, targets, censoring, leakage, exclusion, the model folder, the benchmark seam."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from ehrembed import schema as s
from ehrembed.ehr.meds import MedsDataset, write_dataset
from ehrembed.encoders.embeddings import PREDICTION_TIME
from ehrembed.predict.ontology import Ontology
from ehrembed.predict.prognosis.losses import (
    bin_exposure,
    event_bin,
    multi_horizon_bce,
    occurrence_probability,
    piecewise_exponential_nll,
)
from ehrembed.predict.prognosis.model import CONFIG_FILE, PrognosisError, PrognosisModel
from ehrembed.predict.prognosis.points import END_OF_RECORD, sample_points
from ehrembed.predict.prognosis.targets import excluded_codes, select_targets, target_times
from ehrembed.predict.prognosis.train import PretrainConfig, pretrain

DAY = dt.timedelta(days=1)
START = dt.datetime(2015, 1, 1)
CODES = ["ICD10CM/E11.9", "ICD10CM/I10", "ICD10CM/I48.91", "ICD10CM/J45.909", "LOINC/2345-7", "RxNorm/860975"]


def _cohort(n: int = 160, seed: int = 0) -> list[tuple[int, dt.datetime | None, str]]:
    """Subjects with yearly visits over 6 years; hypertension makes atrial fibrillation likely later."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, dt.datetime | None, str]] = []
    for sid in range(1, n + 1):
        rows += [
            (sid, None, "Gender/F" if sid % 2 else "Gender/M"),
            (sid, dt.datetime(1950 + sid % 40, 1, 1), s.BIRTH_CODE),
        ]
        hypertensive = rng.random() < 0.4
        for year in range(6):
            day = START + dt.timedelta(days=365 * year + int(rng.integers(0, 30)))
            rows.append((sid, day, "LOINC/2345-7"))
            if hypertensive:
                rows.append((sid, day, "ICD10CM/I10"))
                if year >= 2 and rng.random() < 0.5:
                    rows.append((sid, day + 20 * DAY, "ICD10CM/I48.91"))
            if rng.random() < 0.3:
                rows.append((sid, day, "ICD10CM/J45.909"))
            if rng.random() < 0.2:
                rows += [(sid, day, "ICD10CM/E11.9"), (sid, day, "RxNorm/860975")]
    return rows


def _dataset(folder: Path, rows: list[tuple[int, dt.datetime | None, str]]) -> MedsDataset:
    events = pl.DataFrame(
        {s.SUBJECT_ID: [r[0] for r in rows], s.TIME: [r[1] for r in rows], s.CODE: [r[2] for r in rows]},
        schema={s.SUBJECT_ID: pl.Int64, s.TIME: pl.Datetime("us"), s.CODE: pl.String},
    ).sort(s.SUBJECT_ID, s.TIME, nulls_last=False)
    codes = pl.DataFrame(
        {s.CODE: CODES, s.DESCRIPTION: ["t2dm", "hypertension", "af", "asthma", "glucose", "metformin"]}
    )
    return MedsDataset.open(write_dataset(folder, events, codes, dataset_name=folder.name, etl_name="test"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> MedsDataset:
    return _dataset(tmp_path_factory.mktemp("prognosis") / "cohort", _cohort())


SMALL = {"dim": 16, "hidden": 32, "epochs": 3, "min_subjects": 5, "max_targets": 50}


@pytest.fixture(scope="module")
def tte_model(cohort: MedsDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tte"
    pretrain(
        cohort, out, PretrainConfig(method="tte", **{**SMALL, "epochs": 30, "patience": 30, "learning_rate": 3e-3})
    )
    return out


def _train_ids(ds: MedsDataset) -> list[int]:
    return ds.splits().filter(pl.col(s.SPLIT) == "train").get_column(s.SUBJECT_ID).to_list()


def test_points_are_bounded_end_of_day_and_before_the_last_day(cohort: MedsDataset) -> None:
    ids = _train_ids(cohort)
    points = sample_points(cohort, ids, per_subject=3, seed=1)
    assert points.group_by(s.SUBJECT_ID).len().get_column("len").max() == 3
    assert (points.get_column(PREDICTION_TIME).dt.hour() == 23).all()
    assert (points.get_column(PREDICTION_TIME) < points.get_column(END_OF_RECORD)).all()
    assert points.equals(sample_points(cohort, ids, per_subject=3, seed=1))  # stable
    assert not points.equals(sample_points(cohort, ids, per_subject=3, seed=2))
    assert set(points.get_column(s.SUBJECT_ID).to_list()) <= set(ids)


def test_censored_rows_are_never_negatives(tmp_path: Path) -> None:
    # subject 1 is followed for 400 days without the target; subject 2 only 100 days; subject 3 has it at day 50
    rows = [(1, START, "ICD10CM/I10"), (1, START + 400 * DAY, "LOINC/2345-7")]
    rows += [(2, START, "ICD10CM/I10"), (2, START + 100 * DAY, "LOINC/2345-7")]
    rows += [(3, START, "ICD10CM/I10"), (3, START + 50 * DAY, "ICD10CM/I48.91"), (3, START + 500 * DAY, "LOINC/2345-7")]
    ds = _dataset(tmp_path / "c", rows)
    points = sample_points(ds, [1, 2, 3], per_subject=1)
    times = target_times(ds, points, ["ICD10CM/I48.91"], ontology=Ontology.from_dataset(ds))
    label, known = times.occurred_within(365.0)
    by_subject = dict(zip(points.get_column(s.SUBJECT_ID).to_list(), range(3), strict=True))
    assert (label[by_subject[1], 0], known[by_subject[1], 0]) == (False, True)
    assert not known[by_subject[2], 0]  # record ends before the horizon: unknown, not negative
    assert (label[by_subject[3], 0], known[by_subject[3], 0]) == (True, True)
    assert times.days[by_subject[3], 0] == pytest.approx(50 - 23.99 / 24, abs=1e-3)
    # the losses ignore what a censored row does not know
    days, event = torch.from_numpy(times.days), torch.from_numpy(times.event)
    logits = torch.zeros(3, 1, 1, requires_grad=True)
    multi_horizon_bce(logits, days, event, [365.0]).backward()
    assert logits.grad is not None and logits.grad[by_subject[2]].abs().item() == 0.0
    # piecewise exponential: a censored row is exposed only up to its end of record
    log_hazard = torch.full((3, 1, 2), -5.0)
    exposure_only = piecewise_exponential_nll(log_hazard[1:2], days[1:2], event[1:2], [0.0, 30.0])
    assert exposure_only.item() == pytest.approx(float(np.exp(-5.0) * days[1, 0]), rel=1e-4)


def test_an_event_on_a_bin_edge_is_exposed_in_its_bin() -> None:
    """Edges are quantiles of event times, so events fall on them: the loss must stay bounded below."""
    edges = [0.0, 30.0]
    days, event = torch.tensor([[30.0]]), torch.tensor([[True]])
    assert event_bin(days, edges).item() == 0 and bin_exposure(days, edges)[0, 0, 0].item() == 30.0
    log_hazard = torch.zeros(1, 1, 2, requires_grad=True)
    optimizer = torch.optim.SGD([log_hazard], lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        loss = piecewise_exponential_nll(log_hazard, days, event, edges)
        loss.backward()
        optimizer.step()
    # the maximum-likelihood hazard of one event after 30 days of exposure is 1/30 per day
    assert loss.item() > -10 and torch.exp(log_hazard[0, 0, 0]).item() == pytest.approx(1 / 30, rel=0.05)


def test_occurrence_probability_matches_constant_hazard() -> None:
    log_hazard = torch.log(torch.tensor([[[0.01, 0.01]]]))
    p = occurrence_probability(log_hazard, 100.0, [0.0, 30.0])
    assert p.item() == pytest.approx(1 - np.exp(-1.0), rel=1e-5)


def test_targets_use_the_train_split_only_and_no_task(cohort: MedsDataset, tmp_path: Path) -> None:
    ontology = Ontology.from_dataset(cohort)
    ids = _train_ids(cohort)
    chosen = select_targets(cohort, ids, ontology=ontology, min_subjects=5)
    entropies = [t.entropy for t in chosen]
    assert entropies == sorted(entropies, reverse=True)
    codes = {t.code for t in chosen}
    assert s.BIRTH_CODE not in codes and "Gender/F" not in codes
    # an ancestor that only ever copies one recorded code (the ICD stem I48 of I48.91) is not a second target
    assert "ICD10CM/I48.91" in codes and "ICD10CM/I48" not in codes
    # rewriting every other subject's record changes nothing
    held = set(cohort.splits().filter(pl.col(s.SPLIT) != "train").get_column(s.SUBJECT_ID).to_list())
    rows = [r for r in _cohort() if r[0] not in held] + [(sid, START, "ICD10CM/E11.9") for sid in held]
    other = _dataset(tmp_path / "other", rows)
    assert select_targets(other, ids, ontology=Ontology.from_dataset(other), min_subjects=5) == chosen


def test_excluded_codes_never_make_a_target_occur(cohort: MedsDataset) -> None:
    ontology = Ontology.from_dataset(cohort)
    ids = _train_ids(cohort)
    exclude = excluded_codes(["ICD10CM/I48"], ontology)
    assert "ICD10CM/I48.91" in exclude
    chosen = [t.code for t in select_targets(cohort, ids, ontology=ontology, min_subjects=1, exclude=exclude)]
    assert "ICD10CM/I48.91" not in chosen and "ICD10CM/I48" not in chosen
    points = sample_points(cohort, ids)
    everything = target_times(cohort, points, ["ICD10CM/I48", "ICD10CM/I10"], ontology=ontology)
    ablated = target_times(cohort, points, ["ICD10CM/I48", "ICD10CM/I10"], ontology=ontology, exclude=exclude)
    assert everything.event[:, 0].any() and not ablated.event[:, 0].any()  # the ICD stem no longer fires
    assert np.array_equal(everything.event[:, 1], ablated.event[:, 1])


def test_mutating_the_future_changes_neither_inputs_nor_vectors(tte_model: Path, tmp_path: Path) -> None:
    model = PrognosisModel.load(tte_model)
    cut = START + 2 * 365 * DAY + 40 * DAY
    keys = pl.DataFrame({s.SUBJECT_ID: [1, 2, 3], PREDICTION_TIME: [cut] * 3}).with_columns(
        pl.col(PREDICTION_TIME).cast(pl.Datetime("us"))
    )
    base = _cohort()
    changed = [r for r in base if r[1] is None or r[1] <= cut] + [
        (sid, cut + DAY, c) for sid in (1, 2, 3) for c in CODES
    ]
    a, b = _dataset(tmp_path / "a", base), _dataset(tmp_path / "b", changed)
    assert (model.inputs(a, keys) != model.inputs(b, keys)).nnz == 0
    np.testing.assert_array_equal(model.encode(a, keys), model.encode(b, keys))


def test_model_folder_round_trip_and_version(tte_model: Path, cohort: MedsDataset, tmp_path: Path) -> None:
    model = PrognosisModel.load(tte_model)
    keys = sample_points(cohort, _train_ids(cohort)[:10]).select(s.SUBJECT_ID, PREDICTION_TIME)
    vectors = model.encode(cohort, keys)
    # the PCA readout has at most one direction per target (this cohort has 6): the vector's size is the config's
    assert vectors.shape == (keys.height, model.dim) and 1 < model.dim <= 16 and vectors.dtype == np.float32
    copy = model.save(tmp_path / "copy")
    np.testing.assert_array_equal(PrognosisModel.load(copy).encode(cohort, keys), vectors)
    risk = model.risk_from_inputs(model.inputs(cohort, keys), 365.0)
    assert risk.shape == (keys.height, len(model.targets)) and ((risk >= 0) & (risk <= 1)).all()
    config = json.loads((copy / CONFIG_FILE).read_text())
    (copy / CONFIG_FILE).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(PrognosisError, match="version 99"):
        PrognosisModel.load(copy)
    with pytest.raises(PrognosisError, match="not found"):
        PrognosisModel.load(tmp_path / "nothing")


@pytest.mark.parametrize("method", ["horizons", "rrr", "svd", "untrained"])
def test_every_method_makes_vectors(method: str, cohort: MedsDataset, tmp_path: Path) -> None:
    result = pretrain(cohort, tmp_path / method, PretrainConfig(method=method, **SMALL))
    model = PrognosisModel.load(tmp_path / method)
    keys = sample_points(cohort, _train_ids(cohort)[:20]).select(s.SUBJECT_ID, PREDICTION_TIME)
    vectors = model.encode(cohort, keys)
    assert vectors.shape[0] == keys.height and np.isfinite(vectors).all() and vectors.std() > 0
    assert model.has_risk_head == (method == "horizons")
    assert result.figures["seconds"] >= 0


def test_the_trained_risk_head_ranks_the_planted_signal(tte_model: Path, cohort: MedsDataset) -> None:
    """Hypertensive subjects get atrial fibrillation; the zero-shot risk must see it on other subjects."""
    model = PrognosisModel.load(tte_model)
    assert "ICD10CM/I48.91" in model.target_codes
    ids = cohort.splits().filter(pl.col(s.SPLIT) != "train").get_column(s.SUBJECT_ID).to_list()
    keys = pl.DataFrame({s.SUBJECT_ID: ids, PREDICTION_TIME: [START + 365 * DAY + 40 * DAY] * len(ids)}).with_columns(
        pl.col(PREDICTION_TIME).cast(pl.Datetime("us"))
    )
    risk = model.risk_from_inputs(model.inputs(cohort, keys), 365.0)[:, model.target_codes.index("ICD10CM/I48.91")]
    hypertensive = {r[0] for r in _cohort() if r[2] == "ICD10CM/I10"}
    flag = np.asarray([sid in hypertensive for sid in ids])
    assert risk[flag].mean() > risk[~flag].mean()


def test_resumes_after_an_interruption(cohort: MedsDataset, tmp_path: Path) -> None:
    out = tmp_path / "resumable"
    config = PretrainConfig(method="tte", **{**SMALL, "epochs": 3})
    calls: list[int] = []

    def stop_in_second_epoch(done: int, total: int) -> None:
        calls.append(done)
        if done > total // 3 + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(cohort, out, config, progress=stop_in_second_epoch)
    assert not out.exists() and (tmp_path / ".resumable.pretrain" / "last" / "state.json").is_file()
    said: list[str] = []
    pretrain(cohort, out, config, say=said.append)
    assert any("resuming after epoch 1" in line for line in said)
    assert (out / CONFIG_FILE).is_file() and not (tmp_path / ".resumable.pretrain").exists()


def test_bad_input_is_refused_clearly(cohort: MedsDataset, tmp_path: Path, tte_model: Path) -> None:
    tiny = _dataset(tmp_path / "tiny", [r for r in _cohort() if r[0] <= 8])
    with pytest.raises(PrognosisError, match="at least 20 train subjects"):
        pretrain(tiny, tmp_path / "m", PretrainConfig(**SMALL))
    with pytest.raises(PrognosisError, match="no code occurs in at least"):
        pretrain(cohort, tmp_path / "m", PretrainConfig(**{**SMALL, "min_subjects": 10_000}))
    with pytest.raises(PrognosisError, match="unknown pretraining method"):
        PretrainConfig(method="bert")
    stranger = _dataset(tmp_path / "stranger", [(1, START, "SNOMED/1"), (1, START + DAY, "SNOMED/2")])
    with pytest.raises(PrognosisError, match="knows none of the codes"):
        PrognosisModel.load(tte_model).check_coverage(stranger)


def test_benchmark_takes_prognosis_folders_and_fusion(cohort: MedsDataset, tte_model: Path, tmp_path: Path) -> None:
    from ehrembed.predict.benchmark import BenchmarkConfig
    from ehrembed.predict.job import BenchmarkJobConfig, benchmark_dataset
    from ehrembed.predict.tasks import TaskSpec

    task = TaskSpec.model_validate(
        {
            "name": "new_af",
            "prediction_times": {"rule": "visit_days", "time": "23:59"},
            "horizon": {"start_days": 0, "end_days": 365},
            "outcome": {"codes": ["ICD10CM/I48"]},
        }
    )
    config = BenchmarkJobConfig(
        encoders=("count", f"prognosis={tte_model}", "count+prognosis"),
        benchmark=BenchmarkConfig(ks=(4, "all"), replicates=1, heads=("logistic",), n_bootstrap=10),
    )
    result = benchmark_dataset(cohort, [task], tmp_path / "report", config)
    scored = result.result.results
    assert set(scored.get_column("encoder")) == {"count", "prognosis", "count+prognosis"}
    assert result.encoding["prognosis"]["coverage"] == pytest.approx(1.0)
    # the k=0 cell: the model's own risk of the outcome codes in the horizon, scored like any other cell
    zero = scored.filter(pl.col("k") == "0")
    assert zero.get_column("head").to_list() == ["zero-shot"] and zero.get_column("encoder").to_list() == ["prognosis"]
    assert zero.item(0, "n_train") == 0 and zero.item(0, "auroc") > 0.5
    assert zero.item(0, "auroc_lo") <= zero.item(0, "auroc") <= zero.item(0, "auroc_hi")
    assert (tmp_path / "report" / "report.md").is_file()


def test_cli_pretrain(cohort: MedsDataset, tmp_path: Path) -> None:
    from ehrembed.cli import app

    runner = CliRunner()
    out = tmp_path / "cli-model"
    ok = runner.invoke(
        app,
        [
            "pretrain",
            str(cohort.root),
            "--out",
            str(out),
            "--method",
            "rrr",
            "--dim",
            "8",
            "--min-subjects",
            "5",
            "--json",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["method"] == "rrr" and (out / CONFIG_FILE).is_file()
    bad = runner.invoke(app, ["pretrain", str(cohort.root), "--out", str(tmp_path / "x"), "--method", "nope"])
    assert bad.exit_code == 2 and "unknown pretraining method" in bad.output
    again = ["pretrain", str(cohort.root), "--out", str(out), "--method", "svd", "--dim", "4", "--min-subjects", "5"]
    refused = runner.invoke(app, again)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert json.loads((out / CONFIG_FILE).read_text())["method"] == "rrr"  # nothing lost
    assert runner.invoke(app, [*again, "--overwrite"]).exit_code == 0
    assert json.loads((out / CONFIG_FILE).read_text())["method"] == "svd"


def test_prognostic_distillation_targets_and_embed_cli(cohort: MedsDataset, tte_model: Path, tmp_path: Path) -> None:
    """The main job's prognostic recipe: the records the teacher embedded, as the prognostic encoder sees them;
    and `ehrembed embed --encoder PROGNOSIS_DIR` writes an embedding set a text encoder loader refuses clearly."""
    from ehrembed.cli import app
    from ehrembed.encoders import load_encoder
    from ehrembed.encoders.base import EncoderError
    from ehrembed.encoders.embeddings import EmbeddingSet
    from ehrembed.pipeline import _prognostic_targets
    from ehrembed.predict.prognosis.model import embedding_set

    model = PrognosisModel.load(tte_model)
    keys = sample_points(cohort, _train_ids(cohort)[:30], per_subject=2).select(s.SUBJECT_ID, PREDICTION_TIME)
    teacher = {"a": embedding_set(model, cohort, keys[:20]), "b": embedding_set(model, cohort, keys[10:])}
    targets, folder = _prognostic_targets(cohort, teacher, tte_model, tmp_path / "targets")
    assert len(targets) == keys.height and targets.spec.kind == "prognosis" and folder.is_dir()
    np.testing.assert_allclose(targets.vectors, model.encode(cohort, keys), rtol=1e-5, atol=1e-6)
    out = tmp_path / "emb"
    result = CliRunner().invoke(
        app, ["embed", str(cohort.root), "--encoder", str(tte_model), "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    written = EmbeddingSet.load(out)
    assert len(written) == len(cohort.subject_ids()) and written.dim == model.dim
    with pytest.raises(EncoderError, match="prognostic model"):
        load_encoder(str(tte_model))
    # similar-patient search over them compares by cosine (the benchmark's neighbour lift does too)
    indexed = CliRunner().invoke(
        app, ["index", str(cohort.root), "--embeddings", str(out), "--out", str(tmp_path / "ix")]
    )
    assert indexed.exit_code == 0, indexed.output
    assert json.loads((tmp_path / "ix" / "index.json").read_text())["normalize"] is True


def test_window_risk_is_the_probability_of_the_window(tte_model: Path, cohort: MedsDataset) -> None:
    """k=0 risk of codes in (start, end]: S(start) - S(end) of the most likely code; None for codes that are no
    target."""
    model = PrognosisModel.load(tte_model)
    keys = sample_points(cohort, _train_ids(cohort)[:10]).select(s.SUBJECT_ID, PREDICTION_TIME)
    inputs = model.inputs(cohort, keys)
    code = "ICD10CM/I48.91"
    j = model.target_codes.index(code)
    whole = model.window_risk(inputs, {code}, 0.0, 365.0)
    late = model.window_risk(inputs, {code}, 30.0, 365.0)
    assert whole is not None and late is not None
    np.testing.assert_allclose(whole, model.risk_from_inputs(inputs, 365.0)[:, j], rtol=1e-5)
    expected = model.risk_from_inputs(inputs, 365.0)[:, j] - model.risk_from_inputs(inputs, 30.0)[:, j]
    np.testing.assert_allclose(late, expected, rtol=1e-4, atol=1e-6)
    assert (late <= whole + 1e-6).all()
    assert model.window_risk(inputs, {"SNOMED/0"}, 0.0, 365.0) is None
