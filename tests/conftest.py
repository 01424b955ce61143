"""Shared fixtures: tiny run configurations that train in seconds on 2 CPUs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bgl.bench.faults import TINY_BASE
from bgl.config import RunConfig, from_dict

# the smallest run a Ray study test can train: two warm and two bilevel steps on 32 px crops (one
# definition, shared with `bgl bench faults`)
TINY_STUDY_BASE: dict[str, Any] = TINY_BASE


def tiny_config_dict(tmp_path, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "output_dir": str(tmp_path / "results"),
        "task": {"name": "enhance", "options": {"width": 8}},
        "model": {"generator_width": 8},
        "data": {
            "train_size": 16,
            "val_size": 8,
            "select_size": 4,
            "test_size": 4,
            "crop": 32,
            "batch_size": 2,
            "val_batch_size": 2,
            "eval_batch_size": 4,
        },
        "solver": {"name": "ibgl", "k": 2},
        "train": {
            "warm_steps": 3,
            "steps": 4,
            "eval_every": 2,
            "log_every": 1,
            "checkpoint_every": 3,
            "device": "cpu",
        },
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def tiny_config(tmp_path):
    def make(**sections: Any) -> RunConfig:
        return from_dict(tiny_config_dict(tmp_path, **sections))

    return make


@pytest.fixture
def single_thread():
    """One torch thread: small-tensor ops are faster that way, and much faster when other
    processes keep the 2 cores busy (OpenMP threads then wait on each other, up to 100x).
    Modules opt in with `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_weight_downloads(monkeypatch):
    """No test reaches the internet: pretrained weights are never downloaded (`BGL_OFFLINE=1`,
    inherited by the subprocesses and Ray workers a test starts). tests/test_weights_download.py
    lifts it for downloads from its own loopback server."""
    monkeypatch.setenv("BGL_OFFLINE", "1")
    monkeypatch.delenv("BGL_WEIGHTS_URL", raising=False)
