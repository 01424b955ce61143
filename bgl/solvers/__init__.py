"""Bilevel hypergradients: naive (first order), TBGL (Eq. 5), IBGL (Eq. 9) and AID (implicit,
iterative solve), declared once in `bgl.solvers.registry`.

Pure functions of a `BilevelProblem` and two batches; they know nothing of the training loop,
devices or Ray. Multi-worker runs pass a `reduce` that all-reduces (averages) gradient lists.
"""

from __future__ import annotations

from bgl.solvers.aid import aid_hypergradient
from bgl.solvers.health import (
    COUPLING_KEYS,
    HEALTH_KEYS,
    combine_terms,
    ibgl_coefficient,
    lower_health,
)
from bgl.solvers.ibgl import ibgl_hypergradient
from bgl.solvers.naive import naive_hypergradient
from bgl.solvers.problem import BilevelProblem, Grads, LossFn, Reduce, identity_reduce
from bgl.solvers.registry import (
    BILEVEL_SOLVER_NAMES,
    KEYS,
    SOLVER_NAMES,
    SOLVERS,
    Solver,
    SolverKey,
    check_settings,
    get_solver,
    hypergradient,
    solvers_using,
)
from bgl.solvers.tbgl import tbgl_hypergradient

__all__ = [
    "BILEVEL_SOLVER_NAMES",
    "COUPLING_KEYS",
    "HEALTH_KEYS",
    "KEYS",
    "SOLVERS",
    "SOLVER_NAMES",
    "BilevelProblem",
    "Grads",
    "LossFn",
    "Reduce",
    "Solver",
    "SolverKey",
    "aid_hypergradient",
    "check_settings",
    "combine_terms",
    "get_solver",
    "hypergradient",
    "ibgl_coefficient",
    "ibgl_hypergradient",
    "identity_reduce",
    "lower_health",
    "naive_hypergradient",
    "solvers_using",
    "tbgl_hypergradient",
]
