"""Naive (first-order, alternating) baseline: ω follows ∇_ω L_F and ignores how θ depends on ω.
θ follows ∇_θ L_G in the training loop like every solver (k lower steps per upper step). The
paper's Table 3 "naive", end-to-end learning, is `bgl.solvers.joint`."""

from __future__ import annotations

from typing import Any

from bgl.solvers.health import combine_terms
from bgl.solvers.problem import BilevelProblem, Grads, Reduce, identity_reduce, upper_gradient


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
    direct = upper_gradient(problem, problem.upper_loss, val_batch)
    if diagnostics is not None:
        return combine_terms(direct, None, reduce, diagnostics)
    return reduce(direct)
