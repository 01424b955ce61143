"""TBGL: truncated bilevel gradient with a finite-difference Hessian-vector product (Eq. 5).

    θ'  = θ − η ∇_θ L_G(ω, θ)                      (one unrolled lower step, η = lower lr)
    v   = ∇_θ' L_F(ω, θ')
    ε   = δ / ‖v‖
    h   = ∇_ω L_F(ω, θ') − η [∇_ω L_G(ω, θ + εv) − ∇_ω L_G(ω, θ − εv)] / (2ε)

The bracket approximates ∇²_{ωθ} L_G · v, the term an exact differentiation through the unrolled
step would give. Perturbations are applied to θ (not θ') in place and undone on exit.

Reading of Eq. 5: the paper prints θ± = θ ± δ ∇_θ L_G, which would difference ∇_ω L_G along the
lower gradient and approximate ∇²_{ωθ} L_G ∇_θ L_G, not the chain-rule term ∇²_{ωθ} L_G v. bgl
perturbs along v = ∇_θ' L_F, as DARTS (Liu et al. 2019, Eq. 8) does; the test against autograd
through the unrolled step pins this reading. η is the *scheduled* lower learning rate of the
step, while the loop's real lower step is taken by the configured optimiser (Adam by default):
the unrolled step models plain SGD, exactly so only with `optim.optimizer: sgd` (momentum 0).

Passes: θ' comes from a pass with ω frozen (F's forward builds no graph); v and ∇_ω L_F(ω, θ')
from one pass on the validation batch. With `problem.upper_input` set, the two finite-difference
terms share one F forward on the training batch: G runs at θ ± εv on the same F output, their
gradients at that output are subtracted, and F's backward runs once on the difference (linearity
of the vector-Jacobian product), accumulated into ∇_ω L_F in place. Per upper step that is three
F forwards and two F backwards, with one ω-sized gradient alive. `reduce` is linear, so the ω
part is reduced once, at the end; the θ-sized gradients are reduced before they are used.
"""

from __future__ import annotations

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


def tbgl_hypergradient(
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    *,
    lower_lr: float,
    delta: float,
    reduce: Reduce | None = None,
    diagnostics: dict[str, float] | None = None,
) -> Grads:
    """Eq. 5 of the paper; one tensor per parameter of `problem.upper`.

    `diagnostics`, when given, receives the lower level's health from the two θ-gradients this
    solver has: ∇_θ L_G at θ and v = ∇_θ' L_F at the unrolled θ'.
    """
    if lower_lr < 0 or delta <= 0:
        raise ValueError(f"need lower_lr >= 0 and delta > 0, got {lower_lr=}, {delta=}")
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
            theta_prime = [t - lower_lr * g for t, g in zip(theta0, g_theta)]
            del step
        set_params(theta, theta_prime)
        upper_out = upper_output(problem, val_batch)
        _, v, cotangent = loss_pass(problem, problem.upper_loss, val_batch, upper_out)
        v = reduce(v)
        if diagnostics is not None:
            diagnostics.update(lower_health(v, g_theta))
        del g_theta
        hyper = omega_grads(problem, upper_out, cotangent)  # ∇_ω L_F(ω, θ')
        del upper_out, cotangent
        v_norm = norm(v)
        if lower_lr == 0 or v_norm == 0 or not torch.isfinite(v_norm):  # no coupling term
            return (
                reduce(hyper)
                if diagnostics is None
                else combine_terms(hyper, None, reduce, diagnostics)
            )
        eps = delta / v_norm
        with grad_disabled(theta):
            upper_out = upper_output(problem, train_batch)  # shared by both difference passes
            lower_loss = problem.lower_loss
            set_params(theta, [t + eps * vi for t, vi in zip(theta0, v)])
            plus = loss_pass(problem, lower_loss, train_batch, upper_out, theta=False).upper_out
            set_params(theta, [t - eps * vi for t, vi in zip(theta0, v)])
            minus = loss_pass(problem, lower_loss, train_batch, upper_out, theta=False).upper_out
            diff = [a.sub_(b) for a, b in zip(plus, minus)]
            del plus, minus
            scale = -lower_lr / (2 * eps)
            if diagnostics is None:
                return reduce(omega_grads(problem, upper_out, diff, scale=scale, into=hyper))
            coupling = omega_grads(problem, upper_out, diff, scale=scale)
        return combine_terms(hyper, coupling, reduce, diagnostics)
