"""Joint (end-to-end) learning, the paper's "naive" of Table 3: one loss on the training batch
(the problem's `end_to_end_loss`: every bgl task's warm-start objective, so a joint run continues
its warm start), differentiated for both levels at once; ω and θ each take one optimiser step
from the same backward pass (the loop's `joint` branch). No validation objective steers ω.

bgl's `naive` is different: first-order *alternating* learning, where ω follows ∇ωL_F on the
validation batch. The function below is the ω part of the joint step, so the joint method can
be called, benchmarked and all-reduced like every solver.
"""

from __future__ import annotations

from typing import Any

from bgl.solvers.health import combine_terms
from bgl.solvers.problem import BilevelProblem, Grads, Reduce, identity_reduce, upper_gradient


def joint_gradient(
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    *,
    reduce: Reduce | None = None,
    diagnostics: dict[str, float] | None = None,
) -> Grads:
    """∇ω of the end-to-end loss (`problem.end_to_end_loss`) on the training batch.

    `diagnostics`, when given, receives ‖∇ωL_F‖ on the validation batch and the ratio
    ‖h − ∇ωL_F‖ / ‖∇ωL_F‖: how far end-to-end learning moves ω from the upper objective's own
    direction (one more pass of F and G, only when asked for)."""
    reduce = reduce or identity_reduce
    h = upper_gradient(problem, problem.end_to_end_loss, train_batch)
    if diagnostics is None:
        return reduce(h)
    direct = upper_gradient(problem, problem.upper_loss, val_batch)
    return combine_terms(direct, [a - b for a, b in zip(h, direct)], reduce, diagnostics)
