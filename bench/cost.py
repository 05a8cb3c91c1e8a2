"""Cost curves: serialize + student embed + index build at growing cohort sizes, single process vs Ray.

For each size (default 1k, 10k, 100k synthetic patients): generate the cohort, then in a fresh child
process each (so peak memory is the stage's own): (1) serialize every record (Markdown, token budget
counted by the student's tokenizer), (2) embed with the student — single process, and on a local
Ray instance with one actor per core — and (3) build the vector index (``auto`` kind). Reported per
stage: wall seconds, records per second and the child's peak RSS (for Ray, the driver's: the actors
are Ray worker processes); then how each cost grows with n
(the exponent of a power-law fit over the sizes) and the projected time for 1M patients, for the
student here and for the LLM teacher on one GPU. The teacher figure is measured when ``--teacher-rps``
gives records/s seen on a GPU (e.g. ``bench/encode.py`` on a device); otherwise it is an estimate from
FLOPs, saved with ``"measured": false`` and its assumptions (a 7.6B-parameter gte-Qwen2-7B-style
teacher, 2048-token records, an H100/H200's 989 dense bf16 TFLOPS at 40% utilisation).

Run ``.venv/bin/python bench/cost.py [--sizes 1000,10000] [--max-tokens 128] [--encoder student-onnx]``.
Figures go to stdout and bench/results/cost.json. The 100k embedding stage dominates (tens of minutes
on 2 cores).

``--every-label new_diagnosis`` measures instead the benchmark on every label of real data: Eunomia's
tasks labelled at every visit day, each stage in its own child process (label, count features, and
the count baseline's few-shot cells with LightGBM and logistic heads at k = 16 and all), with its
seconds and peak RSS (bench/results/cost_every_label.json). Memory must not grow with labels per patient.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save

STAGE = textwrap.dedent(
    """
    import json, os, resource, sys, time
    from pathlib import Path
    stage, data, out, encoder_name, max_tokens, workers = sys.argv[1:7]
    max_tokens = int(max_tokens)
    if stage == "prepare":  # one-time work (the ONNX export under the data home) stays out of the stages
        from ehrembed.encoders import load_encoder
        load_encoder(encoder_name, max_tokens=max_tokens)
        print(json.dumps({"seconds": 0.0, "rows": 0, "peak_rss_mb": 0.0}))
        sys.exit(0)
    from ehrembed.ehr.meds import MedsDataset
    dataset = MedsDataset.open(data)
    started = time.perf_counter()
    rows = 0
    if stage == "serialize":
        from ehrembed.encoders import load_encoder
        from ehrembed.encoders.job import EmbedConfig, record_serializer
        from ehrembed.ehr.vocabulary import Vocabulary
        encoder = load_encoder(encoder_name, max_tokens=max_tokens)
        serializer = record_serializer(encoder, Vocabulary.from_dataset(dataset), EmbedConfig(instruction=None))
        started = time.perf_counter()
        for patient in dataset.iter_patients():
            when = patient.last_time
            if when is not None:
                serializer.serialize(patient, as_of=when)
                rows += 1
    elif stage in ("embed", "embed-ray"):
        from ehrembed.encoders.job import EmbedConfig
        config = EmbedConfig(instruction=None, batch_size=32, cache_dir=Path(out + "-cache"))
        if stage == "embed":
            from ehrembed.encoders import load_encoder
            from ehrembed.encoders.job import embed_dataset
            encoder = load_encoder(encoder_name, max_tokens=max_tokens)
            started = time.perf_counter()
            rows = embed_dataset(dataset, encoder, Path(out), config).rows
        else:
            from ehrembed.encoders.distributed import embed_dataset_ray, init_ray
            init_ray(num_cpus=int(workers))
            started = time.perf_counter()
            rows = embed_dataset_ray(
                dataset, encoder_name, Path(out), config, encoder_kwargs={"max_tokens": max_tokens},
                num_actors=int(workers),
            ).rows
    elif stage == "labels":  # encoder_name carries the tasks
        from ehrembed.predict.job import label_keys, label_tasks
        from ehrembed.predict.tasks import resolve_tasks
        labelsets, _ = label_tasks(dataset, resolve_tasks(encoder_name.split(",")))
        keys = label_keys(labelsets)
        keys.write_parquet(out)
        rows = keys.height
    elif stage == "counts":
        import polars as pl
        from ehrembed.predict.features import count_features
        keys = pl.read_parquet(out)
        started = time.perf_counter()
        rows = count_features(dataset, keys).matrix.shape[0]
    elif stage == "benchmark-count":  # encoder_name carries the tasks
        from ehrembed.predict.benchmark import BenchmarkConfig
        from ehrembed.predict.job import BenchmarkJobConfig, benchmark_dataset
        from ehrembed.predict.tasks import resolve_tasks
        config = BenchmarkJobConfig(
            encoders=("count",), benchmark=BenchmarkConfig(ks=(16, "all"), replicates=1, heads=("lightgbm", "logistic"),
            n_bootstrap=0),
        )
        result = benchmark_dataset(dataset, resolve_tasks(encoder_name.split(",")), Path(out), config)
        rows = sum(len(ls) for ls in result.labelsets)
    elif stage == "index":
        from ehrembed.encoders.embeddings import EmbeddingSet
        from ehrembed.retrieval.index import build_index
        embeddings = EmbeddingSet.load(out)
        started = time.perf_counter()
        rows = build_index(embeddings, Path(out + ".index")).rows
    seconds = time.perf_counter() - started
    # VmHWM: this process's own high-water mark (ru_maxrss would carry the forking parent's across exec)
    status = Path("/proc/self/status")
    hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")] if status.exists() else []
    peak = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rows": rows, "peak_rss_mb": round(peak, 1)}))
    """
)


def run_stage(stage: str, data: Path, out: Path, encoder: str, max_tokens: int, workers: int) -> dict[str, Any]:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", STAGE, stage, str(data), str(out), encoder, str(max_tokens), str(workers)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{result.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    figures["seconds"] = round(figures["seconds"], 2)
    figures["records_per_second"] = round(figures["rows"] / figures["seconds"], 1) if figures["seconds"] else None
    return figures


def growth(sizes: list[int], seconds: list[float]) -> float | None:
    """Exponent b of seconds ≈ a·n^b (least squares in log-log), None with fewer than two sizes."""
    pairs = [(math.log(n), math.log(t)) for n, t in zip(sizes, seconds, strict=True) if t > 0]
    if len(pairs) < 2:
        return None
    mx = sum(x for x, _ in pairs) / len(pairs)
    my = sum(y for _, y in pairs) / len(pairs)
    den = sum((x - mx) ** 2 for x, _ in pairs)
    return round(sum((x - mx) * (y - my) for x, y in pairs) / den, 3) if den else None


def teacher_flops_per_record(params: float, layers: int, width: int, tokens: int) -> float:
    """Forward FLOPs of one record: 2 per parameter per token, plus attention's T² terms (QKᵀ and AV)."""
    return 2 * params * tokens + 4 * layers * tokens**2 * width


