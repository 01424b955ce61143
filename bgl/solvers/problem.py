"""The bilevel problem and the small autograd utilities every solver shares.

ω are the upper-level parameters (the generative block F), θ the lower-level ones (the task
network G). Solvers only ever call `torch.autograd.grad`, never `.backward()`, so `.grad` fields
are never touched; parameter perturbations and BatchNorm statistics are restored on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

LossFn = Callable[[nn.Module, nn.Module, Any], torch.Tensor]
Reduce = Callable[[list[torch.Tensor]], list[torch.Tensor]]
Grads = list[torch.Tensor]


@dataclass(frozen=True)
class BilevelProblem:
    """min_ω L_F(ω, θ*(ω))  s.t.  θ*(ω) = argmin_θ L_G(ω, θ)."""

    upper: nn.Module
    lower: nn.Module
    lower_loss: LossFn
    upper_loss: LossFn

    def upper_params(self) -> list[nn.Parameter]:
        return list(self.upper.parameters())

    def lower_params(self) -> list[nn.Parameter]:
        return list(self.lower.parameters())


def identity_reduce(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The single-worker `reduce`: gradients are already global."""
    return tensors


def grads(
    loss: torch.Tensor, params: Sequence[torch.Tensor], *, retain_graph: bool = False
) -> Grads:
    """d loss / d params; zeros for parameters the loss does not reach or that are frozen."""
    _check_scalar(loss)
    wanted = [p for p in params if p.requires_grad]
    found = (
        torch.autograd.grad(loss, wanted, allow_unused=True, retain_graph=retain_graph)
        if wanted
        else ()
    )
    by_id = {id(p): g for p, g in zip(wanted, found)}
    return [by_id[id(p)] if by_id.get(id(p)) is not None else torch.zeros_like(p) for p in params]


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Inner product of two parameter-shaped tensor lists."""
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def norm(a: Sequence[torch.Tensor]) -> torch.Tensor:
    return dot(a, a).sqrt()


@contextmanager
def grad_disabled(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Temporarily stop tracking `params` so a pass builds no graph for them (saves memory)."""
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@contextmanager
def preserved_state(*modules: nn.Module, params: bool = True) -> Iterator[None]:
    """Restore buffers (BatchNorm running stats, counters) and, with `params`, parameter values.

    Hypergradient passes run the modules in their current mode, so BatchNorm in train mode
    normalises with batch statistics as in the training step, but none of the extra passes may
    leave a trace in the running statistics.
    """
    tensors = [t for m in modules for t in m.buffers()]
    if params:
        tensors += [p for m in modules for p in m.parameters()]
    saved = [t.detach().clone() for t in tensors]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)


def set_params(params: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    """Overwrite parameter values in place (callers restore them via `preserved_state`)."""
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)


def _check_scalar(loss: torch.Tensor) -> None:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(
            f"a bilevel loss must return a scalar tensor, got {type(loss).__name__}"
            f"{'' if not isinstance(loss, torch.Tensor) else tuple(loss.shape)}"
        )
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on any trainable parameter (no graph)")
