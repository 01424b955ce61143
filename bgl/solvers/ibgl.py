"""IBGL: implicit bilevel gradient with a Gauss-Newton outer-product approximation (Eq. 9).

The implicit gradient ∇_ω L_F − ∇²_{ωθ} L_G (∇²_{θθ} L_G)^-1 ∇_θ L_F, with both second-order
blocks replaced by outer products of first-order gradients (g_θ = ∇_θ L_G, ∇²_{θθ} ≈ g_θ g_θᵀ,
∇²_{ωθ} ≈ ∇_ω L_G g_θᵀ), collapses to

    h = ∇_ω L_F − [(∇_θ L_F · ∇_θ L_G) / (∇_θ L_G · ∇_θ L_G + eps)] ∇_ω L_G

evaluated at the current θ (after the k lower steps). The coefficient is a detached scalar; eps
keeps it finite when the lower level is exactly stationary.

Cost: one full pass on each loss. The L_F pass's ω-gradient is formed first; the L_G pass's θ part
gives the coefficient, and its ω part (F's backward, scaled by −coefficient) is accumulated into
the first in place, so one ω-sized gradient is alive at a time. `reduce` is linear, so the ω part
is reduced once, after combining; the θ parts are reduced before the coefficient is formed.
"""

from __future__ import annotations

from typing import Any

from bgl.solvers.problem import (
    BilevelProblem,
    Grads,
    Reduce,
    dot,
    identity_reduce,
    loss_pass,
    omega_grads,
    preserved_state,
    upper_head,
)


def ibgl_hypergradient(
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    *,
    eps: float = 1e-12,
    reduce: Reduce | None = None,
) -> Grads:
    """Eq. 9 of the paper; one tensor per parameter of `problem.upper`."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    reduce = reduce or identity_reduce
    with preserved_state(problem.upper, problem.lower, params=False):
        head = upper_head(problem, val_batch)
        f_theta, cotangent = loss_pass(problem, problem.upper_loss, val_batch, head)
        f_theta = reduce(f_theta)
        hyper = omega_grads(problem, head, cotangent)  # ∇_ω L_F
        del head, cotangent
        head = upper_head(problem, train_batch)
        g_theta, cotangent = loss_pass(problem, problem.lower_loss, train_batch, head)
        g_theta = reduce(g_theta)
        coef = (dot(f_theta, g_theta) / (dot(g_theta, g_theta) + eps)).detach()
        hyper = omega_grads(problem, head, cotangent, scale=-coef, into=hyper)
    return reduce(hyper)
