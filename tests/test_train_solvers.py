"""The hypergradient the training loop applies equals the direct computation, for every solver
in the registry, on the enhancement and segmentation tasks; the loop records the lower level's
health and warns once per run."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from bgl.results.report import BUDGET_COLUMNS, flatten_summary
from bgl.solvers import COUPLING_KEYS, HEALTH_KEYS, SOLVER_NAMES, get_solver, hypergradient
from bgl.train.health import BilevelHealthWarning, HealthMonitor
from bgl.train.loop import Trainer
from bgl.train.unroll import optimizer_unroll

pytestmark = pytest.mark.usefixtures("single_thread")

SEGMENT = {
    "task": {"name": "segment", "options": {"width": 4}},
    "model": {"generator_width": 4},
    "data": {
        "name": "synthetic_street",
        "train_size": 8,
        "val_size": 4,
        "select_size": 4,
        "test_size": 4,
    },
}
SOLVER_SETTINGS = {"iterations": 3, "damping": 0.05, "delta": 0.01}


def _trainer(tiny_config, solver: str, task: dict) -> Trainer:
    takes_k = get_solver(solver).takes_k
    cfg = tiny_config(
        **task,
        solver={"name": solver, "k": 2 if takes_k else 1, **SOLVER_SETTINGS},
        optim={"optimizer": "sgd", "momentum": 0.0, "upper_lr": 0.5, "lower_lr": 0.01},
        train={"warm_steps": 0},
    )
    return Trainer(cfg)


def _sgd(module: torch.nn.Module, h: list[torch.Tensor], lr: float) -> None:
    with torch.no_grad():
        for p, g in zip(module.parameters(), h, strict=True):
            p.sub_(lr * g)


@pytest.mark.parametrize("task", [{}, SEGMENT], ids=["enhance", "segment"])
@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_loop_applies_the_direct_hypergradient(tiny_config, solver, task):
    """Two identical trainers: one takes the loop's bilevel step; the other replays its lower
    steps and computes the hypergradient directly (no handed-over F output, no loop wiring).
    With plain SGD, ω_loop = ω − lr · h_direct."""
    loop, manual = _trainer(tiny_config, solver, task), _trainer(tiny_config, solver, task)
    spec, lr, lower_lr = get_solver(solver), 0.5, 0.01
    omega = [p.detach().clone() for p in loop.upper.parameters()]
    info = loop.bilevel_step(lower_lr)

    settings = dataclasses.asdict(manual.cfg.solver)
    settings.pop("name")
    if spec.joint:  # end-to-end: ω and θ from one backward of the warm-start objective
        train = next(manual.train_stream)
        h = hypergradient(solver, manual.problem, train, None)
        params = [*manual.upper.parameters(), *manual.lower.parameters()]
        both = torch.autograd.grad(manual.task.warm_loss(manual.upper, manual.lower, train), params)
        n = len(h)
        for a, b in zip(h, both[:n], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
        _sgd(manual.upper, both[:n], lr)
        _sgd(manual.lower, both[n:], lower_lr)
    elif spec.unrolled:  # DARTS' order: hypergradient at the current θ, then the lower step
        train, val = next(manual.train_stream), next(manual.val_stream)
        # the step TBGL unrolls is the lower optimiser's own (its default `unroll`)
        unroll = optimizer_unroll(manual.lower_opt)
        h = hypergradient(
            solver, manual.problem, train, val, lower_lr=lower_lr, lower_unroll=unroll, **settings
        )
        _sgd(manual.upper, h, lr)
        manual.lower_step(train)
    else:
        for _ in range(manual.cfg.solver.k):
            train = next(manual.train_stream)
            manual.lower_step(train)
        val = next(manual.val_stream)
        h = hypergradient(solver, manual.problem, train, val, lower_lr=lower_lr, **settings)
        _sgd(manual.upper, h, lr)
    for got, expected in zip(loop.upper.parameters(), manual.upper.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(loop.lower.parameters(), manual.lower.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    moved = max(float((a - b).abs().max()) for a, b in zip(omega, loop.upper.parameters()))
    assert moved > 1e-4  # the step did something the comparison can see
    assert any(float(g.abs().sum()) > 0 for g in h)
    h_norm = float(torch.stack([g.norm() for g in h]).norm())
    assert info["hypergrad_norm"] == pytest.approx(h_norm, rel=1e-4)
    if spec.joint:  # no upper objective, no lower problem: nothing to split or diagnose
        assert not (set(COUPLING_KEYS) | set(HEALTH_KEYS)) & set(info)
        return
    assert set(COUPLING_KEYS) <= set(info)  # every bilevel solver: h = ∇ωL_F + coupling
    assert (set(HEALTH_KEYS) <= set(info)) == (solver != "naive")  # naive forms no ∇θ
    assert info["coupling_ratio"] >= 0 and (solver != "naive" or info["coupling_ratio"] == 0)


def test_health_is_in_the_history_and_survives_a_resume(tiny_config, tmp_path):
    cfg = tiny_config(solver={"name": "aid", "k": 2, "iterations": 2})
    trainer = Trainer(cfg)
    trainer.fit(run_dir=tmp_path / "run", until=5)
    rows = [r for r in trainer.history if r["kind"] == "train" and r["phase"] == "bilevel"]
    assert [r["step"] for r in rows] == [4, 5]  # steps 1-3 are the warm start
    assert rows and all(set(HEALTH_KEYS) <= set(r) for r in rows)
    assert all(r["lower_grad_norm"] > 0 and -1 <= r["upper_lower_cos"] <= 1 for r in rows)
    assert all(r["aid_products"] == 2 for r in rows)
    coupling = trainer.summary()["coupling"]
    ratios = [r["coupling_ratio"] for r in rows]
    assert all(v > 0 for v in ratios)
    assert coupling["ratio_mean"] == pytest.approx(sum(ratios) / 2)
    assert coupling["ratio_last"] == ratios[-1]
    trainer.health.first_coef = 0.123
    trainer.save(tmp_path / "run" / "checkpoint.pt")
    resumed = Trainer(cfg)
    resumed.resume(tmp_path / "run" / "checkpoint.pt")
    assert resumed.health.first_coef == 0.123


def test_health_monitor_warns_once_per_run():
    monitor = HealthMonitor()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert monitor.observe({"ibgl_coef": 0.5, "upper_lower_cos": 0.3}, 1) is None
        assert monitor.observe({"ibgl_coef": 40.0, "upper_lower_cos": 0.3}, 2) is None  # < 100x
        message = monitor.observe({"ibgl_coef": -60.0, "upper_lower_cos": 0.3}, 3)
        assert message is not None and "step 3" in message and "-60" in message
        assert monitor.observe({"ibgl_coef": 1e6, "upper_lower_cos": 1.0}, 4) is None  # once
    assert [w.category for w in caught] == [BilevelHealthWarning]
    aligned = HealthMonitor()
    with pytest.warns(BilevelHealthWarning, match="cos"):
        aligned.observe({"ibgl_coef": 1.0, "upper_lower_cos": 0.995}, 1)
    assert HealthMonitor().observe({"lower_loss": 1.0}, 1) is None  # naive reports nothing
    other = HealthMonitor(uses_coefficient=False)  # e.g. AID: the numbers are recorded only
    assert other.observe({"ibgl_coef": 1e9, "upper_lower_cos": 1.0}, 1) is None
    indefinite = HealthMonitor(uses_coefficient=False)
    with pytest.warns(BilevelHealthWarning, match="non-positive curvature after 1 product"):
        indefinite.observe(
            {"ibgl_coef": 0.1, "upper_lower_cos": 0.1, "aid_nonpositive": 1.0, "aid_products": 1}, 5
        )


@pytest.mark.parametrize(
    "solver,k,forwards,backwards",
    [
        # forwards (F, G) per upper step: lower step; L_F pass
        # backwards: F by L_F; G by the lower step and by L_F
        ("naive", 1, (2, 2), (1, 2)),
        # unrolled step, L_F, one shared F for ± (G twice), lower step; backwards: F by L_F and by
        # the ± difference, G by the unrolled step, L_F, the two perturbed passes, the lower step
        ("tbgl", 1, (4, 5), (2, 5)),
        # 3 lower steps (last F kept), L_G, L_F; backwards: F by L_F and by ∇ωL_G at the kept F,
        # G by the 3 lower steps, ∇θL_G and L_F
        ("ibgl", 3, (4, 5), (2, 5)),
        # the same passes, and one (double) backward through G per curvature product and for
        # the mixed term (counted below from the products the history records)
        ("aid", 3, (4, 5), (2, 5)),
    ],
)
def test_budget_counts_steps_and_passes(tiny_config, tmp_path, solver, k, forwards, backwards):
    """Budgets in the summary (and so in every trial row): the steps per level and the passes
    the hooks saw while training; evaluation passes are not counted."""
    cfg = tiny_config(solver={"name": solver, "k": k}, train={"warm_steps": 2, "steps": 3})
    trainer = Trainer(cfg)
    trainer.fit(run_dir=tmp_path / "run", until=3)
    resumed = Trainer(cfg)
    resumed.resume(tmp_path / "run" / "checkpoint.pt")
    summary = resumed.fit()
    budget = summary["budget"]
    row = flatten_summary(summary)  # a trial row / summary.parquet
    assert all(row[c] == budget[c.removeprefix("budget_")] for c in BUDGET_COLUMNS)
    steps = 3
    assert budget["warm_steps"] == 2 and budget["upper_steps"] == steps
    assert budget["lower_steps"] == steps * k
    # a warm step: one F pass each way; G twice each way (on the detached x for L_G, and for y
    # in L1(y, rgb))
    assert budget["f_forwards"] == 2 + steps * forwards[0]
    assert budget["g_forwards"] == 2 * 2 + steps * forwards[1]
    assert budget["f_backwards"] == 2 + steps * backwards[0]
    products = sum(
        r.get("aid_products", 0) + 1
        for r in resumed.history
        if r["kind"] == "train" and r["phase"] == "bilevel" and solver == "aid"
    )
    assert budget["g_backwards"] == 2 * 2 + steps * backwards[1] + products
    evals = [r for r in resumed.history if r["kind"] == "eval"]
    assert evals[0]["passes"] == 0 and evals[-1]["passes"] == sum(
        budget[f"{m}_{d}"] for m in "fg" for d in ("forwards", "backwards")
    )
    assert [r["passes"] for r in evals] == sorted(r["passes"] for r in evals)
