"""Matrix-free linear solvers on parameter-shaped vectors: conjugate gradients and a truncated
Neumann series, for A u = b with A given only as a product `matvec(v) = A v` (a Hessian-vector
or Gauss-Newton-vector product)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from bgl.solvers.problem import dot

Vector = list[torch.Tensor]
MatVec = Callable[[Vector], Vector]


class LinearSolve(NamedTuple):
    """The approximate solution and what it cost: products of A, final relative residual
    (‖A u − b‖ / ‖b‖, or nan where the solver never formed it), and why it stopped."""

    solution: Vector
    products: int
    residual: float
    stop: str  # converged | iterations | nonpositive curvature


class NonPositiveCurvature(ValueError):
    """CG met a direction p with pᵀAp <= 0: A is not positive definite."""


def conjugate_gradient(
    matvec: MatVec,
    b: Vector,
    *,
    max_iter: int,
    tol: float = 0.0,
    raise_on_nonpositive: bool = False,
) -> LinearSolve:
    """CG from u = 0 for symmetric A, at most `max_iter` products, stopping at ‖r‖ <= tol·‖b‖.

    A direction of non-positive curvature (A indefinite, as the exact Hessian of a non-convex G
    can be) ends the solve with the iterate reached so far (truncated-Newton practice), or raises
    `NonPositiveCurvature` with `raise_on_nonpositive`.
    """
    u = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    b_norm = float(dot(b, b).sqrt())
    if b_norm == 0:
        return LinearSolve(u, 0, 0.0, "converged")
    rr = dot(r, r)
    products, stop = 0, "iterations"
    while products < max_iter:
        ap = matvec(p)
        products += 1
        curvature = dot(p, ap)
        if curvature <= 0:
            if raise_on_nonpositive:
                raise NonPositiveCurvature(
                    f"the matrix is not positive definite (CG met curvature {float(curvature):.3g})"
                )
            stop = "nonpositive curvature"
            break
        alpha = rr / curvature
        u = [ui + alpha * pi for ui, pi in zip(u, p)]
        r = [ri - alpha * api for ri, api in zip(r, ap)]
        rr_new = dot(r, r)
        if float(rr_new.sqrt()) <= tol * b_norm:
            rr, stop = rr_new, "converged"
            break
        p = [ri + (rr_new / rr) * pi for ri, pi in zip(r, p)]
        rr = rr_new
    return LinearSolve(u, products, float(rr.sqrt()) / b_norm, stop)


def neumann(matvec: MatVec, b: Vector, *, iterations: int, step: float) -> LinearSolve:
    """u = step · Σ_{j=0..iterations} (I − step·A)^j b, the truncated Neumann series of A⁻¹ b.

    Converges to A⁻¹ b when 0 < step < 2 / λ_max(A) and A is positive definite; `iterations`
    products of A. The residual is not formed (it would cost one more product).
    """
    term = [t.clone() for t in b]
    total = [t.clone() for t in b]
    for _ in range(iterations):
        at = matvec(term)
        term = [t - step * a for t, a in zip(term, at)]
        total = [s + t for s, t in zip(total, term)]
    return LinearSolve([step * s for s in total], iterations, float("nan"), "iterations")
