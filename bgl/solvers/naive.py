"""Naive (first-order, joint end-to-end) baseline: ω follows ∇_ω L_F and ignores how θ
depends on ω. θ follows ∇_θ L_G in the training loop like every solver."""

from __future__ import annotations

from typing import Any

from bgl.solvers.health import combine_terms
from bgl.solvers.problem import (
    BilevelProblem,
    Grads,
    Reduce,
    grad_disabled,
    grads,
    identity_reduce,
    preserved_state,
)


def naive_hypergradient(
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    *,
    reduce: Reduce | None = None,
    diagnostics: dict[str, float] | None = None,
) -> Grads:
    """∇_ω L_F(ω, θ) on the validation batch; `train_batch` is unused (kept for one signature).

    `diagnostics`, when given, receives ‖∇ωL_F‖ and a coupling ratio of exactly 0."""
    del train_batch
    reduce = reduce or identity_reduce
    omega = problem.upper_params()
    lower_frozen = grad_disabled(problem.lower_params())
    with lower_frozen, preserved_state(problem.upper, problem.lower, params=False):
        loss = problem.upper_loss(problem.upper, problem.lower, val_batch)
        direct = grads(loss, omega)
    if diagnostics is not None:
        return combine_terms(direct, None, reduce, diagnostics)
    return reduce(direct)
