"""TBGL: truncated bilevel gradient with a finite-difference Hessian-vector product (Eq. 5).

    θ'  = θ − η ∇_θ L_G(ω, θ)                      (one unrolled lower step, η = lower lr)
    v   = ∇_θ' L_F(ω, θ')
    ε   = δ / ‖v‖
    h   = ∇_ω L_F(ω, θ') − η [∇_ω L_G(ω, θ + εv) − ∇_ω L_G(ω, θ − εv)] / (2ε)

The bracket approximates ∇²_{ωθ} L_G · v, the term an exact differentiation through the unrolled
step would give. Perturbations are applied to θ (not θ') in place and undone on exit.

Memory: ω (the generative block) is the large parameter set, so the passes are ordered to hold
at most one ω-sized gradient while a pass builds its graph: v comes from a pass with ω frozen
(no graph through F's weights), then the two finite-difference passes (their difference formed at
once), then ∇_ω L_F(ω, θ'). `reduce` is linear, so the ω part is reduced once, at the end; the
θ-sized gradients are reduced before they are used.
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

    def lower_loss() -> torch.Tensor:
        return problem.lower_loss(upper, lower, train_batch)

    def upper_loss() -> torch.Tensor:
        return problem.upper_loss(upper, lower, val_batch)

    # only θ is perturbed: restore θ and every buffer, but never copy the large ω
    with preserved_state(upper, params=False), preserved_state(lower):
        theta0 = [p.detach().clone() for p in theta]
        with grad_disabled(omega):
            g_lower = reduce(grads(lower_loss(), theta))
            theta_prime = [t - lower_lr * g for t, g in zip(theta0, g_lower)]
            del g_lower
            set_params(theta, theta_prime)
            v = reduce(grads(upper_loss(), theta))
        v_norm = norm(v)
        with grad_disabled(theta):
            if lower_lr == 0 or v_norm == 0 or not torch.isfinite(v_norm):
                return reduce(grads(upper_loss(), omega))  # v = 0 or η = 0: no coupling term
            eps = delta / v_norm
            set_params(theta, [t + eps * vi for t, vi in zip(theta0, v)])
            diff = grads(lower_loss(), omega)
            set_params(theta, [t - eps * vi for t, vi in zip(theta0, v)])
            for d, g in zip(diff, grads(lower_loss(), omega)):
                d.sub_(g)
            set_params(theta, theta_prime)
            hyper = grads(upper_loss(), omega)
        scale = lower_lr / (2 * eps)
        for h, d in zip(hyper, diff):
            h.sub_(d.mul_(scale))
        return reduce(hyper)
