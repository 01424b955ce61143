"""AID: approximate implicit differentiation, the implicit gradient with an iterative solve.

    u = (∇²_{θθ} L_G + λ I)^-1 ∇_θ L_F        (CG or a truncated Neumann series, matrix-free)
    h = ∇_ω L_F − ∇_ω (∇_θ L_G · u)

at the current θ (after the loop's k lower steps). Unlike Eq. 9 (IBGL), whose rank-one models of
both second-order blocks vanish at θ* and make its coefficient blow up as the lower level
converges, AID uses exact Hessian-vector products, so its error falls with the inner iterations
and with ‖θ − θ*‖ (Pedregosa 2016, Grazzi et al. 2020).

`curvature="gauss_newton"` replaces ∇²_{θθ} L_G by Jᵀ ∇²ℓ J (J = ∂G's outputs/∂θ, ℓ the criterion
on them; needs `problem.lower_prediction`/`lower_criterion`): positive semi-definite whenever ℓ is
convex in G's outputs, which keeps CG well posed for a non-convex G (DSFD, DeepLabV3+). The mixed
term ∇_ω(∇_θ L_G · u) is always exact.

Passes: one on L_F (∇_θ L_F and ∇_ω L_F), one on L_G with a double-backward graph; every product
reuses that graph. With `problem.upper_input` set, the graph starts at F's output on the training
batch (a detached leaf), so θθ products never touch F; the mixed term is a gradient at that
output, and F's backward runs once at the end, accumulated into ∇_ω L_F in place. `reduce` is
linear: every θ-sized product is reduced (the products of the averaged Hessian), the ω part once.
"""

from __future__ import annotations

from typing import Any

import torch

from bgl.solvers.health import combine_terms, lower_health
from bgl.solvers.linear import LinearSolve, MatVec, conjugate_gradient, neumann
from bgl.solvers.problem import (
    BilevelProblem,
    Grads,
    Pinned,
    Reduce,
    dot,
    grads,
    identity_reduce,
    loss_pass,
    omega_grads,
    preserved_state,
    upper_output,
)

METHODS = ("cg", "neumann")
CURVATURES = ("hessian", "gauss_newton")
#: how `damping` is read: as λ itself, or as a fraction of the curvature it regularises (λ =
#: damping · ρ, ρ the Rayleigh quotient fᵀHf / fᵀf along f = ∇θL_F, one more product per step)
DAMPING_SCALES = ("absolute", "rayleigh")


