"""IBGL: implicit bilevel gradient with a Gauss-Newton outer-product approximation (Eq. 9).

The implicit gradient ∇_ω L_F − ∇²_{ωθ} L_G (∇²_{θθ} L_G)^-1 ∇_θ L_F, with both second-order
blocks replaced by outer products of first-order gradients (g_θ = ∇_θ L_G, ∇²_{θθ} ≈ g_θ g_θᵀ,
∇²_{ωθ} ≈ ∇_ω L_G g_θᵀ), collapses to

    h = ∇_ω L_F − [(∇_θ L_F · ∇_θ L_G) / (∇_θ L_G · ∇_θ L_G + eps)] ∇_ω L_G

evaluated at the current θ (after the k lower steps). The coefficient is a detached scalar; eps
keeps it finite when the lower level is exactly stationary. Both rank-one models vanish at θ*, so
the coefficient grows like 1/‖∇_θ L_G‖ as the lower level converges (its sign set by how θ
approaches θ*): `bgl.solvers.health` records it, and `relative_damping` bounds it. AID
(`bgl.solvers.aid`) is the convergent alternative.

Cost: one full pass on each loss (one F forward fewer when the loop hands over F's output on
the training batch). ∇_ω L_G is formed first and scaled by −coefficient once the L_F pass gives
∇_θ L_F; that pass's ω part (F's backward) is then accumulated into it in place, so one ω-sized
gradient is alive at a time. `reduce` is linear, so the ω part
is reduced once, after combining; the θ parts are reduced before the coefficient is formed.
"""

from __future__ import annotations

from typing import Any

import torch

from bgl.solvers.health import combine_terms, ibgl_coefficient, lower_health
from bgl.solvers.problem import (
    BilevelProblem,
    Grads,
    Reduce,
    identity_reduce,
    loss_pass,
    omega_grads,
    preserved_state,
    upper_output,
)


def ibgl_hypergradient(
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    *,
    eps: float = 1e-12,
    relative_damping: float = 0.0,
    reduce: Reduce | None = None,
    train_upper_out: list[torch.Tensor] | None = None,
    diagnostics: dict[str, float] | None = None,
) -> Grads:
    """Eq. 9 of the paper; one tensor per parameter of `problem.upper`.

    `relative_damping` ρ (0: the paper's Eq. 9) bounds the coefficient by 1/(2√ρ); see
    `bgl.solvers.health`. `train_upper_out`: F's output on `train_batch` at the current ω, with
    its graph, from an earlier forward (the training loop's last lower step keeps it): saves one
    F forward. Only for a problem with `upper_input`. `diagnostics`, when given, receives the
    lower level's health (‖∇θL_G‖, cos, the coefficient) and the coupling ratio (then the
    coupling term −c∇ωL_G and ∇ωL_F are kept apart until both are reduced).
    """
    if train_upper_out is not None and problem.upper_input is None:
        raise ValueError("train_upper_out needs a BilevelProblem with upper_input")
    if eps < 0 or relative_damping < 0:
        raise ValueError(f"eps and relative_damping must be >= 0, got {eps}, {relative_damping}")
    reduce = reduce or identity_reduce
    with preserved_state(problem.upper, problem.lower, params=False):
        # L_G first, so F's output handed over by the loop's last lower step is freed at once
        upper_out = train_upper_out
        if upper_out is None:
            upper_out = upper_output(problem, train_batch)
        _, g_theta, cotangent = loss_pass(problem, problem.lower_loss, train_batch, upper_out)
        g_theta = reduce(g_theta)
        hyper = omega_grads(problem, upper_out, cotangent)  # ∇_ω L_G, scaled below
        del upper_out, cotangent, train_upper_out
        upper_out = upper_output(problem, val_batch)
        _, f_theta, cotangent = loss_pass(problem, problem.upper_loss, val_batch, upper_out)
        f_theta = reduce(f_theta)
        coef = ibgl_coefficient(f_theta, g_theta, eps=eps, relative_damping=relative_damping)
        for h in hyper:
            h.mul_(-coef)
        if diagnostics is None:
            return reduce(omega_grads(problem, upper_out, cotangent, into=hyper))  # + ∇_ω L_F
        direct = omega_grads(problem, upper_out, cotangent)
    diagnostics.update(lower_health(f_theta, g_theta, eps=eps, relative_damping=relative_damping))
    return combine_terms(direct, hyper, reduce, diagnostics)
