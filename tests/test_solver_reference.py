"""The reference implicit hypergradient against closed forms and against autograd through a
fully solved lower level (float64, tight tolerances)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from bgl.bench.fidelity import (
    FidelityConfig,
    compare,
    fidelity_problem,
    largest_eigenvalue,
    pseudo_huber,
)
from bgl.solvers import BilevelProblem, naive_hypergradient
from bgl.solvers.problem import set_params
from bgl.solvers.reference import conjugate_gradient, reference_hypergradient
from tests.bilevel_problems import DT, Vec

pytestmark = pytest.mark.usefixtures("single_thread")


def _quadratic(seed: int = 0):
    """L_G = ½θᵀAθ − θᵀ(Bω + c),  L_F = ½‖Cθ − d‖² + ½ωᵀEω: every quantity in closed form."""
    g = torch.Generator().manual_seed(seed)
    m, n = 3, 5

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=DT)

    q = rnd(n, n)
    a = q @ q.T + 0.5 * torch.eye(n, dtype=DT)
    b, c, cm, d = rnd(n, m), rnd(n), rnd(4, n), rnd(4)
    e = torch.diag(torch.rand(m, generator=g, dtype=DT))

    def lower_loss(upper, lower, batch):
        th, om = lower.p, upper.p
        return 0.5 * th @ a @ th - th @ (b @ om + c)

    def upper_loss(upper, lower, batch):
        return 0.5 * (cm @ lower.p - d).pow(2).sum() + 0.5 * upper.p @ e @ upper.p

    omega, theta = rnd(m), rnd(n)
    problem = BilevelProblem(Vec(omega), Vec(theta), lower_loss, upper_loss)
    theta_star = torch.linalg.solve(a, b @ omega + c)
    u = torch.linalg.solve(a, cm.T @ (cm @ theta_star - d))
    exact = e @ omega + b.T @ u
    return problem, theta, theta_star, exact


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(6, 6, generator=g, dtype=DT)
    a = q @ q.T + torch.eye(6, dtype=DT)
    b = torch.randn(6, generator=g, dtype=DT)
    (x,), residual, iters = conjugate_gradient(lambda v: [a @ v[0]], [b], tol=1e-14, max_iter=50)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-10, atol=1e-12)
    assert residual <= 1e-13 and iters <= 12


def test_reference_matches_closed_form_on_quadratic_problem():
    problem, theta0, theta_star, exact = _quadratic()
    result = reference_hypergradient(problem, None, None)
    (h,) = result.hypergradient
    torch.testing.assert_close(h, exact, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.theta_star[0], theta_star, rtol=1e-10, atol=1e-12)
    assert result.lower_grad_norm <= 1e-10 and result.cg_residual <= 1e-12
    # the problem is left as found: θ* is returned, not written into the model
    torch.testing.assert_close(problem.lower.p.detach(), theta0, rtol=0, atol=0)


def test_reference_matches_autograd_through_fully_solved_lower_level():
    """Differentiate L_F(ω, θ_T(ω)) through T unrolled gradient steps; θ_T → θ* geometrically."""
    problem, train, val = fidelity_problem(FidelityConfig(width=2, batch_size=1))
    ref = reference_hypergradient(problem, train, val)
    lr = 0.5 / largest_eigenvalue(problem, train)
    lower, upper = problem.lower, problem.upper
    names = [n for n, _ in lower.named_parameters()]
    theta = [p.detach().clone().requires_grad_() for p in lower.parameters()]
    x_train = upper(train["raw"])
    for _ in range(80):
        params = dict(zip(names, theta))
        fit = functional_call(lower, params, (x_train,)) - train["rgb"]
        loss = pseudo_huber(fit) + 0.5 * lower.ridge * sum(t.pow(2).sum() for t in theta)
        g = torch.autograd.grad(loss, theta, create_graph=True)
        theta = [t - lr * gi for t, gi in zip(theta, g)]
    out = functional_call(lower, dict(zip(names, theta)), (upper(val["raw"]),))
    unrolled = torch.autograd.grad(
        nn.functional.mse_loss(out, val["rgb"]), list(upper.parameters())
    )
    for a, b in zip(ref.hypergradient, unrolled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)
    # the implicit term matters here, so the comparison can fail: ∇_ω L_F(ω, θ*) alone is far off
    set_params(problem.lower_params(), ref.theta_star)
    assert compare(naive_hypergradient(problem, train, val), ref.hypergradient)["rel_error"] > 0.05


def test_reference_rejects_a_non_convex_lower_level():
    def lower_loss(upper, lower, batch):
        return -0.5 * lower.p.pow(2).sum() + (upper.p * lower.p).sum()

    def upper_loss(upper, lower, batch):
        return lower.p.pow(2).sum()

    problem = BilevelProblem(
        Vec(torch.ones(2, dtype=DT)), Vec(torch.ones(2, dtype=DT)), lower_loss, upper_loss
    )
    with pytest.raises(ValueError, match="positive definite"):
        reference_hypergradient(problem, None, None)
