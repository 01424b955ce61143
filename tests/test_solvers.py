"""Hypergradients against independent computations, in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from bgl.solvers import (
    SOLVER_NAMES,
    BilevelProblem,
    get_solver,
    hypergradient,
    ibgl_hypergradient,
    naive_hypergradient,
    tbgl_hypergradient,
)
from bgl.solvers.problem import upper_output
from tests.bilevel_problems import DT, Vec, mse_loss, nonlinear_problem, quadratic_problem


def _module_at(module, values):
    """`module` evaluated at the parameter tensors `values` (in its parameters' order)."""
    names = [n for n, _ in module.named_parameters()]

    class _At(nn.Module):
        def forward(self, x):
            return functional_call(module, dict(zip(names, values)), (x,))

    return _At()


def _unrolled_reference(problem, train, val, lr):
    """d/dω L_F(ω, θ − η ∇_θ L_G(ω, θ)) by autograd through the step (create_graph)."""
    upper, lower = problem.upper, problem.lower
    theta = [p.detach().clone().requires_grad_(True) for p in lower.parameters()]
    omega = list(upper.parameters())

    def lower_at(params):
        return _module_at(lower, params)

    g = torch.autograd.grad(
        problem.lower_loss(upper, lower_at(theta), train), theta, create_graph=True
    )
    theta_prime = [t - lr * gi for t, gi in zip(theta, g)]
    loss_f = problem.upper_loss(upper, lower_at(theta_prime), val)
    return torch.autograd.grad(loss_f, omega)


def _close(a, b, rtol):
    fa = torch.cat([x.reshape(-1) for x in a])
    fb = torch.cat([x.reshape(-1) for x in b])
    return (fa - fb).norm() / fb.norm() < rtol, ((fa - fb).norm() / fb.norm()).item()


def test_tbgl_matches_autograd_through_one_unrolled_step():
    problem, train, val = nonlinear_problem()
    lr = 0.3
    ref = _unrolled_reference(problem, train, val, lr)
    got = tbgl_hypergradient(problem, train, val, lower_lr=lr, delta=1e-4)
    ok, err = _close(got, ref, 1e-7)
    assert ok, err
    # the coupling term matters here: the first-order part alone is far from the reference
    naive_at_theta = naive_hypergradient(problem, train, val)
    assert not _close(naive_at_theta, ref, 1e-2)[0]
    assert all(g.dtype == DT for g in got)
    assert [g.shape for g in got] == [p.shape for p in problem.upper.parameters()]


def test_tbgl_error_shrinks_with_delta():
    problem, train, val = nonlinear_problem(seed=1)
    ref = _unrolled_reference(problem, train, val, 0.5)
    errs = [
        _close(tbgl_hypergradient(problem, train, val, lower_lr=0.5, delta=d), ref, 1.0)[1]
        for d in (1e-1, 1e-2)
    ]
    # central differences: error O(ε²), so 10x smaller δ gives ~100x smaller error
    assert errs[1] < errs[0] / 30


# --- quadratic problem with closed forms ---------------------------------------------------


@pytest.mark.parametrize("delta", [1e-3, 1.0, 10.0])
def test_tbgl_closed_form_on_quadratic(delta):
    # L_G is bilinear in (θ, ω), so the central difference is exact for every δ: this pins the
    # 2ε denominator (a `/ 2 * eps` slip would be off by a factor ε²).
    problem, k = quadratic_problem()
    lr = 0.05
    theta_p = k["theta"] - lr * (k["a"] @ k["theta"] - k["b"] @ k["omega"])
    expected = k["lam"] * k["omega"] + lr * k["b"].T @ (theta_p - k["t"])
    (got,) = tbgl_hypergradient(problem, None, None, lower_lr=lr, delta=delta)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_ibgl_closed_form_on_quadratic():
    problem, k = quadratic_problem(seed=3)
    th, om = k["theta"], k["omega"]
    f_theta = th - k["t"]
    g_theta = k["a"] @ th - k["b"] @ om
    g_omega = -k["b"].T @ th + k["c"] * om
    coef = (f_theta @ g_theta) / (g_theta @ g_theta + 1e-12)
    expected = k["lam"] * om - coef * g_omega
    (got,) = ibgl_hypergradient(problem, None, None)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_ibgl_eps_guard_at_exact_lower_optimum():
    problem, k = quadratic_problem(seed=4)
    with torch.no_grad():  # θ*(ω) = A^-1 B ω makes ∇_θ L_G exactly (numerically) zero
        problem.lower.p.copy_(torch.linalg.solve(k["a"], k["b"] @ k["omega"]))
        problem.lower.p.copy_(problem.lower.p)
    big_eps = 1e-6  # above the rounding-level ‖∇_θ L_G‖² of the solve
    (got,) = ibgl_hypergradient(problem, None, None, eps=big_eps)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, k["lam"] * k["omega"], rtol=1e-6, atol=1e-8)