def aid_hypergradient(
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    *,
    method: str = "cg",
    iterations: int = 10,
    damping: float = 0.0,
    damping_scale: str = "absolute",
    coupling_max: float = 0.0,
    curvature: str = "hessian",
    neumann_step: float = 1.0,
    reduce: Reduce | None = None,
    train_upper_out: list[torch.Tensor] | None = None,
    diagnostics: dict[str, float] | None = None,
) -> Grads:
    """The implicit hypergradient with `iterations` curvature products; one tensor per parameter
    of `problem.upper`.

    `damping` λ >= 0 solves (H + λI) u = ∇_θ L_F (Tikhonov; needed where H is singular, e.g.
    Gauss-Newton of an L1 criterion). With `damping_scale="rayleigh"` λ = damping · |ρ|, ρ the
    curvature along ∇_θ L_F, so `damping` is a fraction of the curvature it regularises and the
    implicit term, not the damping, is in charge (an absolute λ = 1 where ρ ≈ 0.76 mostly
    replaces H); the diagnostics then hold `aid_rayleigh` and the `aid_damping` used.
    `coupling_max` κ > 0 caps the implicit term at κ‖∇_ω L_F‖ (a trust region; 0: off; see
    `combine_terms`).
    `neumann_step` α: u = α Σ_j (I − α(H + λI))^j ∇_θ L_F,
    convergent for 0 < α < 2 / λ_max. `train_upper_out`: F's output on `train_batch` with its
    graph, from the loop's last lower step. `diagnostics`, when given, receives the lower
    level's health (see `bgl.solvers.health`) and the solve's residual and products.
    """
    _check(problem, method, iterations, damping, curvature, neumann_step, train_upper_out)
    if coupling_max < 0:
        raise ValueError(f"coupling_max must be >= 0, got {coupling_max}")
    if damping_scale not in DAMPING_SCALES:
        raise ValueError(
            f"damping_scale must be one of {', '.join(DAMPING_SCALES)}, got {damping_scale!r}"
        )
    reduce = reduce or identity_reduce
    with preserved_state(problem.upper, problem.lower, params=False):
        upper_out = upper_output(problem, val_batch)
        _, f_theta, cotangent = loss_pass(problem, problem.upper_loss, val_batch, upper_out)
        f_theta = reduce(f_theta)
        hyper = omega_grads(problem, upper_out, cotangent)  # ∇_ω L_F
        del upper_out, cotangent
        upper_out = train_upper_out or upper_output(problem, train_batch)
        del train_upper_out
        graph = _LowerGraph(problem, train_batch, upper_out, curvature)
        g_theta = reduce([g.detach() for g in graph.g_theta])
        rayleigh = None
        if damping_scale == "rayleigh":
            ff = dot(f_theta, f_theta)
            hf = reduce(graph.product(f_theta))
            rayleigh = float(dot(f_theta, hf) / ff) if ff > 0 else 0.0
            damping = damping * abs(rayleigh)
        matvec = _damped(graph.product, reduce, damping)
        solve = _solve(matvec, f_theta, method, iterations, neumann_step)
        cross = graph.mixed(solve.solution)
        del graph, matvec
        if diagnostics is None and not coupling_max:
            return reduce(omega_grads(problem, upper_out, cross, scale=-1.0, into=hyper))
        coupling = omega_grads(problem, upper_out, cross, scale=-1.0)
    if diagnostics is None:  # the trust region needs both terms' norms
        return combine_terms(hyper, coupling, reduce, {}, coupling_max)
    diagnostics.update(lower_health(f_theta, g_theta))
    diagnostics.update(
        aid_residual=solve.residual,
        aid_products=float(solve.products) + (rayleigh is not None),
        aid_nonpositive=float(solve.stop == "nonpositive curvature"),
        aid_damping=float(damping),
    )
    if rayleigh is not None:
        diagnostics["aid_rayleigh"] = rayleigh
    return combine_terms(hyper, coupling, reduce, diagnostics, coupling_max)


def _damped(product: MatVec, reduce: Reduce, damping: float) -> MatVec:
    """v -> reduce(H v) + λ v: the product of the workers' averaged, damped curvature."""

    def matvec(v: Grads) -> Grads:
        hv = reduce(product(v))
        return [h + damping * x for h, x in zip(hv, v)] if damping else hv

    return matvec


def _solve(matvec: MatVec, rhs: Grads, method: str, iterations: int, step: float) -> LinearSolve:
    if method == "cg":
        return conjugate_gradient(matvec, rhs, max_iter=iterations)
    return neumann(matvec, rhs, iterations=iterations, step=step)


class _LowerGraph:
    """L_G on the training batch, kept with a graph for second-order products in θ.

    `wrt` is what ω acts through: F's output as a detached leaf (with `upper_input`), else ω.
    """

    def __init__(
        self, problem: BilevelProblem, batch: Any, upper_out: list[torch.Tensor], curvature: str
    ) -> None:
        self.theta = problem.lower_params()
        if problem.upper_input is None:
            self.wrt, upper = upper_out, problem.upper
        else:
            leaf = upper_out[0].detach().requires_grad_(True)
            self.wrt, upper = [leaf], Pinned(problem.upper_input(batch), leaf)
        if curvature == "gauss_newton":
            assert problem.lower_prediction is not None and problem.lower_criterion is not None
            outputs = problem.lower_prediction(upper, problem.lower, batch)
            loss = problem.lower_criterion(outputs, batch)
            self._gauss_newton = _GaussNewton(problem, batch, outputs, self.theta)
        else:
            loss = problem.lower_loss(upper, problem.lower, batch)
            self._gauss_newton = None
        self.g_theta = grads(loss, self.theta, create_graph=True)  # ∇_θ L_G, with its graph

    def product(self, v: Grads) -> Grads:
        """The curvature product: ∇²_{θθ} L_G v, or Jᵀ ∇²ℓ J v for Gauss-Newton."""
        v = [x.detach() for x in v]
        if self._gauss_newton is not None:
            return self._gauss_newton.product(v)
        return grads(dot(self.g_theta, v), self.theta, retain_graph=True)

    def mixed(self, u: Grads) -> Grads:
        """∇_wrt (∇_θ L_G · u): the cotangent at F's output (or ∇_ω itself); frees the graph."""
        return grads(dot(self.g_theta, [x.detach() for x in u]), self.wrt)


