"""Real local Ray: a study with a completed and a diverged trial (kills: test_study_faults)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from bgl.cli import main
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


def test_study_records_completed_and_diverged_trials(tmp_path):
    path = _write_study(
        tmp_path,
        workers=2,
        num_samples=2,
        params={
            "optim.upper_lr": {"choices": [0.003, 1.0e12]},
            "solver.k": {"type": "int", "low": 1, "high": 2},
        },
        initial=[
            {"solver.name": "naive", "optim.upper_lr": 0.003},
            {"solver.name": "ibgl", "optim.upper_lr": 1.0e12, "solver.k": 2},
        ],
    )
    assert main(["study", "run", str(path), "--no-live"]) == 0
    folder = tmp_path / "results" / "tiny"
    rows = {r["solver"]: r for r in _rows(folder, "trials")}
    assert set(rows) == {"naive", "ibgl"}
    assert rows["naive"]["status"] == "completed" and rows["naive"]["psnr"] > 0
    assert rows["naive"]["param.solver.k"] is None  # conditional: null where it does not apply
    assert rows["ibgl"]["param.solver.k"] == 2
    assert rows["ibgl"]["status"] == "diverged" and "nan" in rows["ibgl"]["error"]
    assert rows["naive"]["workers"] == 2 and rows["naive"]["git_commit"]  # gloo, 2 ranks
    history = [h for part in _rows(folder, "history") for h in part]
    assert {h["kind"] for h in history} == {"train", "eval"}
    assert (folder / "optuna.journal").exists()
    # the study folder exists now: a second run must be asked to resume
    assert main(["study", "run", str(path), "--no-live"]) == 2
