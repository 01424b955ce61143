"""IBGL: implicit bilevel gradient with a Gauss-Newton outer-product approximation (Eq. 9).

The implicit gradient ∇_ω L_F − ∇²_{ωθ} L_G (∇²_{θθ} L_G)^-1 ∇_θ L_F, with both second-order
blocks replaced by outer products of first-order gradients (g_θ = ∇_θ L_G, ∇²_{θθ} ≈ g_θ g_θᵀ,
∇²_{ωθ} ≈ ∇_ω L_G g_θᵀ), collapses to

    h = ∇_ω L_F − [(∇_θ L_F · ∇_θ L_G) / (∇_θ L_G · ∇_θ L_G + eps)] ∇_ω L_G

evaluated at the current θ (after the k lower steps). The coefficient is a detached scalar; eps
keeps it finite when the lower level is exactly stationary.

Cost: one full pass on each loss. `reduce` is linear, so the ω part is reduced once, after
combining; the θ parts are reduced before the coefficient is formed.
"""

from __future__ import annotations

from typing import Any

from bgl.solvers.problem import (
    BilevelProblem,
    Grads,
    Reduce,
    dot,
    grads,
    identity_reduce,
    preserved_state,
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
    upper, lower = problem.upper, problem.lower
    omega, theta = problem.upper_params(), problem.lower_params()
    n = len(omega)
    with preserved_state(upper, lower, params=False):
        g_f = grads(problem.upper_loss(upper, lower, val_batch), omega + theta)
        f_omega, f_theta = g_f[:n], reduce(g_f[n:])
        del g_f
        g_g = grads(problem.lower_loss(upper, lower, train_batch), omega + theta)
    g_theta = reduce(g_g[n:])
    coef = (dot(f_theta, g_theta) / (dot(g_theta, g_theta) + eps)).detach()
    for f, g in zip(f_omega, g_g[:n]):
        f.sub_(g.mul_(coef))
    return reduce(f_omega)
