"""AID (approximate implicit differentiation) against dense implicit-function-theorem gradients
built with torch.func, in float64; IBGL's relative damping and the health numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from bgl.solvers import (
    BilevelProblem,
    aid_hypergradient,
    ibgl_coefficient,
    ibgl_hypergradient,
    lower_health,
)
from bgl.solvers.problem import dot, upper_output
from tests.bilevel_problems import DT, mse_loss, quadratic_problem

RIDGE = 0.05


def _prediction(upper, lower, batch):
    return (lower(upper(batch[0])),)


def _criterion(prediction, batch):
    (out,) = prediction
    return ((out - batch[1]) ** 2).mean() + 0.05 * (out**4).mean()


def _ridge_lower_loss(upper, lower, batch):
    """Strongly convex in θ (G is linear, the criterion convex in its output, plus a ridge);
    nonlinear in θ through the quartic term, so the Hessian moves with θ."""
    theta_sq = sum((p**2).sum() for p in lower.parameters())
    return _criterion(_prediction(upper, lower, batch), batch) + RIDGE * theta_sq


def convex_problem(seed: int = 0, *, lower_hidden: int | None = None):
    """F = 3->4->3 tanh MLP, G = linear 3->2 (8 parameters) or a tanh MLP (non-convex)."""
    torch.manual_seed(seed)
    upper = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    if lower_hidden is None:
        lower = nn.Linear(3, 2).to(DT)
    else:
        lower = nn.Sequential(nn.Linear(3, lower_hidden), nn.Tanh(), nn.Linear(lower_hidden, 2))
        lower = lower.to(DT)
    train = (torch.randn(8, 3, dtype=DT), torch.randn(8, 2, dtype=DT))
    val = (torch.randn(6, 3, dtype=DT), torch.randn(6, 2, dtype=DT))
    problem = BilevelProblem(
        upper,
        lower,
        _ridge_lower_loss,
        mse_loss,
        lower_prediction=_prediction,
        lower_criterion=_criterion,
    )
    return problem, train, val


class _Called:
    """A module evaluated at given parameter tensors (what the losses see as F or G)."""

    def __init__(self, module: nn.Module, params: dict[str, torch.Tensor]) -> None:
        self.module, self.params = module, params

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, self.params, (x,))

    def parameters(self):
        return iter(self.params.values())


class _Flat:
    """A module's parameters as one flat vector, and the module called with a given vector."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.named = [(n, p.shape, p.numel()) for n, p in module.named_parameters()]

    def vector(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])

    def call(self, flat: torch.Tensor) -> _Called:
        names = [name for name, _, _ in self.named]
        return _Called(self.module, dict(zip(names, self.split(flat))))

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        out, at = [], 0
        for _, shape, n in self.named:
            out.append(flat[at : at + n].reshape(shape))
            at += n
        return out


def dense(problem: BilevelProblem, train, val, *, damping: float = 0.0, gauss_newton=False):
    """h = ∇ωL_F − (∂∇θL_G/∂ω)ᵀ (H + λI)⁻¹ ∇θL_F from dense torch.func matrices; and H."""
    fw, ft = _Flat(problem.upper), _Flat(problem.lower)
    w0, t0 = fw.vector(), ft.vector()

    def lower(w, t):
        return problem.lower_loss(fw.call(w), ft.call(t), train)

    def upper(w, t):
        return problem.upper_loss(fw.call(w), ft.call(t), val)

    if gauss_newton:  # Jᵀ ∇²ℓ J with J = ∂ prediction / ∂θ, from dense matrices

        def pred(t):
            return problem.lower_prediction(fw.call(w0), ft.call(t), train)[0].reshape(-1)

        out0 = pred(t0)
        jac = jacrev(pred)(t0)
        shape = problem.lower_prediction(fw.call(w0), ft.call(t0), train)[0].shape
        h_out = hessian(lambda o: problem.lower_criterion((o.reshape(shape),), train))(out0)
        h = jac.T @ h_out @ jac
    else:
        h = hessian(lambda t: lower(w0, t))(t0)
    f_t = torch.func.grad(lambda t: upper(w0, t))(t0)
    f_w = torch.func.grad(lambda w: upper(w, t0))(w0)
    mixed = jacrev(lambda w: torch.func.grad(lambda t: lower(w, t))(t0))(w0)  # (nθ, nω)
    u = torch.linalg.solve(h + damping * torch.eye(len(t0), dtype=DT), f_t)
    return fw.split(f_w - mixed.T @ u), h


def rel_error(got, want) -> float:
    diff = torch.cat([(a - b).reshape(-1) for a, b in zip(got, want, strict=True)])
    return float(diff.norm() / torch.cat([b.reshape(-1) for b in want]).norm())


def test_cg_with_dim_theta_iterations_is_the_dense_ift_gradient():
    problem, train, val = convex_problem()
    want, h = dense(problem, train, val)
    assert torch.linalg.eigvalsh(h).min() > 2 * RIDGE * 0.99  # strongly convex: IFT holds
    got = aid_hypergradient(problem, train, val, iterations=8)  # dim θ = 8
    assert rel_error(got, want) < 1e-8


