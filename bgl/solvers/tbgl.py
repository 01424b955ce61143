"""TBGL: truncated bilevel gradient with a finite-difference Hessian-vector product (Eq. 5).

    θ'  = θ + Δθ(g),  g = ∇_θ L_G(ω, θ)              (one unrolled lower step)
    v   = ∇_θ' L_F(ω, θ')
    w   = P v,  P = diag(∂Δθ/∂g)
    ε   = δ / ‖w‖
    h   = ∇_ω L_F(ω, θ') − [∇_ω L_G(ω, θ + εw) − ∇_ω L_G(ω, θ − εw)] / (2ε)

The bracket approximates ∇²_{ωθ} L_G · P v, the term an exact differentiation through the
unrolled step gives (∂θ'/∂ω = −P ∂g/∂ω). Perturbations are applied to θ (not θ') in place and
undone on exit.

Which step is unrolled (`unroll`): `optimizer` (bgl's default in runs) is the step the lower
level actually takes, handed over by the loop as `lower_unroll` (`bgl.train.unroll`: for Adam its
preconditioned step, moments held constant); `sgd` is the paper's plain step θ' = θ − η g, P = η,
at the scheduled rate η = `lower_lr`. With Adam the plain step is about an order of magnitude
smaller than the one taken, and so is the second-order term it gives (measured in the docs).

Reading of Eq. 5: the paper prints θ± = θ ± δ ∇_θ L_G, which would difference ∇_ω L_G along the
lower gradient and approximate ∇²_{ωθ} L_G ∇_θ L_G, not the chain-rule term ∇²_{ωθ} L_G v. bgl
perturbs along v = ∇_θ' L_F, as DARTS (Liu et al. 2019, Eq. 8) does; the tests against autograd
through the unrolled step (plain, and a real Adam step) pin this reading.

Passes: θ' comes from a pass with ω frozen (F's forward builds no graph); v and ∇_ω L_F(ω, θ')
from one pass on the validation batch. With `problem.upper_input` set, the two finite-difference
terms share one F forward on the training batch: G runs at θ ± εw on the same F output, their
gradients at that output are subtracted, and F's backward runs once on the difference (linearity
of the vector-Jacobian product), accumulated into ∇_ω L_F in place. Per upper step that is three
F forwards and two F backwards, with one ω-sized gradient alive. `reduce` is linear, so the ω
part is reduced once, at the end; the θ-sized gradients are reduced before they are used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bgl.solvers.health import combine_terms, lower_health
from bgl.solvers.problem import (
    BilevelProblem,
    Grads,
    Reduce,
    grad_disabled,
    identity_reduce,
    loss_pass,
    norm,
    omega_grads,
    preserved_state,
    set_params,
    upper_output,
)

UNROLLS = ("optimizer", "sgd")
#: g -> (Δθ, P): the lower optimiser's next update and its diagonal sensitivity to g
LowerUnroll = Callable[[Grads], tuple[Grads, Grads]]


def tbgl_hypergradient(
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    *,
    lower_lr: float,
    delta: float,
    unroll: str = "sgd",
    lower_unroll: LowerUnroll | None = None,
    reduce: Reduce | None = None,
    diagnostics: dict[str, float] | None = None,
) -> Grads:
    """Eq. 5 of the paper; one tensor per parameter of `problem.upper`.

    `unroll="optimizer"` unrolls the step `lower_unroll` describes (the loop's lower optimiser);
    `"sgd"` the plain step at `lower_lr`. `diagnostics`, when given, receives the lower level's
    health from the two θ-gradients this solver has (∇_θ L_G at θ and v = ∇_θ' L_F at θ') and
    `tbgl_step_ratio`, ‖Δθ‖ / (lower_lr·‖∇_θ L_G‖): how much larger the unrolled step is than the
    plain one.
    """
    if lower_lr < 0 or delta <= 0:
        raise ValueError(f"need lower_lr >= 0 and delta > 0, got {lower_lr=}, {delta=}")
    if unroll not in UNROLLS:
        raise ValueError(f"unroll must be one of {', '.join(UNROLLS)}, got {unroll!r}")
    if unroll == "optimizer" and lower_unroll is None:
        raise ValueError("unroll='optimizer' needs the lower optimiser's step (lower_unroll)")
    reduce = reduce or identity_reduce
    upper, lower = problem.upper, problem.lower
    omega, theta = problem.upper_params(), problem.lower_params()

    # only θ is perturbed: restore θ and every buffer, but never copy the large ω
    with preserved_state(upper, params=False), preserved_state(lower):
        theta0 = [p.detach().clone() for p in theta]
        with grad_disabled(omega):
            upper_out = upper_output(problem, train_batch)  # no graph: ω is frozen here
            step = loss_pass(
                problem, problem.lower_loss, train_batch, upper_out, upper_out_grad=False
            )
            g_theta = reduce(step.theta)
            if unroll == "optimizer":
                assert lower_unroll is not None
                moves, scales = lower_unroll(g_theta)
            else:
                moves, scales = [-lower_lr * g for g in g_theta], None
            theta_prime = [t + m for t, m in zip(theta0, moves)]
            if diagnostics is not None:
                plain = lower_lr * norm(g_theta)
                diagnostics["tbgl_step_ratio"] = float(norm(moves) / plain) if plain else 0.0
            del step, moves
        set_params(theta, theta_prime)
        upper_out = upper_output(problem, val_batch)
        _, v, cotangent = loss_pass(problem, problem.upper_loss, val_batch, upper_out)
        v = reduce(v)
        if diagnostics is not None:
            diagnostics.update(lower_health(v, g_theta))
        del g_theta
        hyper = omega_grads(problem, upper_out, cotangent)  # ∇_ω L_F(ω, θ')
        del upper_out, cotangent
        w = [lower_lr * vi for vi in v] if scales is None else [p * vi for p, vi in zip(scales, v)]
        w_norm = norm(w)
        if w_norm == 0 or not torch.isfinite(w_norm):  # no coupling term
            return (
                reduce(hyper)
                if diagnostics is None
                else combine_terms(hyper, None, reduce, diagnostics)
            )
        eps = delta / w_norm
        with grad_disabled(theta):
            upper_out = upper_output(problem, train_batch)  # shared by both difference passes
            lower_loss = problem.lower_loss
            set_params(theta, [t + eps * wi for t, wi in zip(theta0, w)])
            plus = loss_pass(problem, lower_loss, train_batch, upper_out, theta=False).upper_out
            set_params(theta, [t - eps * wi for t, wi in zip(theta0, w)])
            minus = loss_pass(problem, lower_loss, train_batch, upper_out, theta=False).upper_out
            diff = [a.sub_(b) for a, b in zip(plus, minus)]
            del plus, minus
            scale = -1.0 / (2 * eps)
            if diagnostics is None:
                return reduce(omega_grads(problem, upper_out, diff, scale=scale, into=hyper))
            coupling = omega_grads(problem, upper_out, diff, scale=scale)
        return combine_terms(hyper, coupling, reduce, diagnostics)
