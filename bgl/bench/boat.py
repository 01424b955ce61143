"""`bgl bench boat`: bgl against BOAT (PyPI `boat-torch`), the authors' group's bilevel toolbox.

The same generative block F, task network G, batches and lower step run through BOAT's documented
entry point (`boat_torch.Problem(config, loss_config)`, `build_ll_solver`, `build_ul_solver`,
`run_iter`) with `gm_op=["NGD"]` (k plain lower gradient steps through `higher`) and
`na_op=["FD"]` (TBGL, Eq. 5) or `na_op=["IGA"]` (IBGL, Eq. 9), and through bgl's training loop
(`Trainer.bilevel_step`). Both use SGD without momentum at constant learning rates for both levels,
so BOAT's FD reads the same η from `lower_level_opt.defaults["lr"]` that bgl's TBGL unrolls with,
and FD's `r` is bgl's δ (ε = r / ‖v‖ in both).

Where the formulas agree, and where the code does not:
- FD (TBGL): both take v = ∇_θ' L_F at the unrolled θ' and perturb θ (not θ'), so the
  hypergradients agree to rounding. BOAT perturbs θ in place (θ + εv, − 2εv, + εv) and never
  restores it exactly: in float32 θ drifts by rounding on every step; bgl recomputes θ ± εv from a
  saved copy and restores θ bit for bit. BOAT's extra passes also update BatchNorm running
  statistics; bgl's do not. Neither changes the hypergradient in train mode.
- IGA (IBGL): both evaluate Eq. 9 at θ_k after k lower steps with a detached coefficient; BOAT
  has no epsilon in the denominator (bgl's default 1e-12 is negligible unless ∇_θ L_G ≈ 0; the
  comparison passes eps = 0).
- Cost, not formula: BOAT's lower steps run with ω trainable, so each builds a graph through F
  that bgl's lower step (ω frozen) does not; `run_iter` also re-evaluates both losses with grad
  after every step to log them (and rewrites a JSON log file). bgl's TBGL step takes one more
  ω-frozen lower pass than BOAT because the loop applies its lower step separately from the
  hypergradient. `time_s` is what a user of each library pays per upper step; `boat_core_s` is
  BOAT's own reported `run_time` (lower steps + hypergradient, no logging, no optimizer step).

Measurement: each (solver, library) pair runs in a fresh child process with the machinery of
`bgl bench solvers` (same peak-memory method); pairs are interleaved over `rounds` and medians
reported; the machine's load average is recorded with every row. On a GPU (`--device cuda`) peak
memory is `max_memory_allocated` and rows carry the GPU's name.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from bgl.bench.solvers import SolverBenchConfig
from bgl.solvers import BilevelProblem, Grads, get_solver
from bgl.solvers.problem import preserved_state

BOAT_INSTALL = (
    "pip install -c constraints.txt --no-deps boat-torch==1.1.1 && "
    "pip install -c constraints.txt higher==0.2.1"
)
BOAT_OPS = {"tbgl": "FD", "ibgl": "IGA"}  # bgl solver -> BOAT's `na_op` with the same formula
SPEED_TARGET = 1.5  # bgl at least 1.5x BOAT's speed
MEMORY_TARGET = 0.6  # bgl at most 0.6x BOAT's peak memory
LIBRARIES = ("bgl", "boat")


class BoatMissingError(RuntimeError):
    """boat-torch (or higher) is not installed."""


def require_boat() -> Any:
    """Import boat_torch, or fail with the install command (its numpy cap must not apply)."""
    try:
        import boat_torch
        import higher  # noqa: F401
    except ImportError as exc:
        raise BoatMissingError(
            f"the BOAT comparison needs boat-torch and higher ({exc}); install them with "
            f"`{BOAT_INSTALL}` (boat-torch caps numpy at 1.26.4, which pyarrow 26 cannot import "
            f"beside; its other dependencies come with bgl), or `./install.sh test`"
        ) from exc
    return boat_torch


@dataclass
class BoatBenchConfig(SolverBenchConfig):
    repeats: int = 3  # timed steps per child process
    rounds: int = 3  # interleaved bgl/BOAT child pairs per solver
    solvers: tuple[str, ...] = tuple(BOAT_OPS)
    lower_lr: float = 3e-3
    upper_lr: float = 3e-3
    compare: bool = True  # also compare the hypergradients at this size (in the parent)


# -- driving BOAT as its users do -------------------------------------------------------------


def boat_loss(
    data: Any, ul_model: torch.nn.Module, ll_model: Any, params: Any = None, *, loss: Callable
) -> torch.Tensor:
    """BOAT's loss signature `(feed_dict, ul_model, ll_model, params=...)` over a bgl LossFn.

    BOAT loads this by dotted path from `loss_config` and passes `loss` from its "params"; with
    `params` given, `ll_model` is a `higher` patched module that takes them as a keyword.
    """
    lower = ll_model if params is None else _Bound(ll_model, params)
    return loss(ul_model, lower, data)


class _Bound:
    """A patched `higher` module with its fast weights bound, callable like the plain module."""

    def __init__(self, model: Any, params: Any) -> None:
        self.model, self.params = model, params

    def __call__(self, *args: Any) -> Any:
        return self.model(*args, params=self.params)


def build_boat(
    problem: BilevelProblem,
    op: str,
    *,
    lower_opt: torch.optim.Optimizer,
    upper_opt: torch.optim.Optimizer,
    k: int,
    r: float,
    log_path: str | Path,
    return_grad: bool = False,
) -> Any:
    """A `boat_torch.Problem` for `na_op=[op]` (FD or IGA) after k NGD lower steps."""
    boat = require_boat()
    device = next(problem.upper.parameters()).device
    config = {
        "fo_op": None,
        "gm_op": ["NGD"],
        "na_op": [op],
        "lower_level_model": problem.lower,
        "upper_level_model": problem.upper,
        "lower_level_var": list(problem.lower.parameters()),
        "upper_level_var": list(problem.upper.parameters()),
        "lower_level_opt": lower_opt,
        "upper_level_opt": upper_opt,
        "lower_iters": k,
        "device": str(device),
        "GDA": {"alpha_init": 0.0, "alpha_decay": 1.0},
        "RGT": {"truncate_iter": 0},
        "FD": {"r": r},
        "accumulate_grad": False,
        "copy_last_param": True,  # θ ← θ_k afterwards: the lower step is applied, as in bgl
        "return_grad": return_grad,
        "loss_log_path": str(log_path),
    }
    losses = {
        "lower_level_loss": {
            "function": "bgl.bench.boat.boat_loss",
            "params": {"loss": problem.lower_loss},
        },
        "upper_level_loss": {
            "function": "bgl.bench.boat.boat_loss",
            "params": {"loss": problem.upper_loss},
        },
    }
    solver = boat.Problem(config, losses)
    solver.build_ll_solver()
    solver.build_ul_solver()
    return solver


def boat_hypergradient(
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    solver: str,
    *,
    lower_lr: float,
    delta: float,
    k: int,
) -> Grads:
    """BOAT's FD/IGA hypergradient from the problem's current state (left untouched: BOAT runs on
    deep copies, since it writes θ_k back and perturbs θ in place)."""
    upper, lower = copy.deepcopy(problem.upper), copy.deepcopy(problem.lower)
    twin = BilevelProblem(upper, lower, problem.lower_loss, problem.upper_loss)
    with tempfile.TemporaryDirectory(prefix="bgl-boat-") as tmp:
        boat = build_boat(
            twin,
            BOAT_OPS[solver],
            lower_opt=torch.optim.SGD(lower.parameters(), lr=lower_lr),
            upper_opt=torch.optim.SGD(upper.parameters(), lr=0.0),
            k=k if get_solver(solver).takes_k else 1,
            r=delta,
            log_path=Path(tmp) / "losses.json",
            return_grad=True,
        )
        hyper, _ = boat.run_iter(train_batch, val_batch, 0)
    return [h.detach().clone() for h in hyper]


def bgl_hypergradient(
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    solver: str,
    *,
    lower_lr: float,
    delta: float,
    k: int,
) -> Grads:
    """bgl's hypergradient from the state BOAT starts from: an unrolled solver (TBGL) at θ (it
    unrolls its own step); otherwise at θ_k after k SGD lower steps (1 for a solver that does not
    take k), θ restored afterwards. IBGL without a denominator guard (eps = 0), as BOAT's IGA."""
    from bgl.bench.fidelity import gradient_steps

    spec = get_solver(solver)
    settings = {"delta": delta, "eps": 0.0}
    if spec.unrolled:
        return spec.hypergradient(problem, train_batch, val_batch, settings, lower_lr=lower_lr)
    with preserved_state(problem.lower):
        gradient_steps(problem, train_batch, lower_lr, k if spec.takes_k else 1)
        return spec.hypergradient(problem, train_batch, val_batch, settings, lower_lr=lower_lr)