def teacher_projection(args: argparse.Namespace) -> dict[str, Any]:
    """Hours for 1M records with the teacher on one GPU: measured records/s if given, else a FLOPs estimate."""
    if args.teacher_rps:
        return {
            "measured": True,
            "records_per_second": args.teacher_rps,
            "hours": round(1_000_000 / args.teacher_rps / 3600, 2),
        }
    flops = teacher_flops_per_record(args.teacher_params, args.teacher_layers, args.teacher_width, args.teacher_tokens)
    rps = args.gpu_tflops * 1e12 * args.mfu / flops
    return {
        "measured": False,
        "assumptions": {
            "teacher_params": args.teacher_params,
            "layers": args.teacher_layers,
            "width": args.teacher_width,
            "tokens_per_record": args.teacher_tokens,
            "gpu_peak_tflops": args.gpu_tflops,
            "utilisation": args.mfu,
        },
        "tflop_per_record": round(flops / 1e12, 2),
        "records_per_second": round(rps, 1),
        "hours": round(1_000_000 / rps / 3600, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--encoder", default="student-onnx", help="student, student-onnx or a student folder")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="Ray actors (one per core)")
    parser.add_argument("--teacher-rps", type=float, default=None, help="teacher records/s on one GPU, measured")
    parser.add_argument("--skip-ray-above", type=int, default=None, help="no Ray run for sizes above this")
    parser.add_argument("--teacher-params", type=float, default=7.6e9, help="estimate: teacher parameters")
    parser.add_argument("--teacher-layers", type=int, default=28, help="estimate: teacher transformer layers")
    parser.add_argument("--teacher-width", type=int, default=3584, help="estimate: teacher hidden size")
    parser.add_argument("--teacher-tokens", type=int, default=2048, help="estimate: tokens per record")
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="estimate: GPU dense bf16 peak TFLOPS")
    parser.add_argument("--mfu", type=float, default=0.4, help="estimate: fraction of peak reached")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/cost.json)")
    parser.add_argument(
        "--every-label", default=None, metavar="TASKS", help="instead: the benchmark on every Eunomia label of TASKS"
    )
    args = parser.parse_args()
    if args.every_label:
        every_label(args.every_label, args.out)
        return
    sizes = [int(x) for x in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="ehrembed-bench-cost-"))
    os.environ["EHREMBED_HOME"] = str(work / "home")
    from ehrembed.ehr.synth import SynthConfig, generate_cohort

    run_stage("prepare", work, work, args.encoder, args.max_tokens, 1)
    per_size: dict[str, dict[str, Any]] = {}
    for n in sizes:
        data = work / f"synth-{n}"
        started = time.perf_counter()
        generate_cohort(SynthConfig(n_subjects=n, seed=11), data)
        row: dict[str, Any] = {"synth_seconds": round(time.perf_counter() - started, 2)}
        row["serialize"] = run_stage("serialize", data, work / f"emb-{n}", args.encoder, args.max_tokens, 1)
        row["embed"] = run_stage("embed", data, work / f"emb-{n}", args.encoder, args.max_tokens, 1)
        if args.skip_ray_above is None or n <= args.skip_ray_above:
            row["embed_ray"] = run_stage(
                "embed-ray", data, work / f"emb-ray-{n}", args.encoder, args.max_tokens, args.workers
            )
        row["index"] = run_stage("index", data, work / f"emb-{n}", args.encoder, args.max_tokens, 1)
        per_size[str(n)] = row
        print(n, json.dumps(row), flush=True)
        save("cost", summarise(args, per_size), args.out)  # after every size, so a long run's early sizes are kept


