"""The training loop: both phases, pass counts per solver, resume, schedules, divergence."""

from __future__ import annotations

import math

import pytest
import torch

from bgl.config import ConfigError
from bgl.train.loop import DivergedError, Trainer
from bgl.train.schedule import cosine_lr


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("solver,k", [("naive", 1), ("tbgl", 1), ("ibgl", 2)])
def test_phases_and_history(tiny_config, solver, k):
    trainer = Trainer(tiny_config(solver={"name": solver, "k": k}))
    summary = trainer.fit()
    assert trainer.step == 7 and summary["status"] == "completed"
    evals = [r for r in trainer.history if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4, 6, 7]
    # a train row carries the phase of the steps it averages: steps 1-3 warm, 4-7 bilevel
    phases = [r["phase"] for r in trainer.history if r["kind"] == "train"]
    assert phases == ["warm"] * 3 + ["bilevel"] * 4
    assert {"psnr", "ssim", "psnr_input"} <= set(summary["final"])
    assert summary["best"]["metric"] == "psnr"
    assert all(math.isfinite(v) for v in summary["final"].values())


@pytest.mark.parametrize(
    "solver,k,lower_calls,upper_calls,generator_forwards",
    [
        ("naive", 1, 1, 1, 2),  # lower step; ∇ω L_F
        # unrolled step, two finite-difference passes (one shared F forward), lower step; one
        # pass for both v and ∇ω L_F
        ("tbgl", 1, 4, 1, 4),
        # k lower steps + one ∇ L_G at the current θ, on F's output kept from the last one
        ("ibgl", 3, 4, 1, 4),
        # the same passes for AID: every curvature product reuses the one L_G graph
        ("aid", 3, 4, 1, 4),
    ],
)
def test_pass_counts_per_upper_step(
    tiny_config, solver, k, lower_calls, upper_calls, generator_forwards
):
    trainer = Trainer(tiny_config(solver={"name": solver, "k": k}, train={"warm_steps": 0}))
    counts = {"lower": 0, "upper": 0, "F": 0}
    trainer.upper.register_forward_hook(lambda *_: counts.__setitem__("F", counts["F"] + 1))
    lower_loss, upper_loss = trainer.task.lower_loss, trainer.task.upper_loss

    def count(name, fn):
        def wrapped(*args):
            counts[name] += 1
            return fn(*args)

        return wrapped

    trainer.problem = type(trainer.problem)(
        trainer.upper,
        trainer.lower,
        count("lower", lower_loss),
        count("upper", upper_loss),
        upper_input=trainer.task.upper_input,
    )
    trainer.task.lower_loss = count("lower", lower_loss)
    before_upper, before_lower = _params(trainer.upper), _params(trainer.lower)
    trainer.bilevel_step(lower_lr=1e-3)
    assert counts == {"lower": lower_calls, "upper": upper_calls, "F": generator_forwards}
    assert all(not torch.equal(a, b) for a, b in zip(before_upper, trainer.upper.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_lower, trainer.lower.parameters()))


def test_lower_step_leaves_upper_untouched(tiny_config):
    trainer = Trainer(tiny_config())
    before = _params(trainer.upper)
    trainer.lower_step(next(trainer.train_stream))
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.upper.parameters()))
    assert all(p.grad is None for p in trainer.upper.parameters())


def test_resume_continues_exactly(tiny_config, tmp_path):
    cfg = tiny_config(solver={"name": "tbgl", "k": 1})
    straight = Trainer(cfg)
    straight.fit()

    first = Trainer(cfg)
    first.fit(run_dir=tmp_path / "run", until=4)
    assert first.step == 4 and (tmp_path / "run" / "checkpoint.pt").exists()
    resumed = Trainer(cfg)
    resumed.resume(tmp_path / "run" / "checkpoint.pt")
    assert resumed.step == 4
    resumed.fit()
    for module in ("upper", "lower"):
        for a, b in zip(
            getattr(straight, module).state_dict().values(),
            getattr(resumed, module).state_dict().values(),
        ):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_learning_rate_schedule(tiny_config):
    assert cosine_lr(0, 11, 3e-3, 5e-6) == pytest.approx(3e-3)
    assert cosine_lr(10, 11, 3e-3, 5e-6) == pytest.approx(5e-6)
    assert cosine_lr(5, 11, 3e-3, 5e-6) == pytest.approx((3e-3 + 5e-6) / 2)
    trainer = Trainer(tiny_config())
    trainer.fit()
    last = [r for r in trainer.history if r["kind"] == "train"][-1]
    assert last["upper_lr"] == pytest.approx(5e-6) and last["lower_lr"] == pytest.approx(3e-5)


def test_nan_loss_raises_diverged_with_the_reason(tiny_config):
    trainer = Trainer(tiny_config(train={"warm_steps": 0}))
    real = trainer.task.lower_loss
    trainer.task.lower_loss = lambda u, lo, b: real(u, lo, b) * float("nan")
    with pytest.raises(DivergedError, match="lower loss L_G is nan at step 0"):
        trainer.fit()


@pytest.mark.slow
def test_short_training_beats_the_amplified_input(tiny_config):
    cfg = tiny_config(
        data={"train_size": 64, "crop": 64, "test_size": 8, "batch_size": 4},
        model={"generator_width": 16},
        train={"warm_steps": 120, "steps": 30, "eval_every": 150, "log_every": 50},
    )
    summary = Trainer(cfg).fit()
    final = summary["final"]  # on the held-out test split, as before the selection split
    assert final["test_psnr"] > final["test_psnr_input"] + 0.5