def test_ibgl_zero_lower_gradient_is_finite_and_unguarded_is_not():
    def lower_loss(up, lo, batch):  # constant in θ: ∇_θ L_G = 0 exactly
        return (up.p**2).sum() + 0.0 * lo.p.sum()

    def upper_loss(up, lo, batch):
        return ((lo.p - 1) ** 2).sum() + (up.p**3).sum()

    problem = BilevelProblem(
        Vec(torch.ones(2, dtype=DT)), Vec(torch.zeros(3, dtype=DT)), lower_loss, upper_loss
    )
    (got,) = ibgl_hypergradient(problem, None, None)
    torch.testing.assert_close(got, 3 * torch.ones(2, dtype=DT))
    (unguarded,) = ibgl_hypergradient(problem, None, None, eps=0.0)
    assert torch.isnan(unguarded).all()


def test_ibgl_term_by_term_on_nonlinear_problem():
    problem, train, val = nonlinear_problem(seed=2)

    def fresh_grads(loss_fn, batch):
        up, lo = copy.deepcopy(problem.upper), copy.deepcopy(problem.lower)
        loss_fn(up, lo, batch).backward()
        return [p.grad for p in up.parameters()], [p.grad for p in lo.parameters()]

    f_om, f_th = fresh_grads(problem.upper_loss, val)
    g_om, g_th = fresh_grads(problem.lower_loss, train)
    num = sum((a * b).sum() for a, b in zip(f_th, g_th))
    den = sum((b * b).sum() for b in g_th)
    expected = [f - (num / (den + 1e-12)) * g for f, g in zip(f_om, g_om)]
    got = ibgl_hypergradient(problem, train, val)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)
    assert not g.requires_grad


