"""Reference implicit hypergradient: the yardstick the approximate solvers are measured against.

    θ*  = argmin_θ L_G(ω, θ)                              (solved to a tolerance, Newton-CG)
    u   = [∇²_{θθ} L_G(ω, θ*)]^-1 ∇_θ L_F(ω, θ*)          (conjugate gradient, exact HVPs)
    h   = ∇_ω L_F(ω, θ*) − ∇²_{ωθ} L_G(ω, θ*) u

Every second-order product is exact (double backward through autograd), so the only errors are
the two tolerances, which the result reports. Meaningful only where the implicit function theorem
holds: the lower level must have a unique, strongly convex minimum near θ* (positive definite
∇²_{θθ} L_G), otherwise CG has nothing to converge to. It is slow (a Newton solve and a CG solve
per call) and meant for small problems, in float64.

Unlike the training solvers this one leaves the problem's parameters as it found them: θ* is
returned, not written into the lower model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bgl.solvers import linear
from bgl.solvers.problem import (
    BilevelProblem,
    Grads,
    dot,
    grad_disabled,
    grads,
    preserved_state,
    set_params,
)

Vector = list[torch.Tensor]


@dataclass
class ReferenceResult:
    """The hypergradient and how well its two inner problems were solved."""

    hypergradient: Grads
    theta_star: Vector
    lower_grad_norm: float  # ‖∇_θ L_G(ω, θ*)‖ after the lower solve
    lower_iterations: int
    cg_residual: float  # ‖H u − ∇_θ L_F‖ / ‖∇_θ L_F‖
    cg_iterations: int


def hessian_vector_product(
    loss_fn: Callable[[], torch.Tensor], theta: Vector, v: Vector, *, wrt: Vector | None = None
) -> Vector:
    """∇_wrt (∇_θ L · v): ∇²_{θθ} L v for wrt = θ (default), ∇²_{ωθ} L v for wrt = ω."""
    loss = loss_fn()
    g = torch.autograd.grad(loss, theta, create_graph=True)
    targets = theta if wrt is None else wrt
    return grads(dot(g, [x.detach() for x in v]), targets)


def conjugate_gradient(
    matvec: Callable[[Vector], Vector], b: Vector, *, tol: float, max_iter: int
) -> tuple[Vector, float, int]:
    """Solve A x = b for symmetric positive definite A; (x, relative residual, iterations).
    An indefinite A is an error here: the reference needs a strongly convex lower level."""
    try:
        solve = linear.conjugate_gradient(
            matvec, b, max_iter=max_iter, tol=tol, raise_on_nonpositive=True
        )
    except linear.NonPositiveCurvature as exc:
        raise ValueError(
            f"the lower-level Hessian is not positive definite at θ* ({exc}); the reference "
            "needs a strongly convex lower level"
        ) from None
    return solve.solution, solve.residual, solve.products


def solve_lower(
    problem: BilevelProblem,
    train_batch: Any,
    *,
    tol: float = 1e-10,
    max_iter: int = 100,
    cg_tol: float = 1e-12,
    cg_max_iter: int = 500,
) -> tuple[int, float]:
    """Newton-CG with Armijo backtracking on L_G over θ, in place; (iterations, final ‖∇_θ L_G‖).

    Newton converges quadratically near a strongly convex minimum, which is what makes a tight
    tolerance (1e-10 in float64) reachable in a handful of steps. ω is frozen throughout, so no
    pass builds a graph through the generative block.
    """
    with grad_disabled(problem.upper_params()):
        return _newton(problem, train_batch, tol, max_iter, cg_tol, cg_max_iter)


def _newton(
    problem: BilevelProblem,
    train_batch: Any,
    tol: float,
    max_iter: int,
    cg_tol: float,
    cg_max_iter: int,
) -> tuple[int, float]:
    theta = problem.lower_params()

    def loss() -> torch.Tensor:
        return problem.lower_loss(problem.upper, problem.lower, train_batch)

    g_norm = float("inf")
    for it in range(max_iter + 1):
        value = loss()
        g = grads(value, theta)
        value = float(value.detach())
        g_norm = float(dot(g, g).sqrt())
        if g_norm <= tol or it == max_iter:
            return it, g_norm
        step, _, _ = conjugate_gradient(
            lambda v: hessian_vector_product(loss, theta, v), g, tol=cg_tol, max_iter=cg_max_iter
        )
        start = [p.detach().clone() for p in theta]
        slope = float(dot(g, step))  # directional derivative along −step is −slope < 0
        t = 1.0
        while True:
            set_params(theta, [s - t * d for s, d in zip(start, step)])
            with torch.no_grad():
                trial = float(loss())
            if trial <= value - 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
    return max_iter, g_norm


def reference_hypergradient(
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    *,
    lower_tol: float = 1e-10,
    lower_max_iter: int = 100,
    cg_tol: float = 1e-12,
    cg_max_iter: int = 1000,
) -> ReferenceResult:
    """Exact implicit hypergradient at the (numerically) exact lower-level solution θ*(ω)."""
    upper, lower = problem.upper, problem.lower
    omega, theta = problem.upper_params(), problem.lower_params()

    def lower_loss() -> torch.Tensor:
        return problem.lower_loss(upper, lower, train_batch)

    with preserved_state(upper, lower):
        iters, g_norm = solve_lower(
            problem, train_batch, tol=lower_tol, max_iter=lower_max_iter, cg_tol=cg_tol
        )
        theta_star = [p.detach().clone() for p in theta]
        g_f = grads(problem.upper_loss(upper, lower, val_batch), omega + theta)
        f_omega, f_theta = g_f[: len(omega)], g_f[len(omega) :]
        with grad_disabled(omega):  # θθ products need no graph through the generative block
            u, residual, cg_iters = conjugate_gradient(
                lambda v: hessian_vector_product(lower_loss, theta, v),
                f_theta,
                tol=cg_tol,
                max_iter=cg_max_iter,
            )
        cross = hessian_vector_product(lower_loss, theta, u, wrt=omega)
    hyper = [f - c for f, c in zip(f_omega, cross)]
    return ReferenceResult(hyper, theta_star, g_norm, iters, residual, cg_iters)