def _trained_generator(tiny_config, tmp_path):
    """A short source run's checkpoint: the generator a transfer run freezes."""
    source = Trainer(tiny_config(train={"warm_steps": 1, "steps": 1}))
    source.fit()
    return source, source.save(tmp_path / "source" / "checkpoint.pt")


def test_frozen_generator_stays_bit_identical_while_the_task_network_trains(tiny_config, tmp_path):
    source, path = _trained_generator(tiny_config, tmp_path)
    cfg = tiny_config(seed=1, model={"generator_checkpoint": str(path), "freeze_generator": True})
    trainer = Trainer(cfg)
    omega = {k: v.clone() for k, v in trainer.upper.state_dict().items()}
    assert all(torch.equal(omega[k], v) for k, v in source.upper.state_dict().items())
    theta = _params(trainer.lower)
    calls = []
    trainer.upper_step = lambda *a, **k: calls.append(a)  # no hypergradient may be asked for
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["generator"] == "frozen"
    assert summary["generator_checkpoint"] == str(path)
    assert trainer.step == cfg.train.warm_steps + cfg.train.steps and not calls
    assert all(torch.equal(omega[k], v) for k, v in trainer.upper.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in trainer.upper.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(theta, trainer.lower.parameters()))
    assert not trainer.upper_opt.state  # the upper optimiser never stepped
    rows = [r for r in trainer.history if r["kind"] == "train"]
    assert "hypergrad_norm" not in rows[-1] and rows[-1]["phase"] == "bilevel"


def test_generator_checkpoint_without_freezing_fine_tunes(tiny_config, tmp_path):
    _, path = _trained_generator(tiny_config, tmp_path)
    trainer = Trainer(tiny_config(model={"generator_checkpoint": str(path)}))
    before = _params(trainer.upper)
    assert trainer.fit()["generator"] == "fine-tuned"
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.upper.parameters()))


def test_generator_checkpoint_errors_name_the_file(tiny_config, tmp_path):
    missing = tmp_path / "nowhere" / "checkpoint.pt"
    cfg = tiny_config(model={"generator_checkpoint": str(missing), "freeze_generator": True})
    with pytest.raises(FileNotFoundError, match="model.generator_checkpoint: .*nowhere"):
        Trainer(cfg)
    _, path = _trained_generator(tiny_config, tmp_path)
    with pytest.raises(ValueError, match="generator_width: 4, but .* width 8"):
        Trainer(tiny_config(model={"generator_width": 4, "generator_checkpoint": str(path)}))


def test_warm_lr_is_its_own_constant_and_the_schedule_starts_at_the_boundary(tiny_config):
    cfg = tiny_config(
        optim={
            "warm_lr": 1e-4,
            "upper_lr": 3e-3,
            "upper_lr_min": 5e-6,
            "lower_lr": 2e-3,
            "lower_lr_min": 2e-5,
        },
        train={"warm_steps": 3, "steps": 4},
    )
    trainer = Trainer(cfg)
    trainer.fit()
    rows = [r for r in trainer.history if r["kind"] == "train"]
    assert [(r["upper_lr"], r["lower_lr"]) for r in rows[:3]] == [(1e-4, 1e-4)] * 3
    bilevel = rows[3:]
    assert bilevel[0]["upper_lr"] == pytest.approx(3e-3)  # the schedule's first step
    assert bilevel[0]["lower_lr"] == pytest.approx(2e-3)
    assert bilevel[-1]["upper_lr"] == pytest.approx(5e-6)  # ... and its last
    assert bilevel[-1]["lower_lr"] == pytest.approx(2e-5)
    assert bilevel[1]["upper_lr"] == pytest.approx(cosine_lr(1, 4, 3e-3, 5e-6))
    with pytest.raises(ConfigError, match="optim.warm_lr"):
        tiny_config(optim={"warm_lr": 0.0})


def test_the_selection_split_chooses_and_the_test_split_only_reports(tiny_config, monkeypatch):
    """A test split planted to prefer the first evaluation: `best` (what the search objective,
    the scheduler and the best checkpoint read) follows the selection split, which prefers the
    last; the test split's scores are reported beside it as test_* and never choose."""
    import bgl.train.loop as loop

    trainer = Trainer(tiny_config())
    select, test = trainer.select_set, trainer.test_set
    assert select is not test
    scored: list = []
    real_batches, real_evaluate = loop.sequential_batches, trainer.task.evaluate

    def tracking(split, *args, **kwargs):
        scored.append(split)
        return real_batches(split, *args, **kwargs)

    def planted(upper, lower, batches):
        metrics = real_evaluate(upper, lower, batches)
        sign = 1.0 if scored[-1] is select else -1.0
        return {**metrics, "psnr": sign * trainer.step}

    monkeypatch.setattr(loop, "sequential_batches", tracking)
    monkeypatch.setattr(trainer.task, "evaluate", planted)
    summary = trainer.fit()
    evals = [r for r in trainer.history if r["kind"] == "eval"]
    assert [r["psnr"] for r in evals] == [r["step"] for r in evals]
    assert [r["test_psnr"] for r in evals] == [-r["step"] for r in evals]
    assert summary["best"] == {"metric": "psnr", "value": 7.0, "step": 7, "mode": "max"}
    assert summary["final"]["test_psnr"] == -7.0
    assert {id(s) for s in scored} == {id(select), id(test)}
