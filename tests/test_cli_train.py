"""`bgl train` end to end: outputs, refusal to clobber, resume, divergence recorded."""

from __future__ import annotations

import pyarrow.parquet as pq
import torch
import yaml

from bgl.cli import main
from bgl.tasks.enhance import EnhanceTask
from tests.conftest import tiny_config_dict


def _write(tmp_path, **sections):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path, **sections)))
    return path


def test_train_writes_checkpoint_history_and_summary(tmp_path, capsys):
    path = _write(tmp_path)
    assert main(["train", str(path), "--set", "solver.name=tbgl", "--set", "solver.k=1"]) == 0
    run = tmp_path / "results" / "runs" / "tiny"
    history = pq.read_table(run / "history.parquet").to_pylist()
    assert {r["kind"] for r in history} == {"train", "eval"}
    summary = pq.read_table(run / "summary.parquet").to_pylist()[0]
    assert summary["status"] == "completed" and summary["solver"] == "tbgl"
    assert summary["config.solver.name"] == "tbgl" and summary["steps"] == 7
    assert summary["final_psnr"] == history[-1]["psnr"]
    for key in ("git_commit", "device", "wall_time_s", "peak_memory_bytes", "versions_torch"):
        assert key in summary
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 7
    assert "psnr" in capsys.readouterr().out

    # a second run into the same folder is refused unless asked to resume or overwrite
    assert main(["train", str(path)]) == 2
    assert "--resume" in capsys.readouterr().out
    assert main(["train", str(path), "--resume", "--set", "train.steps=6"]) == 0
    assert pq.read_table(run / "summary.parquet").to_pylist()[0]["steps"] == 9


def test_bad_config_key_is_named(tmp_path, capsys):
    path = _write(tmp_path)
    assert main(["train", str(path), "--set", "solver.kk=3"]) == 2
    assert "unknown key solver.kk" in capsys.readouterr().out


def test_diverged_run_is_recorded(tmp_path, monkeypatch):
    real = EnhanceTask.upper_loss
    monkeypatch.setattr(
        EnhanceTask, "upper_loss", lambda self, u, lo, b: real(self, u, lo, b) * float("inf")
    )
    path = _write(tmp_path)
    assert main(["train", str(path)]) == 1
    summary = pq.read_table(tmp_path / "results/runs/tiny/summary.parquet").to_pylist()[0]
    assert summary["status"] == "diverged"
    assert "hypergradient" in summary["error"] and "step 3" in summary["error"]


def test_a_zero_step_run_leaves_its_initial_models(tmp_path):
    """`train.warm_steps=0 train.steps=0` saves the untrained models (e.g. F's classical start,
    which `bgl bench cameras` compares as a baseline)."""
    path = _write(tmp_path, model={"generator_width": 4, "generator_residual": "develop"})
    zero = ["--set", "train.warm_steps=0", "--set", "train.steps=0"]
    assert main(["train", str(path), *zero]) == 0
    state = torch.load(tmp_path / "results" / "runs" / "tiny" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 0 and state["config"]["model"]["generator_residual"] == "develop"
    assert not state["upper"]["head.weight"].any()  # the residual's head starts at zero