def test_closed_form_on_a_quadratic_at_any_theta():
    problem, k = quadratic_problem(seed=3)
    a, b, t = k["a"], k["b"], k["t"]
    theta, omega = k["theta"], k["omega"]
    for damping in (0.0, 0.7):
        want = k["lam"] * omega + b.T @ torch.linalg.solve(
            a + damping * torch.eye(4, dtype=DT), theta - t
        )
        (got,) = aid_hypergradient(problem, None, None, iterations=4, damping=damping)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_error_falls_with_iterations_and_damping_is_tikhonov():
    problem, train, val = convex_problem(seed=1)
    want, _ = dense(problem, train, val)
    errors = [
        rel_error(aid_hypergradient(problem, train, val, iterations=i), want) for i in (1, 2, 4, 8)
    ]
    assert errors[0] > 1e-3 and errors[-1] < 1e-8
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    damped, _ = dense(problem, train, val, damping=0.3)
    got = aid_hypergradient(problem, train, val, iterations=8, damping=0.3)
    assert rel_error(got, damped) < 1e-8 and rel_error(got, want) > 1e-3


def test_rayleigh_damping_is_a_fraction_of_the_curvature_along_the_upper_gradient():
    """λ = damping · fᵀHf / fᵀf with f = ∇θL_F, from the dense Hessian; the solve is then the
    dense Tikhonov solve at that λ, and the diagnostics record both numbers."""
    problem, train, val = convex_problem(seed=2)
    _, h = dense(problem, train, val)
    ft = _Flat(problem.lower)
    f_t = torch.func.grad(lambda t: problem.upper_loss(problem.upper, ft.call(t), val))(ft.vector())
    rayleigh = float(f_t @ h @ f_t / (f_t @ f_t))
    want, _ = dense(problem, train, val, damping=0.1 * rayleigh)
    info: dict[str, float] = {}
    got = aid_hypergradient(
        problem, train, val, iterations=8, damping=0.1, damping_scale="rayleigh", diagnostics=info
    )
    assert rel_error(got, want) < 1e-8
    assert info["aid_rayleigh"] == pytest.approx(rayleigh, rel=1e-10)
    assert info["aid_damping"] == pytest.approx(0.1 * rayleigh, rel=1e-10)
    assert info["aid_products"] == 9  # eight CG products and the quotient's
    with pytest.raises(ValueError, match="damping_scale"):
        aid_hypergradient(problem, train, val, damping_scale="relative")


def test_trust_region_caps_the_implicit_term_at_a_multiple_of_the_direct_gradient():
    problem, train, val = convex_problem(seed=4)
    info: dict[str, float] = {}
    free = aid_hypergradient(problem, train, val, iterations=8, diagnostics=info)
    direct = info["direct_grad_norm"]
    coupling = info["coupling_ratio"] * direct
    kappa = 0.5 * coupling / direct  # a cap the free implicit term exceeds
    capped_info: dict[str, float] = {}
    capped = aid_hypergradient(
        problem, train, val, iterations=8, coupling_max=kappa, diagnostics=capped_info
    )
    # h = direct + s·coupling with ‖s·coupling‖ = κ‖direct‖: recover direct from free and capped
    scale = kappa * direct / coupling
    d_free = torch.cat([x.reshape(-1) for x in free])
    d_capped = torch.cat([x.reshape(-1) for x in capped])
    direct_vec = (d_capped - scale * d_free) / (1 - scale)
    assert float((d_capped - direct_vec).norm()) == pytest.approx(kappa * direct, rel=1e-8)
    assert capped_info["coupling_clipped"] == 1.0
    # without diagnostics the same capped hypergradient; a loose cap changes nothing
    again = aid_hypergradient(problem, train, val, iterations=8, coupling_max=kappa)
    assert rel_error(again, capped) < 1e-12
    loose = aid_hypergradient(problem, train, val, iterations=8, coupling_max=100 * kappa)
    assert rel_error(loose, free) < 1e-12


def test_neumann_converges_to_cg():
    problem, train, val = convex_problem(seed=2)
    want, h = dense(problem, train, val)
    step = 1.0 / float(torch.linalg.eigvalsh(h).max())
    cg = aid_hypergradient(problem, train, val, iterations=8)
    errors = [
        rel_error(
            aid_hypergradient(
                problem, train, val, method="neumann", iterations=n, neumann_step=step
            ),
            cg,
        )
        for n in (5, 50, 800)
    ]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-7, errors
    assert rel_error(cg, want) < 1e-8


