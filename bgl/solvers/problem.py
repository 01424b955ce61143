"""The bilevel problem and the small autograd utilities every solver shares.

ω are the upper-level parameters (the generative block F), θ the lower-level ones (the task
network G). Solvers leave `.grad` fields as they found them (`omega_grads` borrows them for an
in-place accumulation and restores them); parameter perturbations and BatchNorm statistics are
restored on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

LossFn = Callable[[nn.Module, nn.Module, Any], torch.Tensor]
Reduce = Callable[[list[torch.Tensor]], list[torch.Tensor]]
Grads = list[torch.Tensor]


@dataclass(frozen=True)
class BilevelProblem:
    """min_ω L_F(ω, θ*(ω))  s.t.  θ*(ω) = argmin_θ L_G(ω, θ).

    `upper_input` (optional) says where the losses read F's input: set it when each loss depends
    on ω only through one call `upper(upper_input(batch))` (true of every bgl task, whose losses
    start from F(raw)). Solvers then run F's forward once per batch and its backward as one
    vector-Jacobian product with the loss's gradient at F's output: TBGL's two finite-difference
    passes share one F forward and one F backward, and no pass needs a second ω-sized gradient.
    Unset, a loss may use `upper` in any way and ω's gradients come from the loss directly.

    `lower_prediction` and `lower_criterion` (optional, together) split L_G into G's outputs and
    the criterion on them, `lower_loss(F, G, b) == lower_criterion(lower_prediction(F, G, b), b)`:
    what Gauss-Newton curvature (Jᵀ ∇²ℓ J) needs.

    `joint_loss` (optional) is end-to-end learning's one objective over ω and θ (every bgl task's
    warm-start loss); the `joint` method follows it instead of the bilevel pair. Unset: L_G.
    """

    upper: nn.Module
    lower: nn.Module
    lower_loss: LossFn
    upper_loss: LossFn
    upper_input: Callable[[Any], torch.Tensor] | None = None
    lower_prediction: Callable[[nn.Module, nn.Module, Any], tuple[torch.Tensor, ...]] | None = None
    lower_criterion: Callable[[tuple[torch.Tensor, ...], Any], torch.Tensor] | None = None
    joint_loss: LossFn | None = None

    @property
    def end_to_end_loss(self) -> LossFn:
        """The objective of joint learning: `joint_loss`, else L_G."""
        return self.joint_loss or self.lower_loss

    def upper_params(self) -> list[nn.Parameter]:
        return list(self.upper.parameters())

    def lower_params(self) -> list[nn.Parameter]:
        return list(self.lower.parameters())


class Pinned(nn.Module):
    """Stands in for F inside a loss: returns F's precomputed output for the input it came from."""

    def __init__(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        super().__init__()
        self.inp, self.out = inp, out

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        # the same tensor, or an equal one that `upper_input` derived anew from the batch
        same = inp is self.inp or (inp.shape == self.inp.shape and torch.equal(inp, self.inp))
        if not same:
            raise RuntimeError(
                "a loss called the generative block on something other than "
                "problem.upper_input(batch); leave BilevelProblem.upper_input unset for it"
            )
        return self.out


def upper_output(problem: BilevelProblem, batch: Any) -> list[torch.Tensor]:
    """What ω acts through in a loss on `batch`: [F(upper_input(batch))] (one forward, with a
    graph through ω unless ω is frozen), or ω itself when the problem has no `upper_input`."""
    if problem.upper_input is None:
        return problem.upper_params()
    return [problem.upper(problem.upper_input(batch))]


class LossPass(NamedTuple):
    """One evaluation of a loss: its value (detached), d loss/dθ, d loss/d upper_out."""

    loss: torch.Tensor
    theta: Grads
    upper_out: Grads


def loss_pass(
    problem: BilevelProblem,
    loss_fn: LossFn,
    batch: Any,
    upper_out: list[torch.Tensor],
    *,
    theta: bool = True,
    upper_out_grad: bool = True,
) -> LossPass:
    """Evaluate `loss_fn` on `batch` once; gradients for θ and for `upper_out` as asked (else []).

    `upper_out` is what ω acts through (`upper_output`). With `upper_input`, F is not run again:
    the loss sees F's output as a leaf, so this pass backpropagates through G only (and
    `upper_out` keeps its graph for `omega_grads`). Without it, `upper_out` is ω itself and its
    gradient is ∇ω loss.
    """
    th = problem.lower_params() if theta else []
    if problem.upper_input is None:
        wrt = upper_out if upper_out_grad else []
        loss = loss_fn(problem.upper, problem.lower, batch)
    else:
        leaf = upper_out[0].detach().requires_grad_(upper_out_grad)
        wrt = [leaf] if upper_out_grad else []
        loss = loss_fn(Pinned(problem.upper_input(batch), leaf), problem.lower, batch)
    g = grads(loss, th + wrt)
    return LossPass(loss.detach(), g[: len(th)], g[len(th) :])


def omega_grads(
    problem: BilevelProblem,
    upper_out: list[torch.Tensor],
    cotangent: Grads,
    *,
    scale: float | torch.Tensor = 1.0,
    into: Grads | None = None,
) -> Grads:
    """scale · (d upper_out/dω)ᵀ cotangent, added to `into` when given (which is then consumed).

    With `upper_input` this is F's backward pass. Adding into an existing ω-sized list goes
    through `.grad` accumulation, in place, so two ω-sized lists never exist at once; every
    parameter's own `.grad` is restored afterwards.
    """
    omega = problem.upper_params()
    if problem.upper_input is None:  # upper_out is ω: the cotangent is already its gradient
        if into is None:
            return [c * scale for c in cotangent]
        return [i.add_(c * scale) for i, c in zip(into, cotangent, strict=True)]
    saved = [p.grad for p in omega]
    try:
        for i, p in enumerate(omega):
            p.grad = None if into is None else into[i]
        if into is not None:
            into.clear()  # p.grad holds the only reference: accumulation happens in place
        wanted = [p for p in omega if p.requires_grad]
        if wanted:
            torch.autograd.backward(upper_out, [c * scale for c in cotangent], inputs=wanted)
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in omega]
    finally:
        for p, g in zip(omega, saved):
            p.grad = g


def identity_reduce(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The single-worker `reduce`: gradients are already global."""
    return tensors


def grads(
    loss: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    retain_graph: bool = False,
    create_graph: bool = False,
) -> Grads:
    """d loss / d params; zeros for parameters the loss does not reach or that are frozen.
    `create_graph` keeps a graph of the gradients themselves (for second-order products)."""
    _check_scalar(loss)
    wanted = [p for p in params if p.requires_grad]
    found = (
        torch.autograd.grad(
            loss,
            wanted,
            allow_unused=True,
            retain_graph=retain_graph or create_graph,
            create_graph=create_graph,
        )
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


def upper_gradient(problem: BilevelProblem, loss_fn: LossFn, batch: Any) -> Grads:
    """∇ω of `loss_fn(F, G, batch)` with θ frozen for the pass and no module state changed
    (BatchNorm running statistics are kept)."""
    with (
        grad_disabled(problem.lower_params()),
        preserved_state(problem.upper, problem.lower, params=False),
    ):
        return grads(loss_fn(problem.upper, problem.lower, batch), problem.upper_params())


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
