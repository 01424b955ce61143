"""TBGL: truncated bilevel gradient with a finite-difference Hessian-vector product (Eq. 5).

    θ'  = θ − η ∇_θ L_G(ω, θ)                      (one unrolled lower step, η = lower lr)
    v   = ∇_θ' L_F(ω, θ')
    ε   = δ / ‖v‖
    h   = ∇_ω L_F(ω, θ') − η [∇_ω L_G(ω, θ + εv) − ∇_ω L_G(ω, θ − εv)] / (2ε)

The bracket approximates ∇²_{ωθ} L_G · v, the term an exact differentiation through the unrolled
step would give. Perturbations are applied to θ (not θ') in place and undone on exit.
"""

from __future__ import annotations

from typing import Any

import torch

from bgl.solvers.problem import (
    BilevelProblem,
    Grads,
    Reduce,
    grad_disabled,
    grads,
    identity_reduce,
    norm,
    preserved_state,
    set_params,
)


def tbgl_hypergradient(
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    *,
    lower_lr: float,
    delta: float,
    reduce: Reduce | None = None,
) -> Grads:
    """Eq. 5 of the paper; one tensor per parameter of `problem.upper`."""
    if lower_lr < 0 or delta <= 0:
        raise ValueError(f"need lower_lr >= 0 and delta > 0, got {lower_lr=}, {delta=}")
    reduce = reduce or identity_reduce
    upper, lower = problem.upper, problem.lower
    omega, theta = problem.upper_params(), problem.lower_params()
    n = len(omega)
    with preserved_state(upper, lower):
        theta0 = [p.detach().clone() for p in theta]
        with grad_disabled(omega):
            g_lower = reduce(grads(problem.lower_loss(upper, lower, train_batch), theta))
        set_params(theta, [t - lower_lr * g for t, g in zip(theta0, g_lower)])
        del g_lower

        g = reduce(grads(problem.upper_loss(upper, lower, val_batch), omega + theta))
        hyper, v = g[:n], g[n:]
        v_norm = norm(v)
        if lower_lr == 0 or v_norm == 0 or not torch.isfinite(v_norm):
            return hyper  # no coupling term: v = 0 (or η = 0) makes the correction vanish
        eps = delta / v_norm

        with grad_disabled(theta):
            set_params(theta, [t + eps * vi for t, vi in zip(theta0, v)])
            g_plus = reduce(grads(problem.lower_loss(upper, lower, train_batch), omega))
            set_params(theta, [t - eps * vi for t, vi in zip(theta0, v)])
            g_minus = reduce(grads(problem.lower_loss(upper, lower, train_batch), omega))
        scale = lower_lr / (2 * eps)
        return [h - scale * (gp - gm) for h, gp, gm in zip(hyper, g_plus, g_minus)]
