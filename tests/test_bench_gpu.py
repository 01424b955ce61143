"""`bgl bench gpu` and scripts/gpu_check.sh: the skip path, and every measurement on CPU (--quick).

On CPU `cuda_max_allocated_bytes` (torch.cuda.max_memory_allocated) has no value: the column is
null (NaN once read back), and `memory_bytes` holds the tensor peak instead.
"""

from __future__ import annotations

import math
import os
import subprocess
from itertools import product
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from bgl.bench.gpu import TASKS, GpuBenchConfig, paper_study, solver_run
from bgl.cli import main
from bgl.solvers.registry import SOLVER_NAMES

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

pytestmark = pytest.mark.usefixtures("single_thread")


def _rows(folder: Path) -> list[dict]:
    (path,) = folder.glob("gpu-*.parquet")
    return pq.read_table(path).to_pylist()


def _positive(value) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def test_skips_in_one_line_without_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out_dir = tmp_path / "bench"
    assert main(["bench", "gpu", "--output-dir", str(out_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "skipped" in lines[0] and "CUDA" in lines[0]
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_script_skips_without_cuda(tmp_path):
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert os.access(SCRIPT, os.X_OK)
    out_dir = tmp_path / "bench"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU visible, whatever the machine
    proc = subprocess.run(
        [str(SCRIPT), "--output-dir", str(out_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 and "skipped" in proc.stdout
    assert not out_dir.exists()


def test_paper_sizes_come_from_the_paper_studies():
    """Not quick: the paper's crop and batch, and k where the study pins it (IBGL's constant
    `solver.k`; the base's k = 1 for every other solver); only the dataset, weight files and
    device are overridden."""
    want = {"enhance": (1024, 2, 80), "detect": (640, 8, 30), "segment": (768, 5, 1)}
    cfg = GpuBenchConfig(device="cuda")
    for task in TASKS:
        study = paper_study(task, cfg)
        for solver in SOLVER_NAMES:
            run = solver_run(study, solver, cfg)
            crop, batch, k = want[task]
            assert (run.data.crop, run.data.batch_size, run.train.device) == (crop, batch, "cuda")
            assert run.solver.name == solver and run.solver.k == (k if solver == "ibgl" else 1)
            assert run.data.name.startswith("synthetic") and run.model.generator_width == 32
        weights = {"detect": "pretrained", "segment": "backbone_weights"}.get(task)
        if weights:
            assert run.task.options[weights] is None


def test_quick_cpu_run_writes_a_row_per_solver_and_task_and_develop(tmp_path, capsys):
    out_dir = tmp_path / "bench"
    argv = ["bench", "gpu", "--device", "cpu", "--quick", "--skip", "ray"]
    assert main([*argv, "--output-dir", str(out_dir)]) == 0
    rows = _rows(out_dir)
    steps = [r for r in rows if r["kind"] == "step"]
    assert sorted((r["task"], r["solver"]) for r in steps) == sorted(product(TASKS, SOLVER_NAMES))
    for r in steps:
        assert r["status"] == "ok", r.get("error")
        assert _positive(r["time_s"]) and _positive(r["time_s_min"])
        assert r["memory_bytes"] >= 0 and r["tensor_peak_bytes"] >= 0
        cuda_peak = r["cuda_max_allocated_bytes"]
        assert cuda_peak is None or math.isnan(cuda_peak)  # CUDA only
        assert r["device"].startswith("cpu") and r["benchmark"] == "gpu" and r["quick"]
        assert r["k"] == 1 and r["repeats"] == 1 and r["warmup"] == 1
    naive = [r for r in steps if r["solver"] == "naive"]
    assert all(r["time_ratio"] == 1.0 for r in naive)
    (develop,) = [r for r in rows if r["kind"] == "develop"]
    assert develop["status"] == "ok", develop.get("error")
    assert (develop["height"], develop["width_px"]) == (256, 384)
    assert develop["megapixels"] == pytest.approx(256 * 384 / 1e6)
    assert _positive(develop["time_s"]) and _positive(develop["megapixels_per_s"])
    assert not [r for r in rows if r["kind"] == "ray_train"]
    out = capsys.readouterr().out
    assert "peak memory per upper step" in out and "IBGL / TBGL" in out and "bgl develop" in out


@pytest.mark.slow
def test_quick_cpu_ray_train_trial(tmp_path):
    out_dir = tmp_path / "bench"
    argv = ["bench", "gpu", "--device", "cpu", "--quick", "--skip", "steps", "--skip", "develop"]
    assert main([*argv, "--output-dir", str(out_dir)]) == 0
    (row,) = _rows(out_dir)
    assert row["kind"] == "ray_train" and row["status"] == "ok", row.get("error")
    assert row["backend"] == "gloo" and row["workers"] == 1  # nccl on a GPU
    assert row["trial_status"] == "completed"
    assert _positive(row["wall_s"]) and _positive(row["trial_wall_s"]) and _positive(row["train_s"])
    assert row["wall_s"] >= row["trial_wall_s"]