def test_naive_is_upper_gradient_only():
    problem, train, val = nonlinear_problem(seed=5)
    up = copy.deepcopy(problem.upper)
    problem.upper_loss(up, problem.lower, val).backward()
    got = naive_hypergradient(problem, train, val)
    for p, g in zip(up.parameters(), got):
        torch.testing.assert_close(g, p.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_coupling_ratio_is_the_distance_from_the_direct_gradient(solver):
    """With diagnostics, h is unchanged and ‖h − ∇ωL_F‖ / ‖∇ωL_F‖ is reported, ∇ωL_F taken by
    autograd at the θ the solver differentiates L_F at (TBGL: the unrolled θ')."""
    problem, train, val = nonlinear_problem(seed=8)
    lr, settings = 0.3, {"delta": 1e-4, "damping": 0.1, "iterations": 4}
    plain = hypergradient(solver, problem, train, val, lower_lr=lr, **settings)
    info: dict[str, float] = {}
    got = hypergradient(solver, problem, train, val, lower_lr=lr, diagnostics=info, **settings)
    for a, b in zip(got, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    at = copy.deepcopy(problem)
    if get_solver(solver).unrolled:
        loss = problem.lower_loss(at.upper, at.lower, train)
        step = torch.autograd.grad(loss, list(at.lower.parameters()))
        with torch.no_grad():
            for p, g in zip(at.lower.parameters(), step):
                p.sub_(lr * g)
    direct = torch.autograd.grad(
        problem.upper_loss(at.upper, at.lower, val), list(at.upper.parameters())
    )
    flat = torch.cat([g.reshape(-1) for g in direct])
    h = torch.cat([g.reshape(-1) for g in got])
    assert info["direct_grad_norm"] == pytest.approx(float(flat.norm()), rel=1e-10)
    expected = float((h - flat).norm() / flat.norm())
    assert info["coupling_ratio"] == pytest.approx(expected, rel=1e-8, abs=1e-14)
    assert (expected > 1e-3) == (solver != "naive")  # the check can tell the solvers apart


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_no_side_effects(solver):
    problem, train, val = nonlinear_problem(batchnorm=True, seed=6)
    mods = (problem.upper, problem.lower)
    for m in mods:
        for p in m.parameters():
            p.grad = torch.randn_like(p)
    snapshot = [(t.detach().clone()) for m in mods for t in (*m.parameters(), *m.buffers())] + [
        p.grad.clone() for m in mods for p in m.parameters()
    ]
    flags = [p.requires_grad for m in mods for p in m.parameters()]
    hypergradient(solver, problem, train, val, lower_lr=0.1, delta=0.01, damping=0.1)
    after = [(t.detach().clone()) for m in mods for t in (*m.parameters(), *m.buffers())] + [
        p.grad.clone() for m in mods for p in m.parameters()
    ]
    assert all(torch.equal(a, b) for a, b in zip(snapshot, after))
    assert flags == [p.requires_grad for m in mods for p in m.parameters()]
    # the check can fail: a plain training-mode forward does move the running statistics
    before = problem.lower[1].running_mean.clone()
    problem.lower(problem.upper(train[0]))
    assert not torch.equal(before, problem.lower[1].running_mean)


def test_reduce_is_applied_to_every_gradient():
    # a reduce that doubles (like summing two identical workers): IBGL's coefficient is
    # scale-free, so the result doubles; TBGL sees a doubled step and a doubled v
    problem, k = quadratic_problem(seed=7)
    calls = []

    def double(ts):
        calls.append(len(ts))
        return [2 * t for t in ts]

    (plain,) = ibgl_hypergradient(problem, None, None)
    (doubled,) = ibgl_hypergradient(problem, None, None, reduce=double)
    torch.testing.assert_close(doubled, 2 * plain)
    assert calls == [1, 1, 1]  # ∇_θ L_F, ∇_θ L_G, then the combined ω part once

    lr = 0.05
    theta_p = k["theta"] - lr * 2 * (k["a"] @ k["theta"] - k["b"] @ k["omega"])
    expected = 2 * (k["lam"] * k["omega"] + lr * k["b"].T @ (2 * (theta_p - k["t"])))
    (got,) = tbgl_hypergradient(problem, None, None, lower_lr=lr, delta=0.1, reduce=double)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_bad_arguments_and_losses():
    problem, train, val = nonlinear_problem()
    with pytest.raises(ValueError, match="unknown solver"):
        hypergradient("sgd", problem, train, val, lower_lr=0.1)
    with pytest.raises(ValueError, match="delta"):
        tbgl_hypergradient(problem, train, val, lower_lr=0.1, delta=0.0)
    bad = BilevelProblem(problem.upper, problem.lower, lambda u, lo, b: torch.ones(2), mse_loss)
    with pytest.raises(ValueError, match="scalar"):
        ibgl_hypergradient(bad, train, val)


# --- the shared-F-pass path (BilevelProblem.upper_input) --------------------------------------


def _enhance_problem(input_gain: float | None = None):
    from bgl.data.synthetic import SyntheticLowLight
    from bgl.models.generator import build_generator
    from bgl.tasks.enhance import EnhanceTask

    torch.manual_seed(0)
    task = EnhanceTask(width=4, input_gain=input_gain)
    upper, lower = build_generator(4).to(DT), task.build_lower().to(DT)
    data = SyntheticLowLight(4, size=32, seed=0)
    batches = [
        {k: torch.stack([data[i][k] for i in idx]).to(DT) for k in ("raw", "rgb", "ratio")}
        for idx in ([0, 1], [2, 3])
    ]
    problem = BilevelProblem(upper, lower, task.lower_loss, task.upper_loss)
    return problem, batches[0], batches[1], task.upper_input


@pytest.mark.parametrize("solver", SOLVER_NAMES)
@pytest.mark.parametrize("case", ["nonlinear", "nonlinear-bn", "enhance", "enhance-gain"])
def test_shared_generator_passes_equal_the_direct_computation(solver, case):
    """With `upper_input`, F's forward/backward is shared and ω's gradient comes from a
    vector-Jacobian product at F's output; the result must equal the direct computation
    (enhance-gain: F's input is derived anew from the batch on every call)."""
    if case.startswith("enhance"):
        problem, train, val, upper_input = _enhance_problem(30.0 if "gain" in case else None)
    else:
        problem, train, val = nonlinear_problem(batchnorm=case.endswith("bn"))
        upper_input = lambda batch: batch[0]  # noqa: E731
    shared = BilevelProblem(
        problem.upper, problem.lower, problem.lower_loss, problem.upper_loss, upper_input
    )
    marker = [torch.full_like(p, 7.0) for p in problem.upper.parameters()]
    for p, m in zip(problem.upper.parameters(), marker):
        p.grad = m
    state = copy.deepcopy((problem.upper.state_dict(), problem.lower.state_dict()))
    kwargs = {"lower_lr": 0.1, "delta": 1e-3, "iterations": 4, "damping": 0.5}
    direct = hypergradient(solver, problem, train, val, **kwargs)
    fast = hypergradient(solver, shared, train, val, **kwargs)
    for a, b in zip(direct, fast, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    if "train_upper_out" in get_solver(solver).context:  # F's output handed over, as the loop does
        upper_out = upper_output(shared, train)
        reused = hypergradient(solver, shared, train, val, train_upper_out=upper_out, **kwargs)
        for a, b in zip(direct, reused, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert any(a.abs().sum() > 0 for a in direct)
    assert all(p.grad is m for p, m in zip(problem.upper.parameters(), marker))  # .grad kept
    for module, saved in zip((problem.upper, problem.lower), state):
        for key, value in module.state_dict().items():
            assert torch.equal(value, saved[key]), key


def test_shared_passes_refuse_a_loss_that_calls_f_on_another_input():
    problem, train, val = nonlinear_problem()
    wrong = BilevelProblem(
        problem.upper, problem.lower, problem.lower_loss, problem.upper_loss, lambda b: b[0] * 2
    )
    with pytest.raises(RuntimeError, match="upper_input"):
        ibgl_hypergradient(wrong, train, val)


def _adam_unrolled_reference(problem, train, val, opt):
    """d/dω L_F(ω, θ'(ω)) by autograd, θ' the Adam step from `opt`'s state with the second
    moment held constant: m' = β1 m + (1 − β1) g(ω), θ' = θ − lr m̂' / (√v̂' + ε)."""
    upper, lower = problem.upper, problem.lower
    params = list(lower.parameters())
    theta = [p.detach().clone().requires_grad_(True) for p in params]
    group = opt.param_groups[0]
    (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]

    def lower_at(values):
        return _module_at(lower, values)

    g = torch.autograd.grad(
        problem.lower_loss(upper, lower_at(theta), train), theta, create_graph=True
    )
    theta_prime = []
    for p, t, gi in zip(params, theta, g):
        state = opt.state[p]
        step = float(state["step"]) + 1
        m = beta1 * state["exp_avg"] + (1 - beta1) * gi
        v = beta2 * state["exp_avg_sq"] + (1 - beta2) * gi.detach() ** 2  # held constant
        denom = (v / (1 - beta2**step)).sqrt() + eps
        theta_prime.append(t - lr * (m / (1 - beta1**step)) / denom)
    loss_f = problem.upper_loss(upper, lower_at(theta_prime), val)
    return torch.autograd.grad(loss_f, list(upper.parameters())), theta_prime


def test_tbgl_unrolls_a_real_adam_step_as_autograd_does():
    from bgl.train.unroll import optimizer_unroll

    problem, train, val = nonlinear_problem(seed=2)
    opt = torch.optim.Adam(problem.lower.parameters(), lr=0.05)
    for _ in range(3):  # a state with moments that are not the first step's
        opt.zero_grad()
        problem.lower_loss(problem.upper, problem.lower, train).backward()
        opt.step()
    for p in problem.upper.parameters():
        p.grad = None
    ref, theta_prime = _adam_unrolled_reference(problem, train, val, opt)
    info: dict[str, float] = {}
    got = tbgl_hypergradient(
        problem, train, val, lower_lr=0.05, delta=1e-5, unroll="optimizer",
        lower_unroll=optimizer_unroll(opt), diagnostics=info,
    )  # fmt: skip
    ok, err = _close(got, ref, 1e-7)
    assert ok, err
    # the unrolled step is the step Adam then takes
    before = [p.detach().clone() for p in problem.lower.parameters()]
    opt.zero_grad()
    problem.lower_loss(problem.upper, problem.lower, train).backward()
    opt.step()
    for p, b, t in zip(problem.lower.parameters(), before, theta_prime):
        torch.testing.assert_close(p.detach() - b, t.detach() - b, rtol=1e-10, atol=1e-14)
    # and it is not the plain step's answer
    plain = tbgl_hypergradient(problem, train, val, lower_lr=0.05, delta=1e-5)
    assert not _close(plain, ref, 1e-3)[0]
    assert info["tbgl_step_ratio"] > 1


def test_sgd_unroll_of_a_momentum_free_optimiser_is_the_papers_step():
    from bgl.train.unroll import optimizer_unroll

    problem, train, val = nonlinear_problem(seed=3)
    opt = torch.optim.SGD(problem.lower.parameters(), lr=0.3)
    ref = _unrolled_reference(problem, train, val, 0.3)
    got = tbgl_hypergradient(
        problem, train, val, lower_lr=0.3, delta=1e-4, unroll="optimizer",
        lower_unroll=optimizer_unroll(opt),
    )  # fmt: skip
    assert _close(got, ref, 1e-7)[0]
    with pytest.raises(ValueError, match="lower_unroll"):
        tbgl_hypergradient(problem, train, val, lower_lr=0.3, delta=1e-4, unroll="optimizer")