class _GaussNewton:
    """Products with Jᵀ ∇²ℓ J, J = ∂(G's outputs)/∂θ, through reverse mode only: Jv by the
    double-vjp trick (d/du of Jᵀu · v), ∇²ℓ w by double backward of ℓ at the outputs, Jᵀ by a
    plain vjp."""

    def __init__(
        self,
        problem: BilevelProblem,
        batch: Any,
        outputs: tuple[torch.Tensor, ...],
        theta: list[torch.Tensor],
    ) -> None:
        assert problem.lower_criterion is not None
        self.theta = [p for p in theta if p.requires_grad]
        self.all_theta = theta
        slots = [i for i, t in enumerate(outputs) if t.requires_grad]
        self.outputs = [outputs[i] for i in slots]
        leaves = list(outputs)
        for i in slots:
            leaves[i] = outputs[i].detach().requires_grad_(True)
        self.leaves = [leaves[i] for i in slots]
        criterion = problem.lower_criterion(tuple(leaves), batch)
        self.dl = grads(criterion, self.leaves, create_graph=True)  # ∇ℓ at the outputs
        self.dummies = [torch.zeros_like(t, requires_grad=True) for t in self.outputs]
        jt = torch.autograd.grad(
            self.outputs, self.theta, self.dummies, create_graph=True, allow_unused=True
        )
        self.jt_dummy = [
            g if g is not None else torch.zeros_like(p) for g, p in zip(jt, self.theta)
        ]

    def product(self, v: Grads) -> Grads:
        by_id = {id(p): x for p, x in zip(self.all_theta, v)}
        jv = grads(
            dot(self.jt_dummy, [by_id[id(p)] for p in self.theta]), self.dummies, retain_graph=True
        )
        hjv = (
            grads(dot(self.dl, jv), self.leaves, retain_graph=True)
            if _reaches(self.dl)
            else [torch.zeros_like(t) for t in self.leaves]
        )
        out = torch.autograd.grad(
            self.outputs, self.theta, hjv, retain_graph=True, allow_unused=True
        )
        found = {id(p): g for p, g in zip(self.theta, out) if g is not None}
        return [found.get(id(p), torch.zeros_like(p)) for p in self.all_theta]


def _reaches(tensors: Grads) -> bool:
    """Whether a gradient list has a graph (a criterion linear in the outputs has none)."""
    return any(t.requires_grad for t in tensors)


def _check(
    problem: BilevelProblem,
    method: str,
    iterations: int,
    damping: float,
    curvature: str,
    neumann_step: float,
    train_upper_out: list[torch.Tensor] | None,
) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {', '.join(CURVATURES)}, got {curvature!r}")
    if iterations < 1 or damping < 0 or neumann_step <= 0:
        raise ValueError(
            f"need iterations >= 1, damping >= 0 and neumann_step > 0, got {iterations=}, "
            f"{damping=}, {neumann_step=}"
        )
    if curvature == "gauss_newton" and (
        problem.lower_prediction is None or problem.lower_criterion is None
    ):
        raise ValueError(
            "curvature='gauss_newton' needs BilevelProblem.lower_prediction and lower_criterion "
            "(L_G split into G's outputs and the criterion on them)"
        )
    if train_upper_out is not None and problem.upper_input is None:
        raise ValueError("train_upper_out needs a BilevelProblem with upper_input")
