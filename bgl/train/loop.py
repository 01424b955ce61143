"""The training loop of the paper's Algorithms 1 and 2.

Phase 1, warm start: ω and θ optimised jointly on the task's warm-start objective.
Phase 2, bilevel: per upper step, k lower steps on θ (L_G, ω frozen), then the solver's
hypergradient for ω (L_F on a validation batch) and one upper optimiser step. TBGL follows
DARTS' order (hypergradient from an unrolled step at the current θ, then the lower step). The
`joint` method is end-to-end learning instead: its bilevel phase continues the warm start's joint
step (one loss, one backward, one step of each optimiser) at the bilevel learning rates.

One `Trainer` per worker: data streams are sharded by rank and every gradient (warm, lower,
hypergradient) goes through the same `reduce`, so N workers follow the 1-worker trajectory of the
concatenated batches.

A frozen generative block (`model.freeze_generator`, F loaded from `model.generator_checkpoint`)
is the paper's transfer setting (Table 3): ω never changes, the warm start trains θ alone and each
bilevel-phase step is one lower step on L_G (no hypergradient, no upper optimiser step).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bgl.config import ModelConfig, RunConfig
from bgl.data.splits import build_splits
from bgl.data.stream import BatchStream, sequential_batches
from bgl.models.generator import build_generator
from bgl.models.weights import warn_random_init
from bgl.results.provenance import git_commit, library_versions
from bgl.solvers import BilevelProblem, Grads, Reduce, get_solver, identity_reduce
from bgl.solvers.problem import grad_disabled, grads, loss_pass, upper_output
from bgl.tasks import build_task
from bgl.train.budget import Budget
from bgl.train.checkpoint import load_checkpoint, save_checkpoint
from bgl.train.device import device_description, peak_memory_bytes, resolve_device
from bgl.train.health import HealthMonitor
from bgl.train.schedule import build_optimizer, phase_learning_rates, set_lr
from bgl.train.unroll import optimizer_unroll


class DivergedError(RuntimeError):
    """A loss or hypergradient became NaN/inf; the message says where."""


class Callbacks:
    """Hooks for progress display and reporting (Ray); every method is optional."""

    def on_step(self, trainer: Trainer, info: dict[str, float]) -> None: ...

    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None: ...


#: prefix of the test split's metrics in evaluations, history and trial rows
TEST_PREFIX = "test_"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Builds task, models, data and optimisers from a RunConfig and runs both phases."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        rank: int = 0,
        world: int = 1,
        reduce: Reduce | None = None,
        device: torch.device | None = None,
        splits: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.rank, self.world = cfg, rank, world
        self.reduce = reduce or identity_reduce
        self.device = device or resolve_device(cfg.train.device)
        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.task = build_task(cfg.task.name, **cfg.task.options)
        upper = self.task.build_upper()  # the control's own F; else the U-Net
        if upper is None:
            upper = build_generator(cfg.model.generator_width, cfg.model.generator_residual)
        self.upper: nn.Module = upper.to(self.device)
        if cfg.model.generator_checkpoint:
            load_generator(self.upper, cfg.model)
        self.frozen = cfg.model.freeze_generator
        if self.frozen:  # no graph through F: its passes cost a forward only
            self.upper.requires_grad_(False)
        self.lower: nn.Module = self.task.build_lower().to(self.device)
        random_init = self.task.random_init_warning()
        if random_init and rank == 0:
            warn_random_init(random_init)
        self.problem = BilevelProblem(
            self.upper,
            self.lower,
            self.task.lower_loss,
            self.task.upper_loss,
            upper_input=self.task.upper_input,
            lower_prediction=self.task.lower_prediction,
            lower_criterion=self.task.lower_criterion,
            joint_loss=self.task.warm_loss,
        )
        self.solver = get_solver(cfg.solver.name)
        self.solver_settings = dataclasses.asdict(cfg.solver)  # fixed for the run
        # Eq. 9's coefficient drives the update of the solvers that read its damping (IBGL)
        self.budget = Budget(self.upper, self.lower)
        self.health = HealthMonitor(uses_coefficient="relative_damping" in self.solver.keys)
        splits = splits if splits is not None else build_splits(cfg.data, self.task.data_options())
        d = cfg.data
        self.train_stream = BatchStream(
            splits["train"], d.batch_size, 2 * cfg.seed, rank=rank, world=world, device=self.device
        )
        self.val_stream = BatchStream(
            splits["val"],
            d.val_batch_size,
            2 * cfg.seed + 1,
            rank=rank,
            world=world,
            device=self.device,
        )
        self.select_set = splits["select"]  # decisions read it; neither level trains on it
        self.test_set = splits["test"]  # scored and reported as test_*, never chooses
        o = cfg.optim
        opt = dict(momentum=o.momentum, weight_decay=o.weight_decay)
        self.upper_opt = build_optimizer(
            o.optimizer, list(self.upper.parameters()), o.upper_lr, **opt
        )
        self.lower_opt = build_optimizer(
            o.optimizer, list(self.lower.parameters()), o.lower_lr, **opt
        )
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.elapsed_s = 0.0  # training wall time, carried across resumes
        self.best: dict[str, Any] = {}

    # -- schedule -------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.cfg.train.warm_steps + self.cfg.train.steps

    @property
    def phase(self) -> str:
        return "warm" if self.step < self.cfg.train.warm_steps else "bilevel"

    def _update_lrs(self) -> tuple[float, float]:
        t = self.cfg.train
        up, lo = phase_learning_rates(self.cfg.optim, self.step, t.warm_steps, t.steps)
        set_lr(self.upper_opt, up)
        set_lr(self.lower_opt, lo)
        return up, lo

    # -- steps ----------------------------------------------------------------------------
    def warm_step(self) -> dict[str, float]:
        self.budget.add("warm_steps")
        loss, _ = self._joint_update("warm-start loss")
        return {"warm_loss": loss}

    def joint_step(self) -> dict[str, float]:
        """The `joint` method's bilevel-phase step: end-to-end learning continues the warm start's
        objective at the bilevel phase's learning rates, one step of each optimiser."""
        self.budget.add("lower_steps")
        self.budget.add("upper_steps")
        loss, h_norm = self._joint_update("joint loss")
        return {"joint_loss": loss, "hypergrad_norm": h_norm}

    def _joint_update(self, what: str) -> tuple[float, float]:
        """One backward of the end-to-end loss for ω (unless frozen) and θ, one optimiser step
        each; (loss, ‖∇ω‖)."""
        batch = next(self.train_stream)
        upper = [] if self.frozen else list(self.upper.parameters())
        params = [*upper, *self.lower.parameters()]
        loss = self.problem.end_to_end_loss(self.upper, self.lower, batch)
        self._check_finite(loss, what)
        gradients = self.reduce(grads(loss, params))
        h_norm = torch.stack([g.norm() for g in gradients[: len(upper)]] or [loss.new_zeros(())])
        _apply(params, gradients)
        if not self.frozen:
            _step(self.upper_opt)
        _step(self.lower_opt)
        return loss.item(), float(h_norm.norm())

    def lower_step(
        self, batch: dict[str, torch.Tensor], *, keep_upper_out: bool = False
    ) -> tuple[float, list[torch.Tensor] | None]:
        """One step of G on L_G; (loss, F's output on the batch with its graph if `keep_upper_out`).

        Without `keep_upper_out`, F's forward builds no graph (ω frozen for the pass). With it, the
        output is handed to IBGL's hypergradient, which needs F(train batch) at this same ω.
        """
        theta = list(self.lower.parameters())
        self.budget.add("lower_steps")
        if keep_upper_out:
            upper_out = upper_output(self.problem, batch)
            out = loss_pass(
                self.problem, self.task.lower_loss, batch, upper_out, upper_out_grad=False
            )
        else:
            upper_out = None
            with grad_disabled(list(self.upper.parameters())):
                out = loss_pass(
                    self.problem,
                    self.task.lower_loss,
                    batch,
                    upper_output(self.problem, batch),
                    upper_out_grad=False,
                )
        self._check_finite(out.loss, "lower loss L_G")
        _apply(theta, self.reduce(out.theta))
        _step(self.lower_opt)
        return out.loss.item(), upper_out

    def upper_step(
        self,
        train_batch: dict,
        val_batch: dict,
        lower_lr: float,
        train_upper_out: list[torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """The solver's hypergradient and one upper optimiser step; its norm and the lower
        level's health (where the solver reports it)."""
        diagnostics: dict[str, float] = {}
        self.budget.add("upper_steps")
        h = self.solver.hypergradient(
            self.problem,
            train_batch,
            val_batch,
            self.solver_settings,
            reduce=self.reduce,
            lower_lr=lower_lr,
            train_upper_out=train_upper_out,
            lower_unroll=(
                optimizer_unroll(self.lower_opt) if "lower_unroll" in self.solver.context else None
            ),
            diagnostics=diagnostics,
        )
        del train_upper_out
        h_norm = torch.stack([g.norm() for g in h]).norm()
        self._check_finite(h_norm, f"{self.solver.name} hypergradient")
        _apply(list(self.upper.parameters()), h)
        del h
        _step(self.upper_opt)
        self.health.observe(diagnostics, self.step)
        return {"hypergrad_norm": h_norm.item(), **diagnostics}

    def bilevel_step(self, lower_lr: float) -> dict[str, float]:
        if self.frozen:  # F fixed: the lower problem alone, one step at a time
            return {"lower_loss": self.lower_step(next(self.train_stream))[0]}
        solver = self.solver
        if solver.joint:
            return self.joint_step()
        if solver.unrolled:  # DARTS' order: hypergradient at the current θ, then the step
            train_batch, val_batch = next(self.train_stream), next(self.val_stream)
            info = self.upper_step(train_batch, val_batch, lower_lr)
            lower, _ = self.lower_step(train_batch)
        else:
            upper_out = None
            steps = self.cfg.solver.k if solver.takes_k else 1
            for i in range(steps):
                train_batch = next(self.train_stream)
                # F's output on the last training batch is reused where the solver takes it
                # (ω is unchanged until the upper step)
                keep = "train_upper_out" in solver.context and i == steps - 1
                lower, upper_out = self.lower_step(train_batch, keep_upper_out=keep)
            info = self.upper_step(train_batch, next(self.val_stream), lower_lr, upper_out)
            del upper_out
        return {"lower_loss": lower, **info}

    def _check_finite(self, value: torch.Tensor, what: str) -> None:
        if not torch.isfinite(value).all():
            raise DivergedError(f"{what} is {value.item()} at step {self.step} ({self.phase})")

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """The task's metrics on the selection split (plain names: what every decision reads)
        and on the test split (`test_<name>`: reported, never compared to choose)."""
        metrics = self._score(self.select_set)
        metrics.update({f"{TEST_PREFIX}{k}": v for k, v in self._score(self.test_set).items()})
        return metrics

    def _score(self, split: Any) -> dict[str, float]:
        batches = sequential_batches(split, self.cfg.data.eval_batch_size, self.device)
        metrics = self.task.evaluate(self.upper, self.lower, batches)
        for key, value in metrics.items():
            if not math.isfinite(value):
                raise DivergedError(f"evaluation metric {key} is {value} at step {self.step}")
        return metrics

    def _record_eval(self, callbacks: Callbacks) -> dict[str, float]:
        metrics = self.evaluate()
        row = {
            "step": self.step,
            "kind": "eval",
            "phase": self.phase,
            "elapsed_s": self.elapsed_s,
            "passes": self.budget.passes,  # F and G passes so far: `compare --per budget`
            **metrics,
        }
        self.history.append(row)
        key, mode = self.task.primary_metric, self.task.mode
        value = metrics[key]
        better = (not self.best) or (
            value > self.best["value"] if mode == "max" else value < self.best["value"]
        )
        if better:
            self.best = {"metric": key, "value": value, "step": self.step, "mode": mode}
        callbacks.on_eval(self, metrics)
        return metrics

    # -- the loop -------------------------------------------------------------------------
    def fit(
        self,
        *,
        run_dir: str | Path | None = None,
        callbacks: Callbacks | None = None,
        until: int | None = None,
    ) -> dict[str, Any]:
        """Train to `total_steps`, or stop early at step `until` (continuing from `self.step`).

        Returns the run summary. With `run_dir`, rank 0 checkpoints there periodically and at the
        end.
        """
        cb = callbacks or Callbacks()
        t = self.cfg.train
        run_dir = Path(run_dir) if run_dir is not None else None
        if self.step == 0 and not self.history:
            self._record_eval(cb)  # the starting point, for curves and the gain
        window: dict[str, list[float]] = {}
        start = time.perf_counter() - self.elapsed_s
        stop = self.total_steps if until is None else min(until, self.total_steps)
        while self.step < stop:
            up_lr, lo_lr = self._update_lrs()
            phase = self.phase  # of the step taken now (a train row describes its steps)
            with self.budget.counting():
                info = self.warm_step() if phase == "warm" else self.bilevel_step(lo_lr)
            self.step += 1
            self.elapsed_s = time.perf_counter() - start
            for key, value in info.items():
                window.setdefault(key, []).append(value)
            cb.on_step(self, {**info, "upper_lr": up_lr, "lower_lr": lo_lr})
            last = self.step == stop
            if self.step % t.log_every == 0 or last:
                row = {
                    "step": self.step,
                    "kind": "train",
                    "phase": phase,
                    "elapsed_s": self.elapsed_s,
                    "upper_lr": up_lr,
                    "lower_lr": lo_lr,
                }
                row.update({k: float(np.mean(v)) for k, v in window.items()})
                self.history.append(row)
                window = {}
            if self.step % t.eval_every == 0 or last:
                self._record_eval(cb)
            if (
                run_dir is not None
                and self.rank == 0
                and (self.step % t.checkpoint_every == 0 or last)
            ):
                path = self.save(run_dir / "checkpoint.pt")
                cb.on_checkpoint(self, path)
        if run_dir is not None and self.rank == 0 and self.total_steps == 0:
            # a zero-step run still leaves its (initial) models, e.g. F's classical start
            cb.on_checkpoint(self, self.save(run_dir / "checkpoint.pt"))
        return self.summary()

    def summary(self, status: str = "completed", error: str | None = None) -> dict[str, Any]:
        final = next((r for r in reversed(self.history) if r["kind"] == "eval"), {})
        metrics = {
            k: v for k, v in final.items() if k not in ("step", "kind", "phase", "elapsed_s")
        }
        metrics.update(
            self.task.end_values(
                self.upper, self.cfg.solver.name, self.solver_settings, self._unrolled_scale()
            )
        )
        return {
            "name": self.cfg.name,
            "status": status,
            "error": error,
            "task": self.cfg.task.name,
            "solver": self.cfg.solver.name,
            "generator": self.generator_mode,
            "generator_checkpoint": self.cfg.model.generator_checkpoint,
            "seed": self.cfg.seed,
            "steps": self.step,
            "final": metrics,
            "best": dict(self.best),
            "health_warning": self.health.warning,
            "coupling": self.coupling_summary(),
            "budget": dict(self.budget.counts),
            "wall_time_s": self.elapsed_s,
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "device": device_description(self.device),
            "workers": self.world,
            "upper_params": sum(p.numel() for p in self.upper.parameters()),
            "lower_params": sum(p.numel() for p in self.lower.parameters()),
            "git_commit": git_commit(),
            "versions": library_versions(),
        }

    def _unrolled_scale(self) -> torch.Tensor | None:
        """TBGL's P at the end of the run: the sensitivity of the lower step it unrolls to the
        lower gradient (a flat vector over θ); None for the other solvers."""
        if self.cfg.solver.name != "tbgl":
            return None
        theta = list(self.lower.parameters())
        if self.solver_settings.get("unroll") == "sgd":
            lr = float(self.lower_opt.param_groups[0]["lr"])
            return torch.full((sum(p.numel() for p in theta),), lr, dtype=torch.float64)
        _, scales = optimizer_unroll(self.lower_opt)([torch.zeros_like(p) for p in theta])
        return torch.cat([s.detach().reshape(-1).cpu() for s in scales])

    def coupling_summary(self) -> dict[str, float | None]:
        """The coupling ratio ‖h − ∇ωL_F‖ / ‖∇ωL_F‖ over the bilevel phase's logged windows
        (each a mean over `train.log_every` upper steps): mean, median and the last window.
        None before any upper step (and for a frozen generator, which takes none)."""
        values = [
            r["coupling_ratio"]
            for r in self.history
            if r["kind"] == "train" and r.get("coupling_ratio") is not None
        ]
        if not values:
            return dict.fromkeys(("ratio_mean", "ratio_median", "ratio_last"))
        return {
            "ratio_mean": float(np.mean(values)),
            "ratio_median": float(np.median(values)),
            "ratio_last": float(values[-1]),
        }

    @property
    def generator_mode(self) -> str:
        """How ω was obtained: `trained` here, `fine-tuned` from a checkpoint, or `frozen`."""
        if self.frozen:
            return "frozen"
        return "fine-tuned" if self.cfg.model.generator_checkpoint else "trained"

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "upper": self.upper.state_dict(),
            "lower": self.lower.state_dict(),
            "upper_opt": self.upper_opt.state_dict(),
            "lower_opt": self.lower_opt.state_dict(),
            "train_stream": self.train_stream.state_dict(),
            "val_stream": self.val_stream.state_dict(),
            "history": self.history,
            "best": self.best,
            "config": self.cfg.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "health": self.health.state_dict(),
            "budget": self.budget.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.upper.load_state_dict(state["upper"])
        self.lower.load_state_dict(state["lower"])
        self.upper_opt.load_state_dict(state["upper_opt"])
        self.lower_opt.load_state_dict(state["lower_opt"])
        self.train_stream.load_state_dict(state["train_stream"])
        self.val_stream.load_state_dict(state["val_stream"])
        self.step, self.elapsed_s = int(state["step"]), float(state["elapsed_s"])
        self.history, self.best = list(state["history"]), dict(state["best"])
        torch.set_rng_state(state["torch_rng"])
        self.health.load_state_dict(state.get("health") or {})
        self.budget.load_state_dict(state.get("budget") or {})

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(self.state_dict(), path)

    def resume(self, path: str | Path) -> None:
        self.load_state_dict(load_checkpoint(path, map_location=self.device))


def load_generator(upper: nn.Module, model: ModelConfig) -> None:
    """Copy F's weights from the training checkpoint `model.generator_checkpoint` (weights_only).

    Errors name the key and the file: a missing file, a file that is not a training checkpoint,
    or one whose generator has another width.
    """
    path = model.generator_checkpoint
    try:
        state = load_checkpoint(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"model.generator_checkpoint: {exc}") from None
    width = (state.get("config") or {}).get("model", {}).get("generator_width")
    if width is not None and width != model.generator_width:
        raise ValueError(
            f"model.generator_width: {model.generator_width}, but {path} holds a generator of "
            f"width {width}"
        )
    upper.load_state_dict(state["upper"])


def _step(optimizer: torch.optim.Optimizer) -> None:
    """Step, then drop the gradients: no ω-sized tensor survives into the next forward pass."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _apply(params: list[nn.Parameter], gradients: Grads) -> None:
    for p, g in zip(params, gradients, strict=True):
        p.grad = g
