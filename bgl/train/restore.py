"""Rebuild a trained (F, G) pair from a training checkpoint, for evaluation commands.

`bgl eval enhance|detect|segment` and transfer studies all need the same steps: read the
checkpoint (weights_only), override parts of its data config (another dataset, root, crop, test
size), rebuild the task with optional option overrides, and load both networks onto a device.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bgl.config import RunConfig, from_dict
from bgl.tasks import Task, build_task, task_class
from bgl.train.checkpoint import load_checkpoint


@dataclass
class TrainedRun:
    """A checkpoint's configuration, task and networks (in eval mode, on `device`)."""

    cfg: RunConfig
    task: Task
    upper: nn.Module
    lower: nn.Module
    step: int | str
    device: torch.device


def load_trained(
    checkpoint: str | os.PathLike[str],
    *,
    data: Mapping[str, Any] | None = None,
    task_options: Mapping[str, Any] | None = None,
    expect_task: str | None = None,
    device: torch.device | str = "cpu",
) -> TrainedRun:
    """Load a training checkpoint; `data` overrides data.* keys (None values are ignored).

    `expect_task` makes a checkpoint of another task an error that names the file.
    """
    from bgl.models.generator import build_generator

    state = load_checkpoint(checkpoint)  # weights_only=True
    missing = [k for k in ("upper", "lower", "config") if k not in state]
    if missing:
        raise ValueError(f"{checkpoint}: not a training checkpoint (missing {missing})")
    config = dict(state["config"])
    data_cfg = dict(config.get("data") or {})
    data_cfg.update({k: v for k, v in (data or {}).items() if v is not None})
    config["data"] = data_cfg
    cfg = from_dict(config)
    if expect_task is not None and cfg.task.name != expect_task:
        raise ValueError(f"{checkpoint} is a {cfg.task.name!r} checkpoint, not {expect_task!r}")
    options = dict(cfg.task.options)
    # the checkpoint holds G's weights: do not look for its pretrained backbone file again
    options.update(dict.fromkeys(task_class(cfg.task.name).weight_options))
    options.update(task_options or {})
    task = build_task(cfg.task.name, **options)
    device = torch.device(device)
    upper = build_generator(cfg.model.generator_width, cfg.model.generator_residual)
    lower = task.build_lower()
    upper.load_state_dict(state["upper"])
    lower.load_state_dict(state["lower"])
    upper.to(device).eval()
    lower.to(device).eval()
    return TrainedRun(cfg, task, upper, lower, state.get("step", "?"), device)