def agreement(
    problem: BilevelProblem,
    train_batch: Any,
    val_batch: Any,
    solver: str,
    *,
    lower_lr: float,
    delta: float,
    k: int,
) -> dict[str, float]:
    """Cosine and relative error of bgl's hypergradient against BOAT's from the same state."""
    from bgl.bench.fidelity import compare

    kw = dict(lower_lr=lower_lr, delta=delta, k=k)
    ours = bgl_hypergradient(problem, train_batch, val_batch, solver, **kw)
    theirs = boat_hypergradient(problem, train_batch, val_batch, solver, **kw)
    return compare(ours, theirs)


# -- the benchmark ----------------------------------------------------------------------------


def _run_dict(cfg: BoatBenchConfig, solver: str) -> dict[str, Any]:
    from bgl.bench.solvers import bench_run_config

    optim = {
        "optimizer": "sgd",
        "momentum": 0.0,
        "schedule": "constant",
        "lower_lr": cfg.lower_lr,
        "upper_lr": cfg.upper_lr,
    }
    return bench_run_config(cfg, solver, optim=optim)


def _child(cfg: BoatBenchConfig, solver: str, library: str) -> dict[str, Any]:
    """One (solver, library) measurement; runs in its own process (see `run_child`)."""
    from bgl.bench.solvers import fixed_batch_trainer, held_tensor_bytes, measure_steps
    from bgl.train.device import device_description

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    trainer, train, val = fixed_batch_trainer(_run_dict(cfg, solver))
    lr = trainer.cfg.optim.lower_lr
    core: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bgl-boat-") as tmp:
        if library == "bgl":

            def step() -> None:
                trainer.bilevel_step(lr)

        else:
            boat = build_boat(
                trainer.problem,
                BOAT_OPS[solver],
                lower_opt=trainer.lower_opt,
                upper_opt=trainer.upper_opt,
                k=trainer.cfg.solver.k,
                r=trainer.cfg.solver.delta,
                log_path=Path(tmp) / "losses.json",
            )
            counter = itertools.count()

            def step() -> None:
                _, run_time = boat.run_iter(train, val, next(counter))
                core.append(run_time)

        m = measure_steps(step, trainer.device, repeats=cfg.repeats, warmup=cfg.warmup)
    held = held_tensor_bytes(
        [trainer.upper, trainer.lower], [trainer.upper_opt, trainer.lower_opt], [train, val]
    )
    return {
        "solver": solver,
        "library": library,
        "k": trainer.cfg.solver.k,
        **m.row(held),
        "boat_core_s": statistics.median(core[cfg.warmup :]) if core else None,
        "device": device_description(trainer.device),
        "threads": torch.get_num_threads(),
        "load_avg": os.getloadavg()[0],
    }


