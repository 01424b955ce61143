"""Real local Ray: a study with a completed and a diverged trial (kills: test_study_faults)."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from bgl.bench.faults import kill_holder
from bgl.cli import main
from bgl.study.faults import FAULT_DIR_ENV, FAULT_HOLD_ENV
from bgl.study.worker import STARTUP_COLUMNS
from tests.conftest import TINY_STUDY_BASE as BASE

pytestmark = pytest.mark.slow


def _write_study(tmp_path: Path, workers: int = 1, launcher: str = "ray_train", **search) -> Path:
    study = {
        "name": "tiny",
        "output_dir": str(tmp_path / "results"),
        "base": BASE,
        "search": {"metric": "psnr", "mode": "max", "solvers": ["naive", "ibgl"], **search},
        "resources": {
            "workers_per_trial": workers,
            "cpus_per_worker": 1 / workers,
            "max_concurrent_trials": 1,
            "launcher": launcher,
        },
        "logging": {"tensorboard": False},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _rows(folder: Path, table: str) -> list[dict]:
    return [
        pq.read_table(p).to_pylist()[0] if table == "trials" else pq.read_table(p).to_pylist()
        for p in sorted((folder / table).glob("*.parquet"))
    ]


def test_study_records_completed_and_diverged_trials(tmp_path, monkeypatch):
    path = _write_study(
        tmp_path,
        workers=2,
        num_samples=2,
        params={
            "optim.upper_lr": {"choices": [0.003, 1.0e12]},
            "solver.k": {"type": "int", "low": 1, "high": 2, "solvers": ["ibgl"]},
        },
        initial=[
            {"solver.name": "naive", "optim.upper_lr": 0.003},
            {"solver.name": "ibgl", "optim.upper_lr": 1.0e12, "solver.k": 2},
        ],
    )
    # rank 0 of the first trial's two Ray Train workers is killed after its first checkpoint:
    # FailureConfig restarts the worker group from it
    markers = tmp_path / "markers"
    monkeypatch.setenv(FAULT_DIR_ENV, str(markers))
    monkeypatch.setenv(FAULT_HOLD_ENV, "report:1")
    killer = threading.Thread(target=kill_holder, args=(markers, "report:1"), daemon=True)
    killer.start()
    assert main(["study", "run", str(path), "--no-live"]) == 0
    killer.join(timeout=1)
    folder = tmp_path / "results" / "tiny"
    rows = {r["solver"]: r for r in _rows(folder, "trials")}
    assert set(rows) == {"naive", "ibgl"}
    starts = Counter(p.name.split(".", 2)[2] for p in markers.glob("start.*"))
    naive_run = f"tiny-{rows['naive']['trial_id']}"
    assert starts[naive_run] == 2  # started, a worker killed, restarted from the checkpoint
    naive_id = rows["naive"]["trial_id"]
    (naive_history,) = [p for p in _rows(folder, "history") if p[0]["trial_id"] == naive_id]
    keys = [(h["step"], h["kind"]) for h in naive_history]
    assert len(keys) == len(set(keys))  # every step once
    assert {h["step"] for h in naive_history if h["kind"] == "eval"} == {0, 2, 4}
    # the default `checkpoints: {keep: 1, score: true}` keeps the best and the last
    kept = list((folder / "train").glob(f"train-{naive_id}/checkpoint_*"))
    assert 1 <= len([p for p in kept if p.is_dir()]) <= 2
    assert rows["naive"]["status"] == "completed" and rows["naive"]["psnr"] > 0
    assert rows["naive"]["param.solver.k"] is None  # conditional: null where it does not apply
    assert rows["ibgl"]["param.solver.k"] == 2
    assert rows["ibgl"]["status"] == "diverged" and "nan" in rows["ibgl"]["error"]
    assert rows["naive"]["workers"] == 2 and rows["naive"]["git_commit"]  # gloo, 2 ranks
    # where a trial's start-up went, on one clock: trial start -> workers -> built -> reported
    # (IBGL's trial ran once; the restarted naive trial's clock counts from its first start)
    ibgl = rows["ibgl"]
    phases = [ibgl[c] for c in (*STARTUP_COLUMNS, "teardown_s")]
    assert all(p >= 0 for p in phases) and ibgl["startup_build_s"] > 0
    assert sum(phases) + ibgl["wall_time_s"] <= ibgl["trial_wall_s"] + 1.0
    assert all(rows["naive"][c] > 0 for c in STARTUP_COLUMNS)
    history = [h for part in _rows(folder, "history") for h in part]
    assert {h["kind"] for h in history} == {"train", "eval"}
    assert (folder / "optuna.journal").exists()
    # the study folder exists now: a second run must be asked to resume
    assert main(["study", "run", str(path), "--no-live"]) == 2