def test_gauss_newton_is_the_hessian_minus_the_ridge_for_a_linear_lower_level():
    """G linear in θ: ∇²θθ L_G = Jᵀ∇²ℓJ + 2·ridge·I exactly, so Gauss-Newton with damping
    2·ridge is the exact implicit gradient."""
    problem, train, val = convex_problem(seed=4)
    want, _ = dense(problem, train, val)
    got = aid_hypergradient(
        problem, train, val, iterations=8, curvature="gauss_newton", damping=2 * RIDGE
    )
    assert rel_error(got, want) < 1e-8


def test_gauss_newton_products_match_dense_and_are_psd_for_a_nonconvex_g():
    problem, train, val = convex_problem(seed=5, lower_hidden=5)
    want, gn = dense(problem, train, val, damping=0.1, gauss_newton=True)
    assert torch.linalg.eigvalsh(gn).min() > -1e-10  # PSD although G is a tanh MLP
    exact = dense(problem, train, val)[1]
    assert torch.linalg.eigvalsh(exact).min() < torch.linalg.eigvalsh(gn).min() - 1e-6
    n = sum(p.numel() for p in problem.lower.parameters())
    got = aid_hypergradient(
        problem, train, val, iterations=n, curvature="gauss_newton", damping=0.1
    )
    assert rel_error(got, want) < 1e-7


def test_shared_generator_pass_with_handed_over_output_equals_direct():
    problem, train, val = convex_problem(seed=6)
    shared = BilevelProblem(
        problem.upper,
        problem.lower,
        problem.lower_loss,
        problem.upper_loss,
        upper_input=lambda batch: batch[0],
        lower_prediction=_prediction,
        lower_criterion=_criterion,
    )
    for curvature in ("hessian", "gauss_newton"):
        kwargs = dict(iterations=5, curvature=curvature, damping=0.2)
        direct = aid_hypergradient(problem, train, val, **kwargs)
        handed = aid_hypergradient(
            shared, train, val, train_upper_out=upper_output(shared, train), **kwargs
        )
        assert rel_error(handed, direct) < 1e-12


def test_diagnostics_and_bad_arguments():
    problem, train, val = convex_problem(seed=7)
    diagnostics: dict[str, float] = {}
    aid_hypergradient(problem, train, val, iterations=3, diagnostics=diagnostics)
    theta = list(problem.lower.parameters())
    g = torch.autograd.grad(problem.lower_loss(problem.upper, problem.lower, train), theta)
    f = torch.autograd.grad(problem.upper_loss(problem.upper, problem.lower, val), theta)
    g_norm = float(dot(g, g).sqrt())
    assert diagnostics["lower_grad_norm"] == pytest.approx(g_norm, rel=1e-12)
    cos = float(dot(f, g)) / (g_norm * float(dot(f, f).sqrt()))
    assert diagnostics["upper_lower_cos"] == pytest.approx(cos, rel=1e-10)
    assert diagnostics["aid_products"] == 3
    for bad, match in (
        (dict(method="lbfgs"), "method"),
        (dict(curvature="fisher"), "curvature"),
        (dict(iterations=0), "iterations"),
        (dict(damping=-1.0), "damping"),
    ):
        with pytest.raises(ValueError, match=match):
            aid_hypergradient(problem, train, val, **bad)
    no_split = BilevelProblem(problem.upper, problem.lower, problem.lower_loss, mse_loss)
    with pytest.raises(ValueError, match="lower_prediction"):
        aid_hypergradient(no_split, train, val, curvature="gauss_newton")


def test_ibgl_relative_damping_bounds_the_coefficient():
    f = [torch.tensor([1.0, 0.0], dtype=DT)]
    for scale in (1.0, 1e-3, 1e-8):
        g = [torch.tensor([scale, 0.0], dtype=DT)]
        plain = float(ibgl_coefficient(f, g, eps=0.0))
        assert plain == pytest.approx(1 / scale)  # Eq. 9 explodes as ‖g‖ -> 0
        damped = float(ibgl_coefficient(f, g, eps=0.0, relative_damping=0.25))
        assert damped == pytest.approx(scale / (scale**2 + 0.25))
        assert abs(damped) <= 1 / (2 * 0.25**0.5) + 1e-12
    health = lower_health(f, [torch.tensor([-2.0, 0.0], dtype=DT)])
    assert health == pytest.approx(
        {"lower_grad_norm": 2.0, "upper_lower_cos": -1.0, "ibgl_coef": -0.5}
    )
    # in the solver: ρ changes the result exactly as the coefficient says
    problem, k = quadratic_problem(seed=8)
    (plain,) = ibgl_hypergradient(problem, None, None)
    (damped,) = ibgl_hypergradient(problem, None, None, relative_damping=0.5)
    f_omega = k["lam"] * k["omega"]
    assert not torch.allclose(plain, damped)
    ratio = (damped - f_omega).norm() / (plain - f_omega).norm()
    f_t = k["theta"] - k["t"]
    g_t = k["a"] @ k["theta"] - k["b"] @ k["omega"]
    want = (g_t @ g_t) / (g_t @ g_t + 0.5 * f_t @ f_t)
    assert float(ratio) == pytest.approx(float(want), rel=1e-10)
