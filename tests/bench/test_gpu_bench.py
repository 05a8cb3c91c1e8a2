"""bench/gpu.py runs on the CPU with its tiny configs: the same code path the GPU host runs, minus the GPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture()
def gpu_bench():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    try:
        import gpu

        yield gpu
    finally:
        sys.path.remove(str(BENCH))


def test_batches_sort_by_length_within_the_token_budget(gpu_bench) -> None:  # type: ignore[no-untyped-def]
    lengths = [50, 10, 300, 40, 12, 900]
    batches = gpu_bench._batches(lengths, budget=1000)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 1000
    assert [lengths[b[0]] for b in batches] == sorted(lengths[b[0]] for b in batches)


def test_the_tiny_run_reports_rates_memory_ratio_and_projection(gpu_bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    records = tmp_path / "records.jsonl"
    rows = [{"teacher_tokens": n, "student_tokens": n // 2 + 1} for n in (30, 120, 5000, 800, 64, 2500)]
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "gpu.json"
    result = gpu_bench.main(["run", str(records), "--tiny", "--repeats", "1", "--token-budget", "4096",
                             "--json-out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == result
    assert result["teacher"]["config"] == "tiny" and result["records"] == 6
    for window, figures in result["windows"].items():
        assert figures["records_per_second"] > 0 and figures["tokens"] == sum(
            min(r["teacher_tokens"], int(window)) for r in rows
        )
        assert figures["cut_at_window"] == sum(r["teacher_tokens"] > int(window) for r in rows)
        assert figures["student_ratio"] > 0 and figures["projection"]["device_hours"] > 0
    assert result["student"]["tokens"] == sum(min(r["student_tokens"], 256) for r in rows)
    with pytest.raises(SystemExit, match="holds no records"):
        gpu_bench.main(["run", str(tmp_path / "empty.jsonl"), "--tiny"]) if (tmp_path / "empty.jsonl").write_text(
            ""
        ) is not None else None


def test_the_run_needs_only_torch_and_transformers(tmp_path: Path) -> None:
    """What a bare GPU host has: the run imports neither ehrembed nor the platform's other dependencies."""
    import subprocess

    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"teacher_tokens": n, "student_tokens": n}) + "\n" for n in (40, 300, 90)))
    blocked = ["ehrembed", "sentence_transformers", "peft", "polars", "pyarrow", "faiss", "lightgbm", "sklearn",
               "onnxruntime", "sqlalchemy", "fastapi"]  # fmt: skip
    script = (
        "import runpy, sys\n"
        f"sys.modules.update(dict.fromkeys({blocked!r}))\n"  # None entries: importing them raises ImportError
        f"sys.argv = ['gpu.py', 'run', {str(records)!r}, '--tiny', '--repeats', '1', "
        f"'--json-out', {str(tmp_path / 'gpu.json')!r}]\n"
        f"runpy.run_path({str(BENCH / 'gpu.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "gpu.json").read_text())["records"] == 3
