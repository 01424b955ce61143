"""Learning-rate schedules (paper: upper 3e-3 -> 5e-6, lower 3e-3 -> 3e-5 over training).

The learning rate is a pure function of the step, so resuming needs nothing but the step.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def cosine_lr(step: int, total: int, start: float, end: float) -> float:
    """Cosine decay from `start` at step 0 to `end` at step `total` - 1."""
    if total <= 1:
        return start
    t = min(max(step, 0), total - 1) / (total - 1)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


def learning_rate(kind: str, step: int, total: int, start: float, end: float) -> float:
    if kind == "constant":
        return start
    if kind == "cosine":
        return cosine_lr(step, total, start, end)
    raise ValueError(f"unknown schedule {kind!r}")


def phase_learning_rates(optim: Any, step: int, warm_steps: int, steps: int) -> tuple[float, float]:
    """(upper, lower) learning rates at `step` of a run with `warm_steps` + `steps` steps.

    Without `optim.warm_lr` one schedule spans both phases (bgl's default). With it, the warm
    start runs at the constant `warm_lr` for both levels (the paper: 1e-4) and each level's
    schedule starts at the phase boundary, spanning the bilevel phase alone.
    """
    o = optim
    if o.warm_lr is None:
        total = warm_steps + steps
        return (
            learning_rate(o.schedule, step, total, o.upper_lr, o.upper_lr_min),
            learning_rate(o.schedule, step, total, o.lower_lr, o.lower_lr_min),
        )
    if step < warm_steps:
        return o.warm_lr, o.warm_lr
    at = step - warm_steps
    return (
        learning_rate(o.schedule, at, steps, o.upper_lr, o.upper_lr_min),
        learning_rate(o.schedule, at, steps, o.lower_lr, o.lower_lr_min),
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_optimizer(
    name: str, params: list[torch.nn.Parameter], lr: float, *, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")
