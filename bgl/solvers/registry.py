"""The one list of solvers: what each is called, which `solver.*` keys it reads, whether it
takes k lower steps per upper step, how the loop orders its passes, and default search ranges.

Config validation, the study schema and search space, the training loop, benchmarks and the
CLI all read this module; adding a solver is one module (its hypergradient function) and one
`Solver` entry below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from bgl.solvers.aid import CURVATURES, DAMPING_SCALES, METHODS, aid_hypergradient
from bgl.solvers.ibgl import ibgl_hypergradient
from bgl.solvers.joint import joint_gradient
from bgl.solvers.naive import naive_hypergradient
from bgl.solvers.problem import BilevelProblem, Grads, Reduce
from bgl.solvers.tbgl import UNROLLS, LowerUnroll, tbgl_hypergradient


@dataclass(frozen=True)
class SolverKey:
    """One `solver.<name>` config key: its check and its default search range (a study
    `search.params` spec, used when a study gives `solver.<name>: default`)."""

    name: str
    check: Callable[[Any], bool]
    want: str  # what `check` demands, for the error message
    search: Mapping[str, Any] | None
    doc: str


KEYS: dict[str, SolverKey] = {
    k.name: k
    for k in (
        SolverKey(
            "k",
            lambda v: v >= 1,
            "at least 1",
            {"type": "int", "low": 1, "high": 10},
            "lower steps per upper step",
        ),
        SolverKey(
            "delta",
            lambda v: v > 0,
            "positive",
            {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
            "finite-difference radius: ε = delta / ‖v‖",
        ),
        SolverKey(
            "unroll",
            lambda v: v in UNROLLS,
            f"one of {', '.join(UNROLLS)}",
            {"type": "categorical", "choices": list(UNROLLS)},
            "TBGL: the unrolled lower step: the lower optimiser's own (Adam: preconditioned) "
            "or the paper's plain SGD step at the scheduled rate",
        ),
        SolverKey("eps", lambda v: v >= 0, "non-negative", None, "IBGL's denominator guard"),
        SolverKey(
            "relative_damping",
            lambda v: v >= 0,
            "non-negative",
            {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
            "IBGL: ρ‖∇θL_F‖² added to the denominator, |coefficient| <= 1/(2√ρ)",
        ),
        SolverKey(
            "iterations",
            lambda v: v >= 1,
            "at least 1",
            {"type": "int", "low": 1, "high": 20},
            "AID: curvature products per upper step (CG iterations or Neumann terms)",
        ),
        SolverKey(
            "damping",
            lambda v: v >= 0,
            "non-negative",
            {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
            "AID: Tikhonov λ, solves (H + λI) u = ∇θL_F",
        ),
        SolverKey(
            "damping_scale",
            lambda v: v in DAMPING_SCALES,
            f"one of {', '.join(DAMPING_SCALES)}",
            {"type": "categorical", "choices": list(DAMPING_SCALES)},
            "AID: damping as λ itself, or as a fraction of the curvature along ∇θL_F (rayleigh)",
        ),
        SolverKey(
            "coupling_max",
            lambda v: v >= 0,
            "non-negative",
            None,
            "AID: trust region, the implicit term capped at coupling_max·‖∇ωL_F‖ (0: off)",
        ),
        SolverKey(
            "method",
            lambda v: v in METHODS,
            f"one of {', '.join(METHODS)}",
            {"type": "categorical", "choices": list(METHODS)},
            "AID: the linear solver",
        ),
        SolverKey(
            "curvature",
            lambda v: v in CURVATURES,
            f"one of {', '.join(CURVATURES)}",
            {"type": "categorical", "choices": list(CURVATURES)},
            "AID: exact Hessian products, or Gauss-Newton (PSD) for a non-convex G",
        ),
        SolverKey(
            "neumann_step",
            lambda v: v > 0,
            "positive",
            {"type": "float", "low": 0.01, "high": 1.0, "log": True},
            "AID, method neumann: the series' step α (converges for α < 2/λ_max)",
        ),
    )
}


@dataclass(frozen=True)
class Solver:
    """A hypergradient solver as the rest of bgl sees it.

    `options`: `solver.*` keys passed to `function` as keyword arguments of the same name.
    `context`: what the loop hands over besides them (`lower_lr`, `train_upper_out`: F's output
    on the last training batch with its graph, `lower_unroll`: the lower optimiser's next step
    as a function of the gradient, `diagnostics`: a dict to fill).
    `takes_k`: k lower steps, then the hypergradient at the resulting θ; otherwise one lower
    step, after (`unrolled`: the hypergradient comes from an unrolled step at the current θ,
    DARTS' order) or before the hypergradient. `joint`: no lower step of its own; ω and θ step
    together from one backward pass of the task loss (end-to-end learning).
    """

    name: str
    label: str
    function: Callable[..., Grads]
    summary: str
    options: tuple[str, ...] = ()
    context: tuple[str, ...] = ()
    takes_k: bool = False
    unrolled: bool = False
    joint: bool = False
    colour: str = "tab:gray"  # in plots

    @property
    def keys(self) -> tuple[str, ...]:
        """Every `solver.*` key this solver reads (k included when it takes k steps)."""
        return (("k",) if self.takes_k else ()) + self.options

    def hypergradient(
        self,
        problem: BilevelProblem,
        train_batch: Any,
        val_batch: Any,
        settings: Mapping[str, Any],
        *,
        reduce: Reduce | None = None,
        lower_lr: float | None = None,
        train_upper_out: list[torch.Tensor] | None = None,
        lower_unroll: LowerUnroll | None = None,
        diagnostics: dict[str, float] | None = None,
    ) -> Grads:
        """Call `function` with the options `settings` gives (a `solver` config as a mapping; keys
        this solver does not read are ignored, missing ones take the function's defaults) and the
        context it takes; context it does not take is dropped."""
        unknown = sorted(set(settings) - set(KEYS) - {"name"})
        if unknown:
            raise ValueError(f"unknown solver setting(s) {', '.join(unknown)}")
        if "lower_lr" in self.context and lower_lr is None:
            raise ValueError(f"{self.name} needs the lower learning rate (lower_lr)")
        given = {
            "lower_lr": lower_lr,
            "train_upper_out": train_upper_out,
            "lower_unroll": lower_unroll,
            "diagnostics": diagnostics,
        }
        kwargs = {key: settings[key] for key in self.options if key in settings}
        kwargs.update({c: given[c] for c in self.context})
        return self.function(problem, train_batch, val_batch, reduce=reduce, **kwargs)


SOLVERS: dict[str, Solver] = {
    s.name: s
    for s in (
        Solver(
            "naive",
            "Naive",
            naive_hypergradient,
            "first order, alternating: k lower steps, then ω follows ∇ωL_F (θ's dependence on ω "
            "ignored)",
            context=("diagnostics",),
            takes_k=True,
            colour="tab:gray",
        ),
        Solver(
            "tbgl",
            "TBGL",
            tbgl_hypergradient,
            "Eq. 5: one unrolled lower step (the lower optimiser's own), finite-difference "
            "∇²ωθ L_G P v",
            options=("delta", "unroll"),
            context=("lower_lr", "lower_unroll", "diagnostics"),
            unrolled=True,
            colour="tab:blue",
        ),
        Solver(
            "ibgl",
            "IBGL",
            ibgl_hypergradient,
            "Eq. 9: k lower steps, implicit gradient with Gauss-Newton outer products",
            options=("eps", "relative_damping"),
            context=("train_upper_out", "diagnostics"),
            takes_k=True,
            colour="tab:orange",
        ),
        Solver(
            "aid",
            "AID",
            aid_hypergradient,
            "k lower steps, implicit gradient with a CG/Neumann solve on exact curvature products",
            options=(
                "method",
                "iterations",
                "damping",
                "damping_scale",
                "coupling_max",
                "curvature",
                "neumann_step",
            ),  # fmt: skip
            context=("train_upper_out", "diagnostics"),
            takes_k=True,
            colour="tab:green",
        ),
        Solver(
            "joint",
            "Joint",
            joint_gradient,
            "end-to-end (the paper's Table 3 naive): one task loss, ω and θ step together",
            context=("diagnostics",),
            joint=True,
            colour="tab:purple",
        ),
    )
}

SOLVER_NAMES = tuple(SOLVERS)
#: the solvers that approximate a hypergradient (all but end-to-end learning): what the
#: fidelity and cost benchmarks measure by default
BILEVEL_SOLVER_NAMES = tuple(s.name for s in SOLVERS.values() if not s.joint)


def get_solver(name: str) -> Solver:
    """The registry entry; an unknown name lists the known ones."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(
            f"unknown solver {name!r}; choose one of {', '.join(SOLVER_NAMES)}"
        ) from None


def hypergradient(
    name: str,
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    *,
    reduce: Reduce | None = None,
    lower_lr: float | None = None,
    train_upper_out: list[torch.Tensor] | None = None,
    lower_unroll: LowerUnroll | None = None,
    diagnostics: dict[str, float] | None = None,
    **settings: Any,
) -> Grads:
    """Any solver by name, with `solver.*` settings as keywords (those it does not read are
    ignored): `hypergradient("aid", problem, train, val, iterations=5)`."""
    return get_solver(name).hypergradient(
        problem,
        train_batch,
        val_batch,
        settings,
        reduce=reduce,
        lower_lr=lower_lr,
        train_upper_out=train_upper_out,
        lower_unroll=lower_unroll,
        diagnostics=diagnostics,
    )


def solvers_using(key: str) -> list[str]:
    """The solvers that read `solver.<key>` (a study samples it only for them)."""
    return [s.name for s in SOLVERS.values() if key in s.keys]


def check_settings(name: str, settings: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first (key, requirement) that `settings` violates, or None."""
    solver = get_solver(name)
    for key in KEYS.values():
        if key.name in settings and not key.check(settings[key.name]):
            return key.name, key.want
    if not solver.takes_k and settings.get("k", 1) != 1:
        takes = ", ".join(solvers_using("k"))
        return "k", f"1 unless solver.name takes k lower steps ({takes})"
    return None