def every_label(tasks: str, out: Path | None) -> None:
    """Label, count features and count-baseline cells on every visit-day label of Eunomia: seconds and peak RSS."""
    from ehrembed.ehr.omop import ingest_omop

    work = Path(tempfile.mkdtemp(prefix="ehrembed-bench-labels-"))
    os.environ["EHREMBED_HOME"] = str(work / "home")
    data = work / "eunomia"
    ingest_omop(out=data)
    figures: dict[str, Any] = {"tasks": tasks}
    for stage in ("labels", "counts", "benchmark-count"):
        target = work / ("keys.parquet" if stage != "benchmark-count" else "report")
        figures[stage] = run_stage(stage, data, target, tasks, 0, 1)
        print(stage, json.dumps(figures[stage]), flush=True)
    save("cost_every_label", figures, out)


def summarise(args: argparse.Namespace, per_size: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures so far, with each stage's growth exponent and its 1M-patient projection."""
    sizes = [int(n) for n in per_size]
    curves: dict[str, Any] = {}
    for stage in ("serialize", "embed", "embed_ray", "index"):
        points = [(n, per_size[str(n)][stage]["seconds"]) for n in sizes if stage in per_size[str(n)]]
        if not points:
            continue
        exponent = growth([p[0] for p in points], [p[1] for p in points])
        n_last, t_last = points[-1]
        projected = t_last * (1_000_000 / n_last) ** (exponent if exponent is not None else 1.0)
        curves[stage] = {"growth_exponent": exponent, "projected_1m_seconds": round(projected, 1)}
    curves["teacher_one_gpu_1m"] = teacher_projection(args)
    return {
        "command": "python bench/cost.py " + " ".join(sys.argv[1:]),
        "encoder": args.encoder,
        "max_tokens": args.max_tokens,
        "ray_workers": args.workers,
        "sizes": per_size,
        "curves": curves,
    }


if __name__ == "__main__":
    main()