def run_boat_bench(
    cfg: BoatBenchConfig,
    *,
    out_dir: str | Path | None = "results/bench",
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Interleaved bgl/BOAT children per solver; per-round rows plus one summary row per solver."""
    from bgl.bench.solvers import run_child
    from bgl.results.parquet import write_rows
    from bgl.results.provenance import git_commit, library_versions

    require_boat()
    say = console.log if console else (lambda *a, **k: None)
    load_before = os.getloadavg()[0]
    agree: dict[str, dict[str, float]] = {}
    if cfg.compare:  # first: cheap next to the rounds, and a failure here loses no timings
        for solver in cfg.solvers:
            say(f"comparing {solver} hypergradients at the benchmark size ...")
            agree[solver] = _agreement_at_size(cfg, solver)
    rows: list[dict[str, Any]] = []
    for rnd in range(cfg.rounds):
        for solver in cfg.solvers:
            order = LIBRARIES if rnd % 2 == 0 else LIBRARIES[::-1]  # alternate who goes first
            for library in order:
                say(f"round {rnd + 1}/{cfg.rounds}: {solver} through {library} ...")
                if cfg.isolate:
                    payload = {"config": dataclasses.asdict(cfg), "solver": solver}
                    payload["library"] = library
                    row = run_child("bgl.bench.boat", payload, what=f"{library} {solver} bench")
                else:  # peaks mix across measurements: only for checking the rows' form
                    threads = torch.get_num_threads()
                    try:
                        row = _child(cfg, solver, library)
                    finally:
                        torch.set_num_threads(threads)
                rows.append({"kind": "round", "round": rnd, **row})
    summaries = [_summary(cfg, solver, rows) for solver in cfg.solvers]
    for s in summaries:
        s.update({f"agree_{k}": v for k, v in agree.get(s["solver"], {}).items()})
    rows += summaries
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    versions = library_versions()
    for row in rows:
        row.update({f"config_{k}": v for k, v in dataclasses.asdict(cfg).items()})
        row.update(
            benchmark="boat",
            timestamp=stamp,
            git_commit=git_commit(),
            torch=versions.get("torch"),
            boat_torch=_version("boat-torch"),
            cpu_count=os.cpu_count(),
            load_avg_before=load_before,
            load_avg_after=os.getloadavg()[0],
        )
    if out_dir is not None:
        write_rows(rows, Path(out_dir) / f"boat-{stamp.replace(':', '')}.parquet")
    return rows


def _summary(cfg: BoatBenchConfig, solver: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(library: str, key: str) -> float:
        values = [r[key] for r in rows if r["solver"] == solver and r["library"] == library]
        return statistics.median(v for v in values if v is not None)

    ours, theirs = med("bgl", "time_s"), med("boat", "time_s")
    peak_ours, peak_theirs = med("bgl", "tensor_peak_bytes"), med("boat", "tensor_peak_bytes")
    first = next(r for r in rows if r["solver"] == solver)
    return {
        "kind": "summary",
        "solver": solver,
        "boat_op": BOAT_OPS[solver],
        "k": first["k"],
        "device": first["device"],
        "threads": first["threads"],
        "bgl_time_s": ours,
        "boat_time_s": theirs,
        "boat_core_s": med("boat", "boat_core_s"),
        "speedup": theirs / ours,
        "speedup_vs_boat_core": med("boat", "boat_core_s") / ours,
        "bgl_tensor_peak_bytes": peak_ours,
        "boat_tensor_peak_bytes": peak_theirs,
        "memory_ratio": peak_ours / peak_theirs,
        "bgl_step_peak_bytes": med("bgl", "step_peak_bytes"),
        "boat_step_peak_bytes": med("boat", "step_peak_bytes"),
        "bgl_process_peak_bytes": med("bgl", "peak_bytes"),
        "boat_process_peak_bytes": med("boat", "peak_bytes"),
        "load_avg_median": statistics.median(r["load_avg"] for r in rows),
        "meets_speed_target": theirs / ours >= SPEED_TARGET,
        "meets_memory_target": peak_ours / peak_theirs <= MEMORY_TARGET,
        "speed_target": SPEED_TARGET,
        "memory_target": MEMORY_TARGET,
    }


def _agreement_at_size(cfg: BoatBenchConfig, solver: str) -> dict[str, float]:
    """Both hypergradients from one state at the benchmark's size and dtype (float32)."""
    from bgl.bench.solvers import fixed_batch_trainer

    trainer, train, val = fixed_batch_trainer(_run_dict(cfg, solver))
    s = trainer.cfg.solver
    return agreement(
        trainer.problem,
        train,
        val,
        solver,
        lower_lr=trainer.cfg.optim.lower_lr,
        delta=s.delta,
        k=s.k,
    )


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def print_table(rows: list[dict[str, Any]], console: Console) -> None:
    summaries = [r for r in rows if r["kind"] == "summary"]
    first = summaries[0]
    table = Table(
        title=f"bgl vs BOAT {first['boat_torch']} per upper step on {first['device']} (crop "
        f"{first['config_crop']}, batch {first['config_batch_size']}, width "
        f"{first['config_width']}; median of {first['config_rounds']} interleaved rounds; "
        f"load {first['load_avg_median']:.1f} on {first['cpu_count']} CPUs)"
    )
    for col in (
        "solver (BOAT op)",
        "bgl ms",
        "BOAT ms",
        "BOAT core ms",
        "speed-up",
        "bgl MiB",
        "BOAT MiB",
        "memory ratio",
        "cos",
        "rel. err",
    ):
        table.add_column(col, justify="right")
    for r in summaries:
        table.add_row(
            f"{r['solver']} ({r['boat_op']}, k {r['k']})",
            f"{1e3 * r['bgl_time_s']:.0f}",
            f"{1e3 * r['boat_time_s']:.0f}",
            f"{1e3 * r['boat_core_s']:.0f}",
            f"{r['speedup']:.2f}x",
            f"{r['bgl_tensor_peak_bytes'] / 2**20:.0f}",
            f"{r['boat_tensor_peak_bytes'] / 2**20:.0f}",
            f"{r['memory_ratio']:.2f}",
            f"{r['agree_cosine']:.6f}" if r.get("agree_cosine") is not None else "",
            f"{r['agree_rel_error']:.1e}" if r.get("agree_rel_error") is not None else "",
        )
    console.print(table)


if __name__ == "__main__":
    import json
    import sys

    args = json.loads(sys.argv[1])
    config = args["config"]
    config["solvers"] = tuple(config["solvers"])
    result = _child(BoatBenchConfig(**config), args["solver"], args["library"])
    print(json.dumps(result))
