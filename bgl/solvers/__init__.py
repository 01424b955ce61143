"""Bilevel hypergradients: naive (first order), TBGL (Eq. 5) and IBGL (Eq. 9).

Pure functions of a `BilevelProblem` and two batches; they know nothing of the training loop,
devices or Ray. Multi-worker runs pass a `reduce` that all-reduces (averages) gradient lists.
"""

from __future__ import annotations

from typing import Any

import torch

from bgl.solvers.ibgl import ibgl_hypergradient
from bgl.solvers.naive import naive_hypergradient
from bgl.solvers.problem import BilevelProblem, Grads, LossFn, Reduce, identity_reduce
from bgl.solvers.tbgl import tbgl_hypergradient

SOLVERS = ("naive", "tbgl", "ibgl")

__all__ = [
    "SOLVERS",
    "BilevelProblem",
    "Grads",
    "LossFn",
    "Reduce",
    "hypergradient",
    "ibgl_hypergradient",
    "identity_reduce",
    "naive_hypergradient",
    "tbgl_hypergradient",
]


def hypergradient(
    solver: str,
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    *,
    lower_lr: float,
    delta: float = 0.01,
    eps: float = 1e-12,
    reduce: Reduce | None = None,
    train_upper_out: list[torch.Tensor] | None = None,
) -> Grads:
    """Dispatch by solver name with one set of keyword arguments (what the training loop uses).
    `train_upper_out` (F's output on the training batch, kept by the loop) is used by IBGL only."""
    if solver == "naive":
        return naive_hypergradient(problem, train_batch, val_batch, reduce=reduce)
    if solver == "tbgl":
        return tbgl_hypergradient(
            problem, train_batch, val_batch, lower_lr=lower_lr, delta=delta, reduce=reduce
        )
    if solver == "ibgl":
        return ibgl_hypergradient(
            problem, train_batch, val_batch, eps=eps, reduce=reduce, train_upper_out=train_upper_out
        )
    raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
